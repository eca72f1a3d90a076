"""Building a cache: plan the rows, run the workers, feed the single writer.

The workers are joblib's local processes (backend ``loky``) or the workers of a Dask
cluster (backend ``dask``, through joblib's Dask backend); either way the writer stays
in this process and the file's content is the same.

>>> from pipeline.features import build_feature
>>> build(data="gtzan", out="cache.h5", features={"mel": build_feature("mel")})  # doctest: +SKIP
>>> build(data="/shared/gtzan", out="cache.h5", features={"mel": build_feature("mel")},
...       backend="dask", scheduler="tcp://head:8786")  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import joblib
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from cache.format import (COMPRESSIONS, FORMAT_VERSION, STATUS_SKIPPED, CacheError, describe_feature, fingerprint,
                          read_root_attrs)
from cache.writer import PARTIAL_SUFFIX, CacheWriter, SettingsMismatch, SplitRows, describe_differences, \
    partial_path
from common.errors import UserError
from common.locks import FileLock
from pipeline.augment import Augmenter
from pipeline.clip import ClipResult, ClipTask, process_clip
from pipeline.features import Feature
from pipeline.splits import LIST_FILES, SplitLists, read_split_lists

# Decoding, resampling and STFTs each want every core; with one clip per worker that
# oversubscribes two cores badly (see shared/NOTES.md), so workers run single-threaded.
WORKER_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

REPO_ROOT = Path(__file__).resolve().parents[1]
DIST_REQUIREMENTS = "requirements-dist.txt"
DIST_DOC = "README.md, section \"Beyond one machine\""
# How long a Dask scheduler may take to answer, and to have at least one worker.
CONNECT_TIMEOUT_S = 30
WAIT_FOR_WORKERS_S = 60
# A Dask worker's child processes exit after this long without a clip.
CHILD_IDLE_S = 60
# Files a worker cannot read are listed up to this many in the error message.
MAX_LISTED_FILES = 3
# Beyond these a value is a typo (or would fill the disk), not a setting.
MAX_DURATION_S = 3600.0
SR_RANGE = (1000, 384_000)
MAX_JOBS = 1024
RETRY_FLAG = "--retry-skipped"


class BackendError(UserError):
    """The asked-for backend cannot run: unknown, not installed, unreachable or blind to the data."""


class DataNotVisible(BackendError):
    """A Dask worker cannot read the data folder at the path the client sees it at."""


class WorkersLost(UserError):
    """Dask workers died while computing clips; the finished rows are kept for a resume."""


@dataclass
class BuildSummary:
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


def process_clip_single_threaded(task: ClipTask, **work) -> ClipResult:
    """:func:`process_clip` with BLAS/OpenMP pools held to one thread.

    A threaded matrix product sums in another order, and the file must not depend on
    where a clip was computed.
    """
    with threadpool_limits(limits=1):
        return process_clip(task, **work)


def process_clip_isolated(task: ClipTask, **work) -> ClipResult:
    """Run on a Dask worker: :func:`process_clip` in a single-threaded child process.

    The augmenter seeds and borrows the global ``random`` and ``numpy.random``
    generators (pipeline.augment), and a Dask worker's other threads draw from them
    too (its event loop samples ``random`` to size objects; sibling task threads
    augment), which made augmented rows differ from the local build. A child process
    per worker thread has no other threads.
    """
    return _worker_children().submit(process_clip_single_threaded, task, **work).result()


_children = None  # on a Dask worker: its loky executor, once a clip has run there


def _worker_children():
    """This worker's pool of one child process per task thread (started once, reused)."""
    global _children
    import multiprocessing

    from distributed import get_worker
    from joblib.externals.loky import get_reusable_executor

    # A nanny starts its worker as a daemonic process, and multiprocessing refuses
    # children to those, lest they be orphaned. loky's children exit on their own
    # once idle (``timeout``), so this worker may have them.
    multiprocessing.current_process()._config["daemon"] = False
    _children = get_reusable_executor(max_workers=get_worker().state.nthreads, timeout=CHILD_IDLE_S,
                                      env={name: "1" for name in WORKER_THREAD_ENV},
                                      initializer=_exit_with_parent)
    return _children


