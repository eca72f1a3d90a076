"""Short-chunk CNN with residual connections (Won et al., 2020).

Reference: M. Won, A. Ferraro, D. Bogdanov, X. Serra, "Evaluation of CNN-based
automatic music tagging models", SMC 2020 (``ShortChunkCNN_Res`` in
github.com/minzwon/sota-music-tagging-models). The paper uses 7 blocks with
widths 128-128-256-256-256-256-512 (9.1M parameters in this implementation);
the defaults here keep the 7-block depth and width pattern at a CPU-friendly
base width of 48 (1.3M parameters).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import SPECTROGRAM, GenreModel, check_positive_int

# Width multipliers of the paper's 7 blocks; deeper models keep the last one.
_WIDTH_PATTERN = (1, 1, 2, 2, 2, 2, 4)


def block_widths(channels: int, n_blocks: int) -> list[int]:
    """Output channels of each residual block, following the paper's pattern."""
    return [channels * _WIDTH_PATTERN[min(i, len(_WIDTH_PATTERN) - 1)] for i in range(n_blocks)]


class ResidualBlock(nn.Module):
    """Two 3x3 conv+BN layers (the first strided) plus a shortcut, then ReLU.

    The shortcut is the identity when shape is unchanged, else a strided 1x1
    conv + BN projection (the reference code uses a 3x3 projection; 1x1 is the
    standard ResNet choice and costs 9x fewer parameters).
    """

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_ch, F, T)`` -> ``(batch, out_ch, ceil(F/stride), ceil(T/stride))``."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class ShortChunkResNet(GenreModel):
    """Short-chunk ResNet on mel spectrograms.

    Input BatchNorm2d(1), ``n_blocks`` residual blocks each downsampling
    frequency and time by 2, global max pooling over what is left, then
    Linear + BatchNorm + ReLU + dropout + Linear.

    Parameters
    ----------
    n_bins : int
        Mel bins (any size: strided padded convs never shrink an axis below 1).
    n_classes : int
        Number of genres.
    dropout : float
        Dropout before the final linear layer, in [0, 1) (paper: 0.5).
    channels : int
        Base width; blocks use ``channels`` x (1, 1, 2, 2, 2, 2, 4) as in the paper
        (the paper's base is 128; 48 gives ~1.3M parameters, 32 ~0.6M).
    n_blocks : int
        Number of residual blocks (paper: 7).

    Input ``(batch, n_bins, frames)``, any ``frames >= 1``; output logits
    ``(batch, n_classes)``. The dense head's BatchNorm needs batch >= 2 in
    training mode.

    Examples
    --------
    >>> import torch
    >>> model = ShortChunkResNet(n_bins=128, n_classes=10)
    >>> model(torch.randn(4, 128, 130)).shape
    torch.Size([4, 10])
    """

    INPUT_KIND = SPECTROGRAM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float = 0.5,
                 channels: int = 48, n_blocks: int = 7) -> None:
        super().__init__(n_bins=n_bins, n_classes=n_classes, dropout=dropout)
        channels = check_positive_int("channels", channels)
        n_blocks = check_positive_int("n_blocks", n_blocks)

        # Normalises the log-mel input per batch, as in the reference model.
        self.input_bn = nn.BatchNorm2d(1)
        blocks = []
        in_ch = 1
        for out_ch in block_widths(channels, n_blocks):
            blocks.append(ResidualBlock(in_ch, out_ch, stride=2))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(in_ch, in_ch, bias=False),
            nn.BatchNorm1d(in_ch),
            nn.ReLU(inplace=True),
            nn.Dropout(self.dropout_p),
            nn.Linear(in_ch, self.n_classes),
        )

        self.min_frames = 1
        self.config = dict(n_bins=self.n_bins, n_classes=self.n_classes, dropout=self.dropout_p,
                           channels=channels, n_blocks=n_blocks)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_bins, frames)`` -> logits ``(batch, n_classes)``."""
        x = self.prepare_input(x)
        x = self.blocks(self.input_bn(x.unsqueeze(1)))
        return self.head(x.amax(dim=(2, 3)))
