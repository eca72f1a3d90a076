"""Shared pieces of every genre model: argument checks, input checks, weight init.

Each model subclasses `GenreModel`, which gives it

- ``INPUT_KIND``: ``"spectrogram"`` (input ``(batch, n_bins, frames)``) or
  ``"waveform"`` (input ``(batch, samples)`` or ``(batch, 1, samples)``);
- ``min_frames``: the shortest time axis (frames, or samples for waveform models)
  the network accepts; `prepare_input` raises ValueError for anything shorter;
- ``config``: the constructor arguments as a JSON-serialisable dict, so
  ``build_model(name, **model.config)`` rebuilds the same architecture.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from common.kinds import SPECTROGRAM, WAVEFORM  # noqa: F401  (re-exported for the models)


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as a Python int if it is an integer >= 1, else raise ValueError."""
    # bool is an int subclass; True as a channel count is always a mistake.
    # numbers.Integral also admits numpy ints (e.g. n_bins read from HDF5 attributes);
    # int() makes them JSON-serialisable for the config.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_int_list(name: str, values: object) -> list[int]:
    """Return ``values`` as a non-empty list of ints >= 1 (a JSON-friendly copy)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of integers >= 1, got {values!r}")
    out = list(values)
    if not out:
        raise ValueError(f"{name} must not be empty, got {values!r}")
    return [check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(out)]


def check_dropout(value: object) -> float:
    """Return ``value`` as a float in [0, 1), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value  # type: ignore[return-value]


def check_same_length(names: Sequence[str], lists: Sequence[list]) -> None:
    """Raise ValueError unless every list in ``lists`` has the same length."""
    lengths = {len(v) for v in lists}
    if len(lengths) > 1:
        shown = ", ".join(f"{n} has {len(v)}" for n, v in zip(names, lists))
        raise ValueError(f"{', '.join(names)} need one entry per block; {shown}")


class GenreModel(nn.Module):
    """Base class: validated common arguments, input checks and weight init.

    Subclasses set ``INPUT_KIND``, ``self.min_frames`` and ``self.config`` in their
    constructor, call `init_weights` at its end, and start ``forward`` with
    ``x = self.prepare_input(x)``.
    """

    INPUT_KIND: str = SPECTROGRAM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.n_bins = check_positive_int("n_bins", n_bins)
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.dropout_p = check_dropout(dropout)
        self.min_frames: int = 1
        self.config: dict = {}

    def _unit(self) -> str:
        return "samples" if self.INPUT_KIND == WAVEFORM else "frames"

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x`` and return it as ``(batch, n_bins, frames)`` or ``(batch, samples)``.

        Raises
        ------
        ValueError
            Wrong number of axes, wrong number of bins, or a time axis shorter
            than ``min_frames``.
        """
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if self.INPUT_KIND == WAVEFORM:
            if x.dim() == 3 and x.shape[1] == 1:
                x = x.squeeze(1)
            if x.dim() != 2:
                raise ValueError(
                    f"{name} expects waveforms shaped (batch, samples) or (batch, 1, samples); "
                    f"got shape {tuple(x.shape)}. For one clip use x.unsqueeze(0).")
        else:
            if x.dim() != 3:
                raise ValueError(
                    f"{name} expects spectrograms shaped (batch, n_bins={self.n_bins}, frames); "
                    f"got shape {tuple(x.shape)}. For one clip use x.unsqueeze(0).")
            if x.shape[1] != self.n_bins:
                raise ValueError(
                    f"{name} was built for n_bins={self.n_bins} but the input has "
                    f"{x.shape[1]} bins (shape {tuple(x.shape)}); rebuild the model with "
                    f"n_bins={x.shape[1]} or fix the feature settings.")
        length = x.shape[-1]
        if length < self.min_frames:
            raise ValueError(
                f"{name} needs at least min_frames={self.min_frames} {self._unit()} on the "
                f"time axis but got {length} (input shape {tuple(x.shape)}); use longer "
                f"segments or a shallower / less pooled configuration.")
        return x

    def init_weights(self) -> None:
        """Kaiming-normal convs (ReLU nets), unit/zero BatchNorm, Xavier linears."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

