"""Building a cache: plan the rows, run the workers, hand the single writer their arrays.

The workers are joblib's local processes (backend ``loky``) or the workers of a Dask
cluster (backend ``dask``), see :mod:`builder.engines`; either way the writer stays in
this process and the file's content is the same.

>>> from pipeline.features import build_feature
>>> build(data="gtzan", out="cache.h5", features={"mel": build_feature("mel")})  # doctest: +SKIP
>>> build(data="/shared/gtzan", out="cache.h5", features={"mel": build_feature("mel")},
...       backend="dask", scheduler="tcp://head:8786")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
from tqdm import tqdm

from builder.engines import build_engine, check_backend, close_results, compile_librosa_kernels
from cache.format import (COMPRESSIONS, FORMAT_VERSION, PARTIAL_SUFFIX, STATUS_SKIPPED, CacheError, describe_feature,
                          fingerprint, partial_path, read_root_attrs)
from cache.writer import CacheWriter, SettingsMismatch, SplitRows, describe_differences
from common.errors import UserError
from common.locks import FileLock
from pipeline.augment import Augmenter
from pipeline.clip import ClipResult, ClipTask
from pipeline.features import Feature
from pipeline.splits import LIST_FILES, SplitLists, read_split_lists

# Beyond these a value is a typo (or would fill the disk), not a setting.
MAX_DURATION_S = 3600.0
SR_RANGE = (1000, 384_000)
MAX_JOBS = 1024
RETRY_FLAG = "--retry-skipped"


@dataclass
class BuildSummary:
    """What a build did: rows written, clips skipped (split, path, reason), time taken.

    ``up_to_date`` when the cache already had these settings and nothing was written.
    """
    out: Path
    built_rows: int
    augmented_rows: int
    skipped: list[dict]
    seconds: float
    up_to_date: bool = False
    resumed: bool = False
    # An up-to-date cache's source files that were skipped when it was built.
    skipped_before: int = 0
    workers: int = 0  # local processes that computed the clips (0: a Dask cluster's workers)
    # Seconds from the start until the first and the last worker result reached the writer
    # (None when nothing was computed): start-up and steady throughput, told apart.
    first_result_s: float | None = None
    last_result_s: float | None = None

    def describe(self) -> str:
        if self.up_to_date:
            return (f"{self.out} is up to date (same settings); nothing to do"
                    + (f"; {self.skipped_before} source files were skipped when it was built: once they "
                       f"are fixed, run the same command with {RETRY_FLAG} to compute them"
                       if self.skipped_before else ""))
        size_mb = self.out.stat().st_size / 1e6
        return (f"{self.out}: {self.built_rows} rows built ({self.augmented_rows} augmented), "
                f"{len(self.skipped)} source files skipped, {size_mb:.1f} MB, {self.seconds:.1f} s"
                + (" (resumed)" if self.resumed else ""))


def list_digest(paths: list[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()


def clip_group(clip) -> str:
    """The clip's group (e.g. its track, from the split lists' optional groups file), "" if none."""
    return getattr(clip, "group", None) or ""


def has_groups(lists: SplitLists) -> bool:
    return any(clip_group(clip) for clips in lists.clips.values() for clip in clips)


def split_sources(lists: SplitLists, split: str, *, groups: bool) -> dict:
    """What the fingerprint records of a split's list: count and digest, and of its
    groups when any clip has one (caches without groups keep their fingerprint)."""
    source = {"count": len(lists.clips[split]), "sha256": list_digest(lists.listed(split))}
    if groups:
        source["groups_sha256"] = list_digest([f"{clip.listed}\t{clip_group(clip)}"
                                               for clip in lists.clips[split]])
    return source


def build_settings(lists: SplitLists, *, features: dict[str, Feature], augmenter: Augmenter | None,
                   versions: int, seed: int, sr: int, duration: float, compression: str) -> dict:
    """Every parameter that determines the file's content (what the fingerprint covers).

    The data folder's location is left out on purpose: moving it does not change the cache.
    """
    n_samples = round(duration * sr)
    feature_settings = {}
    for name, feature in features.items():
        feature_settings[name] = describe_feature(feature.settings, kind=feature.kind,
                                                  frames_per_second=feature.frames_per_second,
                                                  shape=feature.output_shape(n_samples))
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
        "sources": {split: split_sources(lists, split, groups=has_groups(lists)) for split in lists.clips},
        "compression": compression,
    }


def plan_layout(lists: SplitLists, *, versions: int) -> dict[str, SplitRows]:
    """Rows of each split: training clips get ``versions`` augmented copies, others none."""
    groups = has_groups(lists)
    return {split: SplitRows(paths=tuple(c.listed for c in clips),
                             labels=tuple(lists.label_index(c.label) for c in clips),
                             versions=versions if split == "train" else 0,
                             groups=tuple(clip_group(c) for c in clips) if groups else ())
            for split, clips in lists.clips.items()}


def plan_tasks(lists: SplitLists, pending: dict[str, dict[int, list[int]]], *, seed: int) -> list[ClipTask]:
    tasks = []
    for split, per_clip in pending.items():
        clips = lists.clips[split]
        for clip, versions in sorted(per_clip.items()):
            tasks.append(ClipTask(split=split, clip=clip, listed=clips[clip].listed,
                                  path=str(clips[clip].path), versions=tuple(versions), seed=seed))
    return tasks


@dataclass(frozen=True)
class Existing:
    """What is at a cache's path and what a build does about it.

    ``action`` is one of ``"up_to_date"`` (nothing to write), ``"build"`` (create or
    resume ``.partial``), ``"replace"`` (``--overwrite``: start again; the old file
    stays until the new one is finished), ``"resume_final"`` (an unfinished file at
    the final path, resumed like a ``.partial``) or ``"retry"`` (``--retry-skipped``:
    compute the skipped clips of a finished cache again, in place).
    """
    action: str
    skipped: int = 0


def plan_existing(out: Path, settings: dict, *, overwrite: bool, retry_skipped: bool = False) -> Existing:
    """Decide what to do with what is at ``out``; refuse a file of other settings."""
    if not out.exists():
        return Existing("build")
    try:
        with h5py.File(out, "r", locking=False) as f:
            root = read_root_attrs(f.attrs, path=out)
            skipped = sum(int(((f[split]["status"][...] == STATUS_SKIPPED) & (f[split]["version"][...] == 0)).sum())
                          for split in settings["sources"] if split in f)
    except (OSError, RuntimeError, KeyError, CacheError) as exc:
        if overwrite:
            return Existing("replace")
        if isinstance(exc, CacheError):  # it names the attribute and says to --overwrite
            raise SettingsMismatch(f"{exc}, or choose another --out") from exc
        raise SettingsMismatch(f"{out} exists but is not a readable cache ({exc}); "
                               f"pass --overwrite to replace it, or choose another --out") from exc
    if fingerprint(root.settings) != fingerprint(settings):
        if overwrite:
            return Existing("replace")
        diff = "\n  ".join(describe_differences(root.settings, settings))
        raise SettingsMismatch(f"{out} was built with other settings:\n  {diff}\n"
                               f"Pass --overwrite to replace it, or choose another --out.")
    if not root.complete:
        return Existing("replace" if overwrite else "resume_final")
    if retry_skipped and skipped:
        return Existing("retry", skipped=skipped)
    return Existing("up_to_date", skipped=skipped)


def check_build_numbers(*, sr, duration, jobs) -> None:
    """Refuse a sample rate, clip duration or worker count no build can use, naming the flag."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or not 0 < duration <= MAX_DURATION_S:
        raise UserError(f"--duration {duration}: must be a number of seconds per clip, > 0 and at most "
                        f"{MAX_DURATION_S:g} (GTZAN clips are 30)")
    low, high = SR_RANGE
    if isinstance(sr, bool) or not isinstance(sr, int) or not low <= sr <= high:
        raise UserError(f"--sr {sr}: must be a sample rate in Hz from {low} to {high} (GTZAN is 22050)")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"--jobs {jobs}: must be a number of workers from 1 to {MAX_JOBS}, e.g. the "
                        f"number of cores ({os.cpu_count()})")


