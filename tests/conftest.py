"""Shared fixtures: a small seeded synthetic GTZAN-style set and caches built from it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synthetic import generate_dataset

# Small enough for a fast suite, large enough that a model can beat chance on it.
TINY_CLIPS_PER_GENRE = 8
TINY_SECONDS = 4.0


@pytest.fixture(scope="session")
def tiny_gtzan(tmp_path_factory) -> Path:
    """8 genres x 8 clips x 4 s, with GTZAN's quirks (some .au, lists naming .wav)."""
    root = tmp_path_factory.mktemp("tiny_gtzan")
    generate_dataset(root, clips_per_genre=TINY_CLIPS_PER_GENRE, seconds=TINY_SECONDS, seed=7)
    return root


@pytest.fixture
def gtzan_copy(tiny_gtzan, tmp_path) -> Path:
    """A private copy of the tiny set that a test may damage."""
    return Path(shutil.copytree(tiny_gtzan, tmp_path / "gtzan"))


def build_args(data, out, *extra):
    """Parsed build_cache.py arguments, as the command line would give them.

    Without augmentation unless ``extra`` asks for it: the default copies cost time
    that most tests do not need.
    """
    import build_cache

    return build_cache.get_args_parser().parse_args(
        ["--data", str(data), "--out", str(out), "--duration", str(TINY_SECONDS), "--no-progress",
         "--jobs", "1", "--augment", "0", *extra])


@pytest.fixture(scope="session")
def tiny_cache(tiny_gtzan, tmp_path_factory) -> Path:
    """Every feature of the tiny set, one augmented copy per training clip."""
    import build_cache

    out = tmp_path_factory.mktemp("cache") / "cache.h5"
    build_cache.main(build_args(tiny_gtzan, out, "--features", "mel,mfcc,chroma,cqt,wave",
                                "--augment", "1", "--jobs", "2"))
    return out
