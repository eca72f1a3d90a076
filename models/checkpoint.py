"""Checkpoints that describe themselves: weights plus everything needed to use them.

A checkpoint records the model name and constructor arguments, the feature and its
settings, the labels, the normalisation and the training arguments, so evaluation and
prediction need no flags repeated::

    ckpt = load_checkpoint("runs/x/best.pt")
    model = model_from_checkpoint(ckpt)      # weights loaded, eval mode
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "model_config", "feature", "feature_settings", "labels",
                 "normalization", "segment_frames", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not one of ours."""


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically: a kill never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that it is complete."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with train.py "
                              f"(it writes best.pt and last.pt in --out-dir)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = [key for key in REQUIRED_KEYS if key not in ckpt] if isinstance(ckpt, dict) else REQUIRED_KEYS
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, this code reads "
                              f"{CHECKPOINT_FORMAT}; retrain or use a matching version")
    return ckpt


def model_from_checkpoint(ckpt: dict, *, device="cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, and set eval mode."""
    from models import build_model

    model = build_model(ckpt["model"], **ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()