def check_out_path(out) -> Path:
    """The cache path, its folder created if missing; refuse one no build can write.

    Raises UserError for a folder, a path under a file, a ``.partial`` name, or a
    folder this process cannot create or write in.
    """
    out = Path(out).expanduser()
    if out.name.endswith(PARTIAL_SUFFIX):
        raise UserError(f"--out {out}: names ending in {PARTIAL_SUFFIX} are where unfinished builds live; "
                        f"give the final name, e.g. --out {out.name.removesuffix(PARTIAL_SUFFIX)}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the cache file's path, e.g. --out {out / 'cache.h5'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write in its folder {out.parent} ({exc.strerror or exc}); "
                        f"choose a folder you can write to") from exc
    return out


def check_labels(lists: SplitLists) -> None:
    """Refuse lists of fewer than two genres; warn of genres the training list lacks."""
    files = ", ".join(LIST_FILES.get(split, split) for split in lists.clips)
    if len(lists.labels) < 2:
        named = lists.labels[0] if lists.labels else "none"
        raise UserError(f"the split lists ({files} in {lists.root}) name a single genre ({named}); a "
                        f"classifier needs at least two: list clips of other genres too")
    trained = {clip.label for clip in lists.clips.get("train", ())}
    untrained = [label for label in lists.labels if label not in trained]
    if untrained and "train" in lists.clips:
        where = sorted({LIST_FILES.get(split, split) for split, clips in lists.clips.items()
                        for clip in clips if clip.label in untrained})
        print(f"WARNING: genre(s) {', '.join(untrained)} are in {', '.join(where)} but not in "
              f"{LIST_FILES['train']}: a model trained on this cache never learns them, and each of "
              f"their clips counts as an error in valid/test accuracy. Add training clips of "
              f"{'those genres' if len(untrained) > 1 else 'that genre'} to {LIST_FILES['train']}",
              file=sys.stderr, flush=True)


