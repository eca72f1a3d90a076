"""Plain convolutional baselines on mel spectrograms: `CNN1d` and `CNN2d`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import (SPECTROGRAM, GenreModel, check_choice, check_int_list,
                   check_positive_int, check_same_length)

CNN1D_PADDINGS = ("same", "valid")
GLOBAL_POOLINGS = ("max", "mean")


def _cnn1d_min_frames(kernel_sizes: list[int], pool_sizes: list[int], padding: str) -> int:
    """Shortest input for which every block still outputs >= 1 step."""
    if padding == "same":
        # 'same' convs keep the length and ceil-mode pools never reach 0 from >= 1.
        return 1
    need = 1
    for k, p in zip(reversed(kernel_sizes), reversed(pool_sizes)):
        need = need * p + k - 1
    return need


class CNN1d(GenreModel):
    """Course baseline: 1D convolutions over time with mel bins as channels.

    Each block is Conv1d + BatchNorm + ReLU + MaxPool1d; then global average
    pooling over time, dropout and a linear layer.

    Parameters
    ----------
    n_bins : int
        Mel bins of the input = input channels of the first conv.
    n_classes : int
        Number of genres (output logits).
    dropout : float
        Dropout before the classifier, in [0, 1).
    channels : int
        Output channels of every conv block.
    kernel_sizes, pool_sizes : list of int
        One entry per block (default ``[8, 8, 4]`` for both).
    padding : {"same", "valid"}
        ``"valid"`` is the original baseline (unpadded convs, floor pooling): it
        needs ``min_frames`` = 511 frames with the defaults, i.e. ~12 s at hop 512,
        so it only suits long clips. ``"same"`` pads the convs and pools with
        ceil mode, so any length >= 1 frame works (e.g. 3 s = 130 frames).

    Input ``(batch, n_bins, frames)``, output logits ``(batch, n_classes)``.

    Examples
    --------
    >>> import torch
    >>> model = CNN1d(n_bins=128, n_classes=10)
    >>> model(torch.randn(4, 128, 130)).shape
    torch.Size([4, 10])
    """

    INPUT_KIND = SPECTROGRAM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float = 0.5,
                 channels: int = 32, kernel_sizes: Sequence[int] = (8, 8, 4),
                 pool_sizes: Sequence[int] = (8, 8, 4), padding: str = "same") -> None:
        super().__init__(n_bins=n_bins, n_classes=n_classes, dropout=dropout)
        channels = check_positive_int("channels", channels)
        kernel_sizes = check_int_list("kernel_sizes", kernel_sizes)
        pool_sizes = check_int_list("pool_sizes", pool_sizes)
        check_same_length(("kernel_sizes", "pool_sizes"), (kernel_sizes, pool_sizes))
        padding = check_choice("padding", padding, CNN1D_PADDINGS)

        blocks = []
        in_ch = self.n_bins
        for k, p in zip(kernel_sizes, pool_sizes):
            if padding == "same":
                # Explicit (left, right) zero pad: torch's padding="same" warns and
                # copies the input for even kernels anyway.
                blocks.append(nn.ZeroPad1d(((k - 1) // 2, k // 2)))
            blocks += [
                nn.Conv1d(in_ch, channels, k, bias=False),
                nn.BatchNorm1d(channels),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(p, ceil_mode=padding == "same"),
            ]
            in_ch = channels
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Linear(channels, self.n_classes)

        self.min_frames = _cnn1d_min_frames(kernel_sizes, pool_sizes, padding)
        self.config = dict(n_bins=self.n_bins, n_classes=self.n_classes, dropout=self.dropout_p,
                           channels=channels, kernel_sizes=kernel_sizes,
                           pool_sizes=pool_sizes, padding=padding)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_bins, frames)`` -> logits ``(batch, n_classes)``."""
        x = self.prepare_input(x)
        x = self.features(x).mean(dim=-1)
        return self.classifier(self.dropout(x))


class CNN2d(GenreModel):
    """VGG-style 2D CNN on the spectrogram as a one-channel image.

    Blocks of Conv2d 3x3 + BatchNorm + ReLU + MaxPool 2x2 with channels doubling
    (``channels, 2*channels, ...``), then global max or mean pooling over
    frequency and time, dropout and a linear layer.

    Parameters
    ----------
    n_bins : int
        Mel bins; must be >= ``2 ** n_blocks`` so every pool has input.
    n_classes : int
        Number of genres.
    dropout : float
        Dropout before the classifier, in [0, 1).
    channels : int
        Width of the first block; block ``i`` has ``channels * 2**i``.
    n_blocks : int
        Number of conv blocks; ``min_frames == 2 ** n_blocks``.
    pooling : {"max", "mean"}
        Global pooling over frequency and time.

    Input ``(batch, n_bins, frames)``, output logits ``(batch, n_classes)``.

    Examples
    --------
    >>> import torch
    >>> model = CNN2d(n_bins=128, n_classes=10)
    >>> model(torch.randn(4, 128, 130)).shape
    torch.Size([4, 10])
    """

    INPUT_KIND = SPECTROGRAM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float = 0.5,
                 channels: int = 32, n_blocks: int = 4, pooling: str = "max") -> None:
        super().__init__(n_bins=n_bins, n_classes=n_classes, dropout=dropout)
        channels = check_positive_int("channels", channels)
        n_blocks = check_positive_int("n_blocks", n_blocks)
        pooling = check_choice("pooling", pooling, GLOBAL_POOLINGS)
        if n_bins < 2 ** n_blocks:
            raise ValueError(
                f"CNN2d with n_blocks={n_blocks} halves the frequency axis {n_blocks} times "
                f"and needs n_bins >= {2 ** n_blocks}, got n_bins={n_bins}; use fewer blocks.")

        blocks = []
        in_ch = 1
        for i in range(n_blocks):
            out_ch = channels * 2 ** i
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pooling = pooling
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Linear(in_ch, self.n_classes)

        self.min_frames = 2 ** n_blocks
        self.config = dict(n_bins=self.n_bins, n_classes=self.n_classes, dropout=self.dropout_p,
                           channels=channels, n_blocks=n_blocks, pooling=pooling)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_bins, frames)`` -> logits ``(batch, n_classes)``."""
        x = self.prepare_input(x)
        x = self.features(x.unsqueeze(1))
        x = x.amax(dim=(2, 3)) if self.pooling == "max" else x.mean(dim=(2, 3))
        return self.classifier(self.dropout(x))
