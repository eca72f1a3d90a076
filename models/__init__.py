"""Genre classification networks and their registry: tensors in, logits out.

What a model is trained on (features, segments) and how it is stored (checkpoints)
is :mod:`training`'s; models import nothing of the project but :mod:`common`.

>>> from models import build_model, list_models
>>> model = build_model("resnet", n_bins=128, n_classes=10)
"""
from .cnn import CNN1d, CNN2d
from .crnn import CRNN
from .registry import MODELS, accepted_kwargs, build_model, count_parameters, list_models, model_input_kind
from .resnet import ShortChunkResNet
from .samplecnn import SampleCNN

__all__ = [
    "MODELS", "build_model", "list_models", "model_input_kind", "count_parameters",
    "accepted_kwargs", "CNN1d", "CNN2d", "ShortChunkResNet", "CRNN", "SampleCNN",
]