def build(*, data, out, features: dict[str, Feature], augmenter: Augmenter | None = None,
          versions: int = 0, seed: int = 0, sr: int = 22050, duration: float = 30.0,
          jobs: int = 1, compression: str = "none", overwrite: bool = False, retry_skipped: bool = False,
          progress: bool = True, backend: str = "loky", scheduler: str | None = None) -> BuildSummary:
    """Build (or resume, or confirm) the cache ``out`` from the GTZAN-style folder ``data``.

    ``backend`` is where the clips are computed (see :data:`BACKENDS`): ``"loky"``, or
    ``"dask"`` on the cluster at ``scheduler`` (a local one of ``jobs`` workers when
    None). The file is the same for every backend and worker count.

    An unfinished build (``.partial``, or an unfinished file at ``out``) is resumed,
    its skipped clips computed again; ``retry_skipped`` does that for a finished cache.
    Whatever writes holds the cache's exclusive lock (``out.lock``); a cache found up
    to date is checked under a shared one, beside trainings that read it.

    Raises
    ------
    UserError
        Every refusal: bad settings, unusable ``out``, a cache of other settings, a
        cache in use (:class:`~common.locks.LockHeld`), a full disk
        (:class:`~common.atomic.StorageError`), a split with no decodable clip.
    """
    check_build_args(features=features, augmenter=augmenter, versions=versions, sr=sr, duration=duration,
                     jobs=jobs, compression=compression)
    check_backend(backend, scheduler=scheduler)
    start = time.monotonic()
    out = check_out_path(out)
    lists = read_split_lists(data)
    check_labels(lists)
    settings = build_settings(lists, features=features, augmenter=augmenter, versions=versions,
                              seed=seed, sr=sr, duration=duration, compression=compression)
    plan = dict(settings=settings, overwrite=overwrite, retry_skipped=retry_skipped)
    # Looking needs only a shared lock, so a cache that is up to date stays usable by
    # the trainings reading it; a build in progress (exclusive) makes this one stop.
    with FileLock(out, shared=True, what="cache", hint="another build is writing it"):
        existing = plan_existing(out, **plan)
    if existing.action == "up_to_date":
        return _up_to_date(out, existing)
    with FileLock(out, what="cache", hint="trainings and evaluations hold it while they read the cache; "
                                         "or build into another --out meanwhile"):
        existing = plan_existing(out, **plan)  # it may have changed between the two locks
        if existing.action == "up_to_date":
            return _up_to_date(out, existing)
        _prepare_partial(out, existing, overwrite=overwrite)
        layout = plan_layout(lists, versions=versions)
        n_samples = round(duration * sr)
        shapes = {name: tuple(f.output_shape(n_samples)) for name, f in features.items()}
        # No more workers than clips (a local Dask cluster starts them all up front).
        jobs = min(jobs, sum(len(clips) for clips in lists.clips.values()))
        if backend != "loky" or jobs > 1:
            compile_librosa_kernels()
        # Only now start workers (a cluster takes seconds) and check they see the data, before
        # the .partial file is touched.
        with build_engine(backend, jobs=jobs, scheduler=scheduler) as engine:
            engine.check_data(lists)
            with CacheWriter(out, settings=settings, layout=layout, shapes=shapes,
                             compression=compression) as writer:
                tasks = plan_tasks(lists, writer.pending(), seed=seed)
                written = _write_results(
                    writer, engine.run(tasks, features=features, augmenter=augmenter, sr=sr, duration=duration),
                    lists=lists, total=len(tasks), progress=progress, start=start)
                skipped = writer.skipped()
                resumed = writer.resumed
                writer.finish()
    return BuildSummary(out=out, built_rows=written.built, augmented_rows=written.augmented, skipped=skipped,
                        seconds=time.monotonic() - start, resumed=resumed, workers=engine.workers,
                        first_result_s=written.first_s, last_result_s=written.last_s)