def _exit_with_parent() -> None:
    """In a worker process (a Dask worker's child, or a local loky worker): exit as soon
    as the process that started it is gone.

    A killed process cannot stop its workers, and a worker blocked on handing back its
    last result would otherwise wait forever. The watching thread draws no random
    numbers, so the worker still has no thread that disturbs the augmenter.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_worker_children() -> None:
    """Run on a Dask worker at the end of a build: stop its child processes now.

    Otherwise they hold the worker up for their idle timeout, and a closing local
    cluster has to kill it.
    """
    global _children
    if _children is not None:
        _children.shutdown(wait=True)
        _children = None


# librosa modules whose @guvectorize kernels numba compiles, with cache=True, on import.
NUMBA_GUFUNC_MODULES = ("librosa.core.audio", "librosa.core.pitch", "librosa.util.utils")


def compile_librosa_kernels() -> None:
    """Import librosa's numba-compiled modules in this process, before workers start.

    On a fresh install, workers that import them at the same time each compile and
    cache the kernels, and numba can then keep one worker's half of a kernel's cache
    with the other's half: every later process that loads it crashes with a segfault
    (numba issue 10128; seen here in a fresh venv). Compiled once here, the workers
    only read the cache.
    """
    import importlib

    for name in NUMBA_GUFUNC_MODULES:
        importlib.import_module(name)


def run_tasks(tasks: list[ClipTask], *, jobs: int, features, augmenter, sr, duration, client=None):
    """Yield worker results as they finish (any order), keeping memory bounded.

    ``client`` (a ``distributed.Client``) runs the same joblib call on its Dask cluster
    instead of local processes; the cluster's worker threads then set the parallelism
    and ``jobs`` is not used.
    """
    work = dict(features=features, augmenter=augmenter, sr=sr, duration=duration)
    if client is not None:
        yield from _run_on_dask(tasks, client=client, work=work)
        return
    jobs = max(1, min(jobs, len(tasks)))  # a worker per clip at most
    if jobs == 1:
        # Single-threaded BLAS here too: a threaded matrix product sums in another order,
        # and the file must not depend on the worker count.
        with threadpool_limits(limits=1):
            for task in tasks:
                yield process_clip(task, **work)
        return
    for name in WORKER_THREAD_ENV:
        os.environ.setdefault(name, "1")  # inherited by workers that start from now on
    # Workers exit with this process even when it is killed outright (kill -9, the OOM
    # killer), rather than idling for loky's five minutes; Ctrl-C and SIGTERM stop them
    # at once (close_results).
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1, initializer=_exit_with_parent):
        parallel = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
        yield from parallel(joblib.delayed(process_clip)(task, **work) for task in tasks)


def _run_on_dask(tasks: list[ClipTask], *, client, work: dict):
    from distributed import KilledWorker

    with joblib.parallel_config(backend="dask", client=client):
        # n_jobs=-1: every worker thread of the cluster, however many there are.
        parallel = joblib.Parallel(n_jobs=-1, return_as="generator_unordered", pre_dispatch="2*n_jobs")
        try:
            yield from parallel(joblib.delayed(process_clip_isolated)(task, **work) for task in tasks)
        except (KilledWorker, CancelledError, BrokenProcessPool) as exc:
            # The scheduler already retried the clip on other workers (distributed's
            # allowed-failures); what was written so far stays in the .partial file.
            raise WorkersLost(f"the Dask cluster lost the workers computing a clip ({exc}); the rows "
                              f"finished so far are kept: run the same command again to resume") from exc


# -- where the workers run ---------------------------------------------------------------------
@dataclass
class Engine:
    """Where :func:`process_clip` runs: local joblib processes, or a Dask cluster's workers.

    ``client`` is the ``distributed.Client`` of the dask backend, None for loky.
    """
    name: str
    jobs: int
    client: object | None = None
    ran: bool = False
    workers: int = 0  # local processes of the last run (0 on Dask)

    def check_data(self, lists: SplitLists) -> None:
        """Raise :class:`DataNotVisible` unless every worker can read every listed file."""
        if self.client is not None:
            sizes = {str(clip.path): clip.path.stat().st_size for clips in lists.clips.values() for clip in clips}
            check_workers_see(self.client, sizes, root=lists.root)

    def run(self, tasks: list[ClipTask], **work):
        self.ran = True
        # A worker per clip at most; on a Dask cluster its worker threads decide.
        self.workers = 0 if self.client is not None else max(1, min(self.jobs, len(tasks)))
        return run_tasks(tasks, jobs=self.jobs, client=self.client, **work)


def import_distributed():
    """The ``distributed`` module, or a :class:`BackendError` that says how to install it."""
    try:
        import dask  # noqa: F401  (distributed needs it; name both when either is missing)
        import distributed
    except ImportError as exc:
        raise BackendError(f"--backend dask needs the optional packages dask and distributed "
                           f"({exc}); install them with `pip install -r {DIST_REQUIREMENTS}`, "
                           f"or use --backend loky") from exc
    return distributed


@contextmanager
def local_engine(*, jobs: int, scheduler: str | None = None):
    """joblib's loky processes on this machine (``scheduler`` must be None)."""
    yield Engine(name="loky", jobs=jobs)


