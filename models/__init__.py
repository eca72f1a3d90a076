"""Genre classification networks and their registry.

>>> from models import build_model, list_models
>>> model = build_model("resnet", n_bins=128, n_classes=10)
"""
from .cnn import CNN1d, CNN2d
from .crnn import CRNN
from .registry import (MODELS, accepted_kwargs, build_model, count_parameters, list_models,
                       model_input_kind, parse_model_settings)
from .resnet import ShortChunkResNet
from .samplecnn import SampleCNN

__all__ = [
    "MODELS", "build_model", "list_models", "model_input_kind", "count_parameters",
    "accepted_kwargs", "parse_model_settings", "CNN1d", "CNN2d", "ShortChunkResNet", "CRNN", "SampleCNN",
]
