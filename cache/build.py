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
import os
import sys
import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
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
from pipeline.features import Feature, compute_features
from pipeline.splits import SplitLists, read_split_lists

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


class BackendError(ValueError):
    """The asked-for backend cannot run: unknown, not installed, unreachable or blind to the data."""


class DataNotVisible(BackendError):
    """A Dask worker cannot read the data folder at the path the client sees it at."""


class WorkersLost(RuntimeError):
    """Dask workers died while computing clips; the finished rows are kept for a resume."""


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
            features=compute_features(features, samples),
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
    """In a worker's child process: exit as soon as the worker is gone.

    A killed worker cannot stop its children, and a child blocked on handing back its
    last result would otherwise wait forever. The watching thread draws no random
    numbers, so the child still has no thread that disturbs the augmenter.
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
    if jobs == 1:
        # Single-threaded BLAS here too: a threaded matrix product sums in another order,
        # and the file must not depend on the worker count.
        with threadpool_limits(limits=1):
            for task in tasks:
                yield process_clip(task, **work)
        return
    for name in WORKER_THREAD_ENV:
        os.environ.setdefault(name, "1")  # inherited by workers that start from now on
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
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

    def check_data(self, lists: SplitLists) -> None:
        """Raise :class:`DataNotVisible` unless every worker can read every listed file."""
        if self.client is not None:
            sizes = {str(clip.path): clip.path.stat().st_size for clips in lists.clips.values() for clip in clips}
            check_workers_see(self.client, sizes, root=lists.root)

    def run(self, tasks: list[ClipTask], **work):
        self.ran = True
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
        cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                           dashboard_address=None,
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
          jobs: int = 1, compression: str = "none", overwrite: bool = False,
          progress: bool = True, backend: str = "loky", scheduler: str | None = None) -> BuildSummary:
    """Build (or resume, or confirm) the cache ``out`` from the GTZAN-style folder ``data``.

    ``backend`` is where the clips are computed (see :data:`BACKENDS`): ``"loky"``, or
    ``"dask"`` on the cluster at ``scheduler`` (a local one of ``jobs`` workers when
    None). The file is the same for every backend and worker count.
    """
    if versions < 0:
        raise ValueError(f"augment={versions}: the number of augmented versions must be >= 0")
    if versions and augmenter is None:
        raise ValueError("augment > 0 needs an augmenter (pipeline.augment.build_augmenter)")
    if not features:
        raise ValueError("no features asked for; pass at least one, e.g. --features mel")
    check_backend(backend, scheduler=scheduler)
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
    if backend != "loky" or jobs > 1:
        compile_librosa_kernels()
    # Only now start workers (a cluster takes seconds) and check they see the data, before
    # the .partial file is touched.
    with build_engine(backend, jobs=jobs, scheduler=scheduler) as engine:
        engine.check_data(lists)
        with CacheWriter(out, settings=settings, layout=layout, shapes=shapes,
                         compression=compression) as writer:
            tasks = plan_tasks(lists, writer.pending(), seed=seed)
            results = engine.run(tasks, features=features, augmenter=augmenter, sr=sr, duration=duration)
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