def check_build_args(*, features, augmenter, versions, sr, duration, jobs, compression) -> None:
    """Refuse arguments no build can use, before anything is read or written."""
    if isinstance(versions, bool) or not isinstance(versions, int) or versions < 0:
        raise UserError(f"--augment {versions}: the number of augmented versions must be an integer >= 0")
    if versions and augmenter is None:
        raise UserError("--augment > 0 needs an augmenter (pipeline.augment.build_augmenter)")
    if not features:
        raise UserError("no features asked for; pass at least one, e.g. --features mel")
    if compression not in COMPRESSIONS:
        raise UserError(f"--compression {compression}: choose one of {', '.join(COMPRESSIONS)}")
    check_build_numbers(sr=sr, duration=duration, jobs=jobs)


def _up_to_date(out: Path, existing: Existing) -> BuildSummary:
    return BuildSummary(out=out, built_rows=0, augmented_rows=0, skipped=[], seconds=0.0, up_to_date=True,
                        skipped_before=existing.skipped)


def _prepare_partial(out: Path, existing: Existing, *, overwrite: bool) -> None:
    """Under the exclusive lock: clear or set up ``.partial`` for what ``existing`` asks."""
    partial = partial_path(out)
    if overwrite and partial.exists():
        partial.unlink()
    if existing.action not in ("resume_final", "retry"):
        return
    if partial.exists():
        state = "is an unfinished build" if existing.action == "resume_final" else "is a finished cache"
        raise CacheError(f"{out} {state} and {partial} exists too, so it cannot be worked on in place: "
                         f"delete the one you do not want, or pass --overwrite to start again")
    # Renamed, not copied: the rows stay where they are, and a kill from here on leaves a
    # .partial that the same command resumes.
    os.replace(out, partial)


@dataclass
class Written:
    """What the writer loop did: rows built, of which augmented, and when results arrived."""
    built: int = 0
    augmented: int = 0
    first_s: float | None = None
    last_s: float | None = None


def _write_results(writer: CacheWriter, results, *, lists: SplitLists, total: int, progress: bool,
                   start: float) -> Written:
    """Hand each worker result to the writer, as it arrives; ``start`` is the build's
    ``time.monotonic()`` start, for the arrival times."""
    written = Written()
    try:
        for result in tqdm(results, total=total, unit="clip", desc=f"building {writer.out.name}",
                           disable=not progress, file=sys.stderr):
            written.last_s = time.monotonic() - start
            if written.first_s is None:
                written.first_s = written.last_s
            skipped = store_result(writer, result)
            if skipped is not None:
                tqdm.write(f"skipped {lists.clips[result.split][result.clip].path}: {skipped}", file=sys.stderr)
            else:
                written.built += len(result.rows)
                written.augmented += sum(row.version > 0 for row in result.rows)
    finally:
        close_results(results)
    return written


def store_result(writer: CacheWriter, result: ClipResult) -> str | None:
    """Hand one worker result to the writer as arrays; return why its clip was skipped, or None.

    A clip that failed (``result.error``) is marked skipped; the writer skips one whose
    rows hold non-finite values too, and says why.
    """
    if result.error is not None:
        writer.skip_clip(result.split, result.clip, result.error)
        return result.error
    return writer.write_rows(result.split, result.clip,
                             [(row.version, row.features, row.augment, row.flags) for row in result.rows])