@contextmanager
def dask_engine(*, jobs: int, scheduler: str | None = None):
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``jobs`` workers."""
    distributed = import_distributed()
    cluster = None
    if scheduler is None:
        # One single-threaded worker process per job, as the loky backend has.
        # Its workers' warnings are silenced: what matters reaches the user as the build's own
        # errors (WorkersLost), and a stopped build would otherwise end in lines about cancelled tasks.
        cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           env={name: "1" for name in WORKER_THREAD_ENV})
    try:
        with _connect(distributed, cluster if cluster is not None else scheduler) as client:
            engine = Engine(name="dask", jobs=jobs, client=client)
            try:
                yield engine
            finally:
                if engine.ran:
                    _stop_children(client)
    finally:
        if cluster is not None:
            cluster.close()


@contextmanager
def _connect(distributed, target):
    where = target if isinstance(target, str) else "the local cluster"
    try:
        client = distributed.Client(target, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"cannot reach the Dask scheduler at {where} ({exc}); start one with "
                           f"`dask scheduler` and workers with `dask worker {where}` (see {DIST_DOC}), "
                           f"or leave out --scheduler to start a local cluster of --jobs workers") from exc
    try:
        try:
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
        except (OSError, TimeoutError) as exc:
            raise BackendError(f"the Dask scheduler at {where} has no workers after {WAIT_FOR_WORKERS_S} s; "
                               f"start some with `dask worker {where}` (see {DIST_DOC})") from exc
        yield client
    finally:
        client.close()


def _stop_children(client) -> None:
    try:
        client.run(stop_worker_children)
    except Exception as exc:  # a lost worker must not hide the build's own error
        print(f"warning: could not stop the Dask workers' child processes ({exc}); they exit "
              f"after {CHILD_IDLE_S} s idle", file=sys.stderr)


def unreadable_files(expected: list[tuple[str, int]]) -> list[str]:
    """Run on a worker: each file it cannot read, or sees with another size, and why.

    ``expected`` holds ``(path, size in bytes as the client sees it)`` pairs.
    """
    problems = []
    for path, size in expected:
        try:
            found = os.stat(path).st_size
        except OSError as exc:
            problems.append(f"{path} ({exc.strerror})")
            continue
        if not os.access(path, os.R_OK):
            problems.append(f"{path} (not readable by the worker's user)")
        elif found != size:
            problems.append(f"{path} ({found} bytes there, {size} here: another copy of the data)")
    return problems


def project_importable() -> bool:
    """Run on the scheduler and on workers: unpickling this function imports the project."""
    return True


def check_cluster_runs_project(client) -> None:
    """Raise :class:`BackendError` unless the scheduler and every worker can import this project.

    The scheduler unpickles each task, and a scheduler that cannot import the project
    leaves the build waiting forever, so this is checked before any work is sent.
    """
    for where, run in (("scheduler", client.run_on_scheduler), ("workers", client.run)):
        try:
            run(project_importable)
        except Exception as exc:
            raise BackendError(f"the Dask {where} cannot run this project's code ({type(exc).__name__}: "
                               f"{exc}); start the scheduler and the workers from the same environment "
                               f"with the repository on their path, e.g. `PYTHONPATH={REPO_ROOT} dask "
                               f"scheduler` and `PYTHONPATH={REPO_ROOT} dask worker ADDRESS` "
                               f"(see {DIST_DOC})") from exc


def check_workers_see(client, sizes: dict[str, int], *, root) -> None:
    """Raise :class:`DataNotVisible` naming each worker that cannot read the files.

    ``sizes`` maps each file's path to its size in bytes as this process sees it.
    Workers decode the audio themselves, so the data folder ``root`` must be at the
    same path on every worker (a shared file system). The check runs on the workers
    connected now; one that joins later is not checked.
    """
    check_cluster_runs_project(client)
    reports = client.run(unreadable_files, sorted(sizes.items()))
    blind = {worker: problems for worker, problems in sorted(reports.items()) if problems}
    if not blind:
        return
    lines = [f"{worker}: cannot read {len(problems)} of {len(sizes)} files, e.g. "
             + ", ".join(problems[:MAX_LISTED_FILES]) for worker, problems in blind.items()]
    raise DataNotVisible(f"{len(blind)} of {len(reports)} Dask workers cannot read the data in {root}:\n  "
                         + "\n  ".join(lines)
                         + f"\nThe data folder must be at the same path on every worker (a shared file "
                           f"system such as NFS, or an identical copy at that path); see {DIST_DOC}.")


BACKENDS = {
    "loky": local_engine,  # processes on this machine
    "dask": dask_engine,  # a Dask cluster, or a local one of --jobs workers
}


def check_backend(name: str, *, scheduler: str | None = None) -> None:
    """Raise :class:`BackendError` for an unknown backend, a scheduler without dask, or a
    dask backend whose packages are missing; cheap, so a build calls it before any work."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if scheduler is not None and name != "dask":
        raise BackendError(f"--scheduler {scheduler} needs --backend dask; the {name} backend only runs "
                           f"on this machine")
    if name == "dask":
        import_distributed()


