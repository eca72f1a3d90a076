"""The demo data set on disk: synthetic clips laid out like GTZAN, with its split lists.

Layout (as GTZAN)::

    OUT_DIR/<genre>/<genre>.000NN.wav      mono, 16-bit PCM
    OUT_DIR/<genre>/<genre>.000NN.au       ~15 % of the clips (same stem)
    OUT_DIR/{train,valid,test}_filtered.txt

The lists always name ``.wav`` even where the clip is stored as ``.au``,
because GTZAN ships ``.au`` files while its usual split lists name ``.wav``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import joblib
import numpy as np
import soundfile as sf

from pipeline.checks import is_int, is_real
from pipeline.splits import LIST_FILES, SPLITS
from synthetic.music import GENRES, check_clip_args, synthesize_clip

# Tags mixed into SeedSequence entropy so that the clip, .au-choice and split
# streams never share random numbers even for equal (genre, index) pairs.
_STREAM_CLIP = 1
_STREAM_AU = 2
_STREAM_SPLIT = 3


def _clip_rng(seed: int, genre: str, index: int) -> np.random.Generator:
    """Per-clip generator from (seed, genre, index), independent of job order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM_CLIP, zlib.crc32(genre.encode()), index]))


def _write_clip(path_wav: Path, audio: np.ndarray, *, sr: int, as_au: bool) -> Path:
    """Write 16-bit PCM as .wav or .au and remove the other twin so one file per stem exists."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    target = path_wav.with_suffix(".au") if as_au else path_wav
    twin = path_wav if as_au else path_wav.with_suffix(".au")
    sf.write(target, pcm, sr, format="AU" if as_au else "WAV", subtype="PCM_16")
    twin.unlink(missing_ok=True)
    return target


def _make_and_write(out_dir: Path, genre: str, index: int, *, seconds: float, sr: int, seed: int,
                    as_au: bool) -> str:
    audio = synthesize_clip(genre, seconds=seconds, sr=sr, rng=_clip_rng(seed, genre, index))
    return _write_clip(out_dir / genre / f"{genre}.{index:05d}.wav", audio, sr=sr, as_au=as_au).name


def _split_sizes(n: int) -> tuple[int, int, int]:
    """About 50/25/25 with every split non-empty for n >= 4."""
    n_train = n // 2
    n_valid = (n - n_train) // 2
    return n_train, n_valid, n - n_train - n_valid


def _make_splits(clips_per_genre: int, seed: int) -> dict[str, list[str]]:
    """Stratified, deterministically shuffled relative paths per split."""
    lists = {split: [] for split in SPLITS}
    for genre in GENRES:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SPLIT, zlib.crc32(genre.encode())]))
        order = rng.permutation(clips_per_genre)
        n_train, n_valid, _ = _split_sizes(clips_per_genre)
        bounds = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid],
                  "test": order[n_train + n_valid :]}
        for split, idx in bounds.items():
            lists[split].extend(f"{genre}/{genre}.{i:05d}.wav" for i in sorted(idx))
    shuffle = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SPLIT]))
    return {split: [paths[i] for i in shuffle.permutation(len(paths))] for split, paths in lists.items()}


def _check_args(clips_per_genre, seconds, seed, sr, au_fraction, jobs) -> None:
    if not (is_int(clips_per_genre) and clips_per_genre >= 4):
        raise ValueError(f"clips_per_genre must be an integer >= 4 so that train/valid/test are all non-empty, "
                         f"got {clips_per_genre!r}")
    check_clip_args(seconds, sr)
    if not (is_int(seed) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (is_real(au_fraction) and 0.0 <= au_fraction <= 1.0):
        raise ValueError(f"au_fraction must lie in [0, 1], got {au_fraction!r}")
    if not (is_int(jobs) and jobs != 0):
        raise ValueError(f"jobs must be a non-zero integer (-1 = all cores), got {jobs!r}")


def generate_dataset(out_dir, *, clips_per_genre: int = 40, seconds: float = 30.0, seed: int = 0,
                     sr: int = 22050, au_fraction: float = 0.15, jobs: int = 1) -> dict:
    """Write a GTZAN-shaped synthetic data set to ``out_dir``.

    Files this function owns (``<genre>/<genre>.NNNNN.{wav,au}`` for the
    requested indices and the three ``*_filtered.txt`` lists) are
    overwritten; anything else in ``out_dir`` is left alone.

    Parameters
    ----------
    out_dir : str or path-like
        Destination folder, created if missing.
    clips_per_genre : int
        Clips per genre (>= 4), split about 50/25/25 into train/valid/test.
    seconds : float
        Length of every clip.
    seed : int
        Non-negative seed; same arguments and seed give byte-identical files.
    sr : int
        Sample rate in Hz.
    au_fraction : float
        Fraction of clips stored as ``.au`` (the lists still name ``.wav``).
    jobs : int
        Parallel worker processes (joblib; -1 = all cores).  Does not change the output.

    Returns
    -------
    dict
        ``out_dir``, ``n_clips``, ``n_au``, ``splits`` (split -> count),
        ``clips_per_genre``, ``seconds``, ``sr``, ``seed``.

    Examples
    --------
    >>> import tempfile
    >>> summary = generate_dataset(tempfile.mkdtemp(), clips_per_genre=4, seconds=0.5)
    >>> summary["splits"]
    {'train': 16, 'valid': 8, 'test': 8}
    """
    _check_args(clips_per_genre, seconds, seed, sr, au_fraction, jobs)
    clips_per_genre, seed, sr, seconds = int(clips_per_genre), int(seed), int(sr), float(seconds)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder; choose another OUT_DIR")
    for genre in GENRES:
        (out_dir / genre).mkdir(parents=True, exist_ok=True)

    clips = [(genre, i) for genre in GENRES for i in range(clips_per_genre)]
    n_au = int(round(au_fraction * len(clips)))
    au_rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_AU]))
    au_set = set(au_rng.choice(len(clips), size=n_au, replace=False).tolist())

    jobs_list = (joblib.delayed(_make_and_write)(out_dir, genre, i, seconds=seconds, sr=sr, seed=seed,
                                                 as_au=k in au_set) for k, (genre, i) in enumerate(clips))
    joblib.Parallel(n_jobs=jobs)(jobs_list)

    splits = _make_splits(clips_per_genre, seed)
    for split, paths in splits.items():
        with open(out_dir / LIST_FILES[split], "w", encoding="utf-8", newline="\n") as f:
            f.writelines(p + "\n" for p in paths)
    return {"out_dir": str(out_dir), "n_clips": len(clips), "n_au": n_au,
            "splits": {split: len(paths) for split, paths in splits.items()},
            "clips_per_genre": clips_per_genre, "seconds": seconds, "sr": sr, "seed": seed}
