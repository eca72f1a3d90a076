"""Model registry: one literal table from name to class, and the helpers around it."""
from __future__ import annotations

import inspect

from torch import nn

from .cnn import CNN1d, CNN2d
from .crnn import CRNN
from .resnet import ShortChunkResNet
from .samplecnn import SampleCNN

MODELS = {
    "cnn1d": CNN1d,
    "cnn2d": CNN2d,
    "resnet": ShortChunkResNet,
    "crnn": CRNN,
    "samplecnn": SampleCNN,
}


def _model_class(name: str) -> type[nn.Module]:
    """Registered class for ``name``; ValueError listing the choices otherwise."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def accepted_kwargs(name: str) -> list[str]:
    """Keyword arguments the constructor of model ``name`` accepts, in signature order."""
    params = inspect.signature(_model_class(name).__init__).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def build_model(name: str, *, n_bins: int, n_classes: int, **kwargs) -> nn.Module:
    """Build registered model ``name``.

    Parameters
    ----------
    name : str
        One of `list_models()`.
    n_bins : int
        Mel bins of the input ``(batch, n_bins, frames)``; accepted and ignored by
        waveform models.
    n_classes : int
        Number of output logits.
    **kwargs
        Model-specific settings (``dropout``, widths, depths ...). A model's
        ``config`` holds all of them, so ``build_model(name, **model.config)``
        rebuilds it.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the choices) or a bad setting value.
    TypeError
        A keyword the model does not take (the message lists the accepted ones).

    Examples
    --------
    >>> model = build_model("cnn2d", n_bins=128, n_classes=10, dropout=0.3)
    >>> model.config["dropout"]
    0.3
    """
    cls = _model_class(name)
    accepted = accepted_kwargs(name)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}")
    return cls(n_bins=n_bins, n_classes=n_classes, **kwargs)


def list_models() -> list[str]:
    """Registered model names, in registry order.

    Examples
    --------
    >>> list_models()
    ['cnn1d', 'cnn2d', 'resnet', 'crnn', 'samplecnn']
    """
    return list(MODELS)


def model_input_kind(name: str) -> str:
    """``common.kinds.SPECTROGRAM`` or ``WAVEFORM``: what model ``name`` expects as input.

    Examples
    --------
    >>> model_input_kind("samplecnn")
    'waveform'
    """
    return _model_class(name).INPUT_KIND


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``.

    Examples
    --------
    >>> from torch import nn
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
