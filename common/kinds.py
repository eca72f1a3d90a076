"""The two kinds of model input, named once for features, caches, models and training.

A feature of kind :data:`SPECTROGRAM` gives rows ``(n_bins, frames)``; one of kind
:data:`WAVEFORM` gives ``(samples,)``. Models declare which kind they take.

>>> KIND_DIMS[SPECTROGRAM], KIND_DIMS[WAVEFORM]
(2, 1)
"""
from __future__ import annotations

SPECTROGRAM = "spectrogram"
WAVEFORM = "waveform"

# kind -> number of axes of one cached row
KIND_DIMS = {
    SPECTROGRAM: 2,
    WAVEFORM: 1,
}
KINDS = tuple(KIND_DIMS)
