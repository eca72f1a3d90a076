"""Convolutional recurrent network: 2D conv front end + bidirectional GRU over time.

After Choi et al., "Convolutional recurrent neural networks for music
classification", ICASSP 2017: the convs summarise local spectro-temporal
patterns and pool frequency hard, the GRU models how they evolve in time.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .base import (SPECTROGRAM, GenreModel, check_choice, check_int_list,
                   check_positive_int, check_same_length)

RNN_POOLINGS = ("mean", "last")


class CRNN(GenreModel):
    """2D conv blocks, max over remaining frequency, BiGRU, time pooling, linear.

    Block ``i`` is Conv2d 3x3 + BatchNorm + ReLU + MaxPool ``(freq_pools[i],
    time_pools[i])``; widths are ``channels * (1, 2, 4, 4, ...)``.

    Parameters
    ----------
    n_bins : int
        Mel bins; must be >= ``prod(freq_pools)`` (32 by default).
    n_classes : int
        Number of genres.
    dropout : float
        Dropout on the GRU input and before the classifier, in [0, 1).
    channels : int
        Width of the first conv block.
    freq_pools, time_pools : list of int
        Pool sizes per block along frequency and time (same length = number
        of blocks). ``min_frames == prod(time_pools)``.
    rnn_hidden : int
        GRU hidden size per direction.
    rnn_layers : int
        Stacked GRU layers (dropout is applied between them when > 1).
    pooling : {"mean", "last"}
        ``"mean"`` averages the GRU outputs over time; ``"last"`` uses the final
        hidden state of each direction.

    Input ``(batch, n_bins, frames)``, output logits ``(batch, n_classes)``.

    Examples
    --------
    >>> import torch
    >>> model = CRNN(n_bins=128, n_classes=10)
    >>> model(torch.randn(4, 128, 130)).shape
    torch.Size([4, 10])
    """

    INPUT_KIND = SPECTROGRAM

    def __init__(self, *, n_bins: int, n_classes: int, dropout: float = 0.3,
                 channels: int = 32, freq_pools: Sequence[int] = (2, 2, 2, 4),
                 time_pools: Sequence[int] = (2, 2, 1, 1), rnn_hidden: int = 64,
                 rnn_layers: int = 1, pooling: str = "mean") -> None:
        super().__init__(n_bins=n_bins, n_classes=n_classes, dropout=dropout)
        channels = check_positive_int("channels", channels)
        freq_pools = check_int_list("freq_pools", freq_pools)
        time_pools = check_int_list("time_pools", time_pools)
        check_same_length(("freq_pools", "time_pools"), (freq_pools, time_pools))
        rnn_hidden = check_positive_int("rnn_hidden", rnn_hidden)
        rnn_layers = check_positive_int("rnn_layers", rnn_layers)
        pooling = check_choice("pooling", pooling, RNN_POOLINGS)
        if n_bins < math.prod(freq_pools):
            raise ValueError(
                f"CRNN with freq_pools={freq_pools} divides frequency by "
                f"{math.prod(freq_pools)} and needs n_bins >= {math.prod(freq_pools)}, got "
                f"n_bins={n_bins}; use smaller freq_pools.")

        blocks = []
        in_ch = 1
        for i, (fp, tp) in enumerate(zip(freq_pools, time_pools)):
            out_ch = channels * 2 ** min(i, 2)
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d((fp, tp)),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(self.dropout_p)
        self.rnn = nn.GRU(in_ch, rnn_hidden, num_layers=rnn_layers, batch_first=True,
                          bidirectional=True, dropout=self.dropout_p if rnn_layers > 1 else 0.0)
        self.pooling = pooling
        self.classifier = nn.Linear(2 * rnn_hidden, self.n_classes)

        self.min_frames = math.prod(time_pools)
        self.config = dict(n_bins=self.n_bins, n_classes=self.n_classes, dropout=self.dropout_p,
                           channels=channels, freq_pools=freq_pools, time_pools=time_pools,
                           rnn_hidden=rnn_hidden, rnn_layers=rnn_layers, pooling=pooling)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_bins, frames)`` -> logits ``(batch, n_classes)``."""
        x = self.prepare_input(x)
        x = self.features(x.unsqueeze(1))            # (batch, C, F', T')
        x = x.amax(dim=2).transpose(1, 2)            # (batch, T', C)
        out, h_n = self.rnn(self.dropout(x))         # out: (batch, T', 2H)
        if self.pooling == "mean":
            x = out.mean(dim=1)
        else:
            # h_n: (layers * 2, batch, H); the top layer's two directions come last.
            x = torch.cat([h_n[-2], h_n[-1]], dim=1)
        return self.classifier(self.dropout(x))
