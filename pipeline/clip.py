"""The per-clip audio work of a cache build: decode once, augment, compute every feature.

:func:`process_clip` is what build workers run (one call per source clip) and what
prediction runs on a user's file, so both see exactly the same arrays. It returns plain
arrays in a :class:`ClipResult`; storing them is the cache writer's job.

>>> from pipeline.features import build_feature
>>> task = ClipTask(split="train", clip=0, listed="blues/blues.00000.wav",
...                 path="gtzan/blues/blues.00000.wav", versions=(0, 1), seed=0)
>>> result = process_clip(task, features={"mel": build_feature("mel")}, augmenter=None,
...                       sr=22050, duration=30.0)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.audio import AudioLoadError, load_audio
from pipeline.augment import Augmenter, augment_seed
from pipeline.features import Feature, compute_features


@dataclass(frozen=True)
class ClipTask:
    """One unit of work: a source clip and which of its versions to compute.

    ``versions`` are 0 (the original) and/or 1..K (augmented copies, seeded by
    ``(seed, listed, version)`` so that a copy is the same wherever it is computed).
    """
    split: str
    clip: int
    listed: str
    path: str
    versions: tuple[int, ...]
    seed: int


@dataclass
class RowResult:
    """One computed row: the features of one version of one clip.

    ``features`` maps a feature name to its array (``(n_bins, frames)`` or
    ``(samples,)``); ``augment`` holds the effect parameters applied (empty for the
    original); ``flags`` are the loader's flags (``padded``, ``short``, ``silent``).
    """
    version: int
    features: dict[str, np.ndarray]
    augment: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass
class ClipResult:
    """What a worker sends back for one source clip: its rows, or why it failed."""
    split: str
    clip: int
    rows: list[RowResult] = field(default_factory=list)
    error: str | None = None


def process_clip(task: ClipTask, *, features: dict[str, Feature], augmenter: Augmenter | None,
                 sr: int, duration: float | None) -> ClipResult:
    """Decode one clip once and compute every feature of each requested version.

    A file that cannot be decoded, or whose features come out non-finite, comes back
    with ``error`` set and no rows: never as zeros or NaN. ``duration=None`` keeps the
    whole file (prediction).
    """
    result = ClipResult(split=task.split, clip=task.clip)
    try:
        audio = load_audio(task.path, sr=sr, duration=duration)
    except AudioLoadError as exc:
        result.error = str(exc)
        return result
    for version in task.versions:
        samples, applied = audio.samples, {}
        if version > 0:
            samples, applied = augmenter(audio.samples,
                                         seed=augment_seed(task.seed, task.listed, version))
        result.rows.append(RowResult(version=version, features=compute_features(features, samples),
                                     augment=applied, flags=audio.flags))
    result.error = non_finite_reason(result)
    if result.error is not None:
        result.rows = []
    return result


def non_finite_reason(result: ClipResult) -> str | None:
    """Why a clip's computed rows cannot be used (a NaN or infinite value), or None.

    >>> bad = ClipResult("train", 0, rows=[RowResult(0, {"mel": np.array([1.0, np.nan])})])
    >>> non_finite_reason(bad)
    'feature mel of the original has NaN values (1 of 2)'
    """
    for row in result.rows:
        for name, values in row.features.items():
            values = np.asarray(values)
            if not np.isfinite(values).all():
                kind = "NaN" if np.isnan(values).any() else "infinite"
                what = "the original" if row.version == 0 else f"augmented copy {row.version}"
                return (f"feature {name} of {what} has {kind} values "
                        f"({int((~np.isfinite(values)).sum())} of {values.size})")
    return None
