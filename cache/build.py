"""Building a cache: plan the rows, run the workers, feed the single writer.

>>> from pipeline.features import build_feature
>>> build(data="gtzan", out="cache.h5", features={"mel": build_feature("mel")})  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from cache.format import FORMAT_VERSION, fingerprint
from cache.writer import CacheWriter, ClipResult, RowResult, SettingsMismatch, SplitRows, \
    describe_differences, read_settings
from pipeline.audio import AudioLoadError, load_audio
from pipeline.augment import Augmenter, augment_seed
from pipeline.features import Feature
from pipeline.splits import SplitLists, read_split_lists

# Decoding, resampling and STFTs each want every core; with one clip per worker that
# oversubscribes two cores badly (see shared/NOTES.md), so workers run single-threaded.
WORKER_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class ClipTask:
    """One unit of work: a source clip and which of its versions to compute."""
    split: str
    clip: int
    listed: str
    path: str
    versions: tuple[int, ...]
    seed: int


@dataclass
class BuildSummary:
    out: Path
    built_rows: int
    augmented_rows: int
    skipped: list[dict]
    seconds: float
    up_to_date: bool = False
    resumed: bool = False

    def describe(self) -> str:
        if self.up_to_date:
            return f"{self.out} is up to date (same settings); nothing to do"
        size_mb = self.out.stat().st_size / 1e6
        return (f"{self.out}: {self.built_rows} rows built ({self.augmented_rows} augmented), "
                f"{len(self.skipped)} source files skipped, {size_mb:.1f} MB, {self.seconds:.1f} s"
                + (" (resumed)" if self.resumed else ""))


def list_digest(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def build_settings(lists: SplitLists, *, features: dict[str, Feature], augmenter: Augmenter | None,
                   versions: int, seed: int, sr: int, duration: float, compression: str) -> dict:
    """Every parameter that determines the file's content (what the fingerprint covers).

    The data folder's location is left out on purpose: moving it does not change the cache.
    """
    n_samples = round(duration * sr)
    feature_settings = {}
    for name, feature in features.items():
        feature_settings[name] = {**feature.settings, "kind": feature.kind,
                                  "frames_per_second": feature.frames_per_second,
                                  "shape": list(feature.output_shape(n_samples))}
    augment = {"versions": versions, "splits": ["train"]}
    if versions:
        augment.update(seed=seed, **augmenter.settings)
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": sr,
        "duration": duration,
        "labels": list(lists.labels),
        "features": feature_settings,
        "augment": augment,
        "sources": {split: {"count": len(lists.clips[split]), "sha256": list_digest(lists.listed(split))}
                    for split in lists.clips},
        "compression": compression,
    }


def process_clip(task: ClipTask, *, features: dict[str, Feature], augmenter: Augmenter | None,
                 sr: int, duration: float) -> ClipResult:
    """Decode one clip once and compute every feature of each requested version.

    Runs in a worker. A file that cannot be decoded comes back as an error, never as
    zeros.
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
        result.rows.append(RowResult(
            version=version,
            features={name: feature(samples) for name, feature in features.items()},
            augment=applied,
            flags=audio.flags))
    return result


def plan_layout(lists: SplitLists, *, versions: int) -> dict[str, SplitRows]:
    """Rows of each split: training clips get ``versions`` augmented copies, others none."""
    return {split: SplitRows(paths=tuple(c.listed for c in clips),
                             labels=tuple(lists.label_index(c.label) for c in clips),
                             versions=versions if split == "train" else 0)
            for split, clips in lists.clips.items()}


def plan_tasks(lists: SplitLists, pending: dict[str, dict[int, list[int]]], *, seed: int) -> list[ClipTask]:
    tasks = []
    for split, per_clip in pending.items():
        clips = lists.clips[split]
        for clip, versions in sorted(per_clip.items()):
            tasks.append(ClipTask(split=split, clip=clip, listed=clips[clip].listed,
                                  path=str(clips[clip].path), versions=tuple(versions), seed=seed))
    return tasks


