"""Caches of random log-mel-shaped rows for the input benchmarks, written by the one cache writer.

Not a script: ``bench_input.py`` and ``bench_loader.py`` import it. A reader's speed
does not depend on the values, so the rows are seeded noise; the file is what
``build_cache.py`` writes (:class:`cache.writer.CacheWriter`), memory-mappable.
"""
from __future__ import annotations

import numpy as np


from cache.format import FORMAT_VERSION, describe_feature
from cache.writer import CacheWriter, SplitRows
from common.kinds import SPECTROGRAM

SAMPLE_RATE, HOP = 22050, 512


def random_cache_settings(*, labels, n_bins: int, frames: int) -> dict:
    """The settings of a one-feature ("mel") cache, shaped like the builder's."""
    return {"format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE, "duration": frames * HOP / SAMPLE_RATE,
            "labels": list(labels), "augment": {"versions": 0},
            "features": {"mel": describe_feature({"n_mels": n_bins, "hop_length": HOP}, kind=SPECTROGRAM,
                                                 frames_per_second=SAMPLE_RATE / HOP, shape=(n_bins, frames))}}


def write_random_cache(path, *, clips: int, n_bins: int, frames: int, labels, eval_clips: int = 1,
                       loc: float = 0.0, scale: float = 1.0, seed: int = 0) -> None:
    """A finished cache at ``path``: ``clips`` train clips and ``eval_clips`` valid and test
    clips, each one "mel" row ``(n_bins, frames)`` of ``Normal(loc, scale)`` float32 values.

    Clip ``i`` of a split has label ``i % len(labels)``; no augmented versions.
    """
    rng = np.random.default_rng(seed)
    layout = {}
    for split, n in (("train", clips), ("valid", eval_clips), ("test", eval_clips)):
        names = [labels[i % len(labels)] for i in range(n)]
        layout[split] = SplitRows(paths=tuple(f"{name}/{name}.{i:05d}.wav" for i, name in enumerate(names)),
                                  labels=tuple(i % len(labels) for i in range(n)), versions=0)
    with CacheWriter(path, settings=random_cache_settings(labels=labels, n_bins=n_bins, frames=frames),
                     layout=layout, shapes={"mel": (n_bins, frames)}) as writer:
        for split, rows in layout.items():
            for clip in range(len(rows.paths)):
                values = rng.normal(loc, scale, size=(n_bins, frames)).astype("<f4")
                writer.write_rows(split, clip, [(0, {"mel": values}, {}, ())])
        writer.finish()
