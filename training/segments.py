"""Fixed-length segments of a clip's feature: where they start, and cutting them out.

The one segmentation of the project: the evaluation datasets (:mod:`training.data`)
and prediction on audio files (:mod:`training.inference`) both take their segment
starts from :func:`segment_starts` and their normalised segments from
:func:`cut_segments`, so a file predicted from audio gives the probabilities its
cached clip gets in evaluation.
"""
from __future__ import annotations

import numpy as np


def positive_int(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def segment_frames_for(frames_per_second: float, seconds: float) -> int:
    """Segment length in frames for ``seconds`` of a feature at ``frames_per_second``.

    >>> segment_frames_for(22050 / 512, 3.0)
    129
    """
    return max(1, round(seconds * frames_per_second))


def eval_hop_frames(eval_hop_seconds: float | None, frames_per_second: float) -> int | None:
    """Hop between evaluation segments in frames; None (the default) means one segment length.

    >>> eval_hop_frames(1.5, 22050 / 512)
    65
    """
    return None if eval_hop_seconds is None else max(1, round(eval_hop_seconds * frames_per_second))


def segment_starts(n_frames: int, segment_frames: int, hop_frames: int) -> np.ndarray:
    """First frames of the evaluation segments of a clip of ``n_frames`` frames.

    Starts ``0, hop, 2*hop, ...`` while a whole segment fits, plus one segment aligned
    to the clip's end when those stop short of it, so every frame is in some segment
    and no segment is padded.

    Parameters
    ----------
    n_frames : int
        Length of the clip's feature (frames, or samples for waveforms).
    segment_frames : int
        Segment length, ``<= n_frames``.
    hop_frames : int
        Distance between consecutive starts, >= 1.

    Returns
    -------
    np.ndarray
        ``(n_segments,)`` int64 starts, ascending.

    Raises
    ------
    ValueError
        If a setting is not a positive integer, or the clip is shorter than one segment.

    Examples
    --------
    >>> segment_starts(10, 4, 4).tolist()
    [0, 4, 6]
    >>> segment_starts(8, 4, 2).tolist()
    [0, 2, 4]
    """
    n_frames = positive_int("n_frames", n_frames)
    segment_frames = positive_int("segment_frames", segment_frames)
    hop_frames = positive_int("hop_frames", hop_frames)
    if segment_frames > n_frames:
        raise ValueError(f"a clip of {n_frames} frames is shorter than one segment of "
                         f"{segment_frames} frames")
    starts = np.arange(0, n_frames - segment_frames + 1, hop_frames, dtype=np.int64)
    if starts[-1] + segment_frames < n_frames:
        starts = np.r_[starts, n_frames - segment_frames]
    return starts


def inverse_std(std) -> np.ndarray:
    """``1 / std`` as float32: what :func:`cut_segments` multiplies by."""
    return (1.0 / np.asarray(std, dtype=np.float32)).astype(np.float32)


def cut_segments(crop, rows, starts, *, shape: tuple[int, ...], segment_frames: int, mean=None,
                 inv_std=None) -> np.ndarray:
    """Segments ``crop(row, start, start + segment_frames)`` stacked and normalised.

    Each crop is written straight into the batch array (one pass over its bytes), then
    the batch is scaled in place: ``(x - mean) * inv_std``.

    Parameters
    ----------
    crop : callable
        ``crop(row, start, stop)`` -> array ``(*shape, stop - start)``, e.g. a cache
        array's ``crop`` or a slice of a feature in memory.
    rows, starts : sequences of int
        Which row and first frame each segment is cut from.
    shape : tuple of int
        A row's shape without its time axis: ``(n_bins,)`` or ``()`` for waveforms.
    mean, inv_std : np.ndarray, optional
        Per-bin statistics (``(n_bins, 1)`` or ``(1,)``, see ``training.data.stats_shape``)
        and :func:`inverse_std` of the std; both or neither.

    Returns
    -------
    np.ndarray
        ``(len(rows), *shape, segment_frames)`` float32.
    """
    x = np.empty((len(rows), *shape, segment_frames), dtype=np.float32)
    for out, row, start in zip(x, rows, starts):
        piece = crop(row, start, start + segment_frames)
        if mean is None:
            out[...] = piece
        else:
            np.subtract(piece, mean, out=out)
    if mean is not None:
        x *= inv_std
    return x
