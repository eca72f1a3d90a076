"""Sample-level CNN on raw waveforms (Lee et al., 2017).

Reference: J. Lee, J. Park, K. L. Kim, J. Nam, "Sample-level deep convolutional
neural networks for music auto-tagging using raw waveforms", SMC 2017. The
paper's 3^9 model maps 59049 samples through a stride-3 conv and nine
conv(3)+pool(3) blocks to one frame, with 128-256-512 channels. Here the
widths start smaller (CPU budget) and double every three blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import WAVEFORM, GenreModel, check_choice, check_positive_int

GLOBAL_POOLINGS = ("max", "mean")


def block_widths(channels: int, n_blocks: int) -> list[int]:
    """Channels of each conv block: ``channels`` doubling every three blocks."""
    return [channels * 2 ** (i // 3) for i in range(n_blocks)]


class SampleCNN(GenreModel):
    """Strided stem Conv1d(1, C, 3, stride=3), then conv(3)+BN+ReLU+MaxPool(3) blocks.

    Parameters
    ----------
    n_bins : int
        Ignored (kept so every model is built with the same call); stored in
        ``config`` so the model can be rebuilt.
    n_classes : int
        Number of genres.
    dropout : float
        Dropout before the classifier, in [0, 1) (paper: 0.5).
    channels : int
        Width of the stem and first blocks; doubles every three blocks.
    n_blocks : int
        Conv blocks after the stem; ``min_frames == 3 ** (n_blocks + 1)`` samples.
        The default 9 needs 59049 samples (2.68 s at 22050 Hz), so a 3 s segment
        (66150 samples) fits.
    pooling : {"max", "mean"}
        Global pooling over the remaining time steps.

    Input ``(batch, samples)`` or ``(batch, 1, samples)``; output logits
    ``(batch, n_classes)``.

    Examples
    --------
    >>> import torch
    >>> model = SampleCNN(n_bins=128, n_classes=10)
    >>> model(torch.randn(2, 66150)).shape
    torch.Size([2, 10])
    """

    INPUT_KIND = WAVEFORM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float = 0.5,
                 channels: int = 32, n_blocks: int = 9, pooling: str = "max") -> None:
        super().__init__(n_bins=n_bins, n_classes=n_classes, dropout=dropout)
        channels = check_positive_int("channels", channels)
        n_blocks = check_positive_int("n_blocks", n_blocks)
        pooling = check_choice("pooling", pooling, GLOBAL_POOLINGS)

        layers = [
            nn.Conv1d(1, channels, 3, stride=3, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
        ]
        in_ch = channels
        for out_ch in block_widths(channels, n_blocks):
            layers += [
                nn.Conv1d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm1d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(3),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pooling = pooling
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Linear(in_ch, self.n_classes)

        self.min_frames = 3 ** (n_blocks + 1)
        self.config = dict(n_bins=self.n_bins, n_classes=self.n_classes, dropout=self.dropout_p,
                           channels=channels, n_blocks=n_blocks, pooling=pooling)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` or ``(batch, 1, samples)`` -> logits ``(batch, n_classes)``."""
        x = self.prepare_input(x)
        x = self.features(x.unsqueeze(1))
        x = x.amax(dim=-1) if self.pooling == "max" else x.mean(dim=-1)
        return self.classifier(self.dropout(x))