def build_engine(name: str, *, jobs: int, scheduler: str | None = None):
    """Context manager yielding the :class:`Engine` of backend ``name``.

    >>> with build_engine("loky", jobs=2) as engine:
    ...     engine.name
    'loky'
    """
    check_backend(name, scheduler=scheduler)
    return BACKENDS[name](jobs=jobs, scheduler=scheduler)


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
                built, augmented = _write_results(
                    writer, engine.run(tasks, features=features, augmenter=augmenter, sr=sr, duration=duration),
                    lists=lists, total=len(tasks), progress=progress)
                skipped = writer.skipped()
                resumed = writer.resumed
                writer.finish()
    return BuildSummary(out=out, built_rows=built, augmented_rows=augmented, skipped=skipped,
                        seconds=time.monotonic() - start, resumed=resumed, workers=engine.workers)


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


def _write_results(writer: CacheWriter, results, *, lists: SplitLists, total: int,
                   progress: bool) -> tuple[int, int]:
    """Feed the workers' results to the writer; return (rows built, augmented rows)."""
    built = augmented = 0
    try:
        for result in tqdm(results, total=total, unit="clip", desc=f"building {writer.out.name}",
                           disable=not progress, file=sys.stderr):
            writer.write_clip(result)
            if result.error is not None:
                tqdm.write(f"skipped {lists.clips[result.split][result.clip].path}: {result.error}",
                           file=sys.stderr)
            else:
                built += len(result.rows)
                augmented += sum(row.version > 0 for row in result.rows)
    finally:
        close_results(results)
    return built, augmented


def close_results(results) -> None:
    """Close a results generator now, which stops its workers (loky kills them), rather
    than whenever it is collected; without joblib's warning about cancelled tasks,
    which an interrupted build expects."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tasks .*(used|cancelled)", category=UserWarning)
        results.close()
