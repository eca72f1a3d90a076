"""Online augmentation of training batches: SpecAugment masks and mixup.

Both draw from torch's global generator, which checkpoints save, so a resumed run
augments as an uninterrupted one would.
"""
from __future__ import annotations

import torch

from common.kinds import SPECTROGRAM
from training.config import DEFAULT_MASK
from training.errors import TrainError


def resolve_masks(kind: str, *, feature: str, mask_bins: int | None,
                  mask_frames: int | None) -> tuple[int, int]:
    """``(mask_bins, mask_frames)`` for a feature of ``kind``: unset ones become the default
    masks for spectrograms and none for waveforms; masks asked for a waveform are refused.

    >>> resolve_masks("spectrogram", feature="mel", mask_bins=None, mask_frames=0)
    (12, 0)
    """
    spectrogram = kind == SPECTROGRAM
    if not spectrogram and (mask_bins or mask_frames):
        raise TrainError(f"--mask-bins/--mask-frames mask spectrograms, but feature {feature!r} is a "
                         f"{kind}; leave them unset or 0 for it")
    default = DEFAULT_MASK if spectrogram else (0, 0)
    return (default[0] if mask_bins is None else mask_bins,
            default[1] if mask_frames is None else mask_frames)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """Mixup (Zhang et al. 2018): each segment blended with another of the batch.

    Returns ``(mixed_x, y, y_partner, lam)``: the loss is ``lam * CE(y) + (1 - lam) *
    CE(y_partner)``.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(y)).to(y.device)
    return lam * x + (1 - lam) * x[partner], y, y[partner], lam


def mask_batch(x: torch.Tensor, *, max_bins: int, max_frames: int) -> torch.Tensor:
    """SpecAugment-style masking (Park et al. 2019), in place: each segment of
    ``(batch, n_bins, frames)`` gets one band of up to ``max_bins`` bins and one span of
    up to ``max_frames`` frames set to 0, the train mean after normalisation.
    """
    batch, n_bins, frames = x.shape
    for size, limit, axis in ((n_bins, max_bins, 1), (frames, max_frames, 2)):
        if limit <= 0:
            continue
        width = torch.randint(0, min(limit, size) + 1, (batch, 1))
        start = (torch.rand(batch, 1) * (size - width + 1)).long()
        position = torch.arange(size)[None, :]
        masked = ((position >= start) & (position < start + width)).to(x.device)
        x.masked_fill_(masked[:, :, None] if axis == 1 else masked[:, None, :], 0.0)
    return x