def check_existing(out: Path, settings: dict, *, overwrite: bool) -> bool:
    """True when ``out`` already holds this exact build; refuse a different one."""
    if not out.exists():
        return False
    try:
        old = read_settings(out)
    except Exception as exc:
        if overwrite:
            return False
        raise SettingsMismatch(f"{out} exists but is not a readable cache ({exc}); "
                               f"pass --overwrite to replace it, or choose another --out") from exc
    if fingerprint(old) == fingerprint(settings):
        return True
    if overwrite:
        return False
    diff = "\n  ".join(describe_differences(old, settings))
    raise SettingsMismatch(f"{out} was built with other settings:\n  {diff}\n"
                           f"Pass --overwrite to replace it, or choose another --out.")


def run_tasks(tasks: list[ClipTask], *, jobs: int, features, augmenter, sr, duration):
    """Yield worker results as they finish (any order), keeping memory bounded."""
    if jobs == 1:
        # Single-threaded BLAS here too: a threaded matrix product sums in another order,
        # and the file must not depend on the worker count.
        with threadpool_limits(limits=1):
            for task in tasks:
                yield process_clip(task, features=features, augmenter=augmenter, sr=sr, duration=duration)
        return
    for name in WORKER_THREAD_ENV:
        os.environ.setdefault(name, "1")  # inherited by workers that start from now on
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        parallel = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
        yield from parallel(joblib.delayed(process_clip)(task, features=features, augmenter=augmenter,
                                                         sr=sr, duration=duration)
                            for task in tasks)


def build(*, data, out, features: dict[str, Feature], augmenter: Augmenter | None = None,
          versions: int = 0, seed: int = 0, sr: int = 22050, duration: float = 30.0,
          jobs: int = 1, compression: str = "none", overwrite: bool = False,
          progress: bool = True) -> BuildSummary:
    """Build (or resume, or confirm) the cache ``out`` from the GTZAN-style folder ``data``."""
    if versions < 0:
        raise ValueError(f"augment={versions}: the number of augmented versions must be >= 0")
    if versions and augmenter is None:
        raise ValueError("augment > 0 needs an augmenter (pipeline.augment.build_augmenter)")
    if not features:
        raise ValueError("no features asked for; pass at least one, e.g. --features mel")
    start = time.monotonic()
    out = Path(out)
    lists = read_split_lists(data)
    settings = build_settings(lists, features=features, augmenter=augmenter, versions=versions,
                              seed=seed, sr=sr, duration=duration, compression=compression)
    if check_existing(out, settings, overwrite=overwrite):
        return BuildSummary(out=out, built_rows=0, augmented_rows=0, skipped=[], seconds=0.0,
                            up_to_date=True)
    partial = out.with_name(out.name + ".partial")
    if overwrite and partial.exists():
        partial.unlink()
    layout = plan_layout(lists, versions=versions)
    n_samples = round(duration * sr)
    shapes = {name: tuple(f.output_shape(n_samples)) for name, f in features.items()}
    built = augmented = 0
    with CacheWriter(out, settings=settings, layout=layout, shapes=shapes,
                     compression=compression) as writer:
        tasks = plan_tasks(lists, writer.pending(), seed=seed)
        results = run_tasks(tasks, jobs=jobs, features=features, augmenter=augmenter, sr=sr,
                            duration=duration)
        for result in tqdm(results, total=len(tasks), unit="clip", desc=f"building {out.name}",
                           disable=not progress, file=sys.stderr):
            writer.write_clip(result)
            if result.error is not None:
                tqdm.write(f"skipped {lists.clips[result.split][result.clip].path}: {result.error}",
                           file=sys.stderr)
            built += len(result.rows)
            augmented += sum(row.version > 0 for row in result.rows)
        skipped = writer.skipped()
        resumed = writer.resumed
        writer.finish()
    return BuildSummary(out=out, built_rows=built, augmented_rows=augmented, skipped=skipped,
                        seconds=time.monotonic() - start, resumed=resumed)
