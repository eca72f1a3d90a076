"""Where a cache build's clips are computed: joblib's local processes, or a Dask cluster.

:func:`build_engine` gives an :class:`Engine` for a backend of :data:`BACKENDS`
(``"loky"``: processes on this machine; ``"dask"``: the workers of a Dask cluster,
through joblib's Dask backend), and :meth:`Engine.run` yields the
:class:`~pipeline.clip.ClipResult` of every :class:`~pipeline.clip.ClipTask`, in any
order. Whatever the backend, workers run single-threaded, so a clip's arrays do not
depend on where it was computed.

Dask workers import what they run from here (:func:`process_clip_isolated`,
:func:`unreadable_files`, ...): they must have this repository on their path.

>>> with build_engine("loky", jobs=2) as engine:  # doctest: +SKIP
...     results = list(engine.run(tasks, features=features, augmenter=None, sr=22050, duration=30.0))
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import joblib
from threadpoolctl import threadpool_limits

from common.errors import UserError
from pipeline.clip import ClipResult, ClipTask, process_clip
from pipeline.splits import SplitLists

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


class BackendError(UserError):
    """The asked-for backend cannot run: unknown, not installed, unreachable or blind to the data."""


class DataNotVisible(BackendError):
    """A Dask worker cannot read the data folder at the path the client sees it at."""


class WorkersLost(UserError):
    """Dask workers died while computing clips; the finished rows are kept for a resume."""



def process_clip_single_threaded(task: ClipTask, **work) -> ClipResult:
    """:func:`process_clip` with BLAS/OpenMP pools held to one thread.

    A threaded matrix product sums in another order, and the file must not depend on
    where a clip was computed.
    """
    with threadpool_limits(limits=1):
        return process_clip(task, **work)


def process_clip_isolated(task: ClipTask, *, run_id: str, **work) -> ClipResult:
    """Run on a Dask worker: :func:`process_clip` in a single-threaded child process.

    The augmenter seeds and borrows the global ``random`` and ``numpy.random``
    generators (pipeline.augment), and a Dask worker's other threads draw from them
    too (its event loop samples ``random`` to size objects; sibling task threads
    augment), which made augmented rows differ from the local build. A child process
    per worker thread has no other threads.

    ``run_id`` names the build: once it is stopped (:func:`stop_worker_children`), a
    task of it that was already queued on this worker must not start a new pool, which
    the closing cluster would then kill mid-task (and loky would warn about its locks).
    """
    if run_id in _stopped_runs:
        raise RuntimeError(f"build {run_id} was stopped; its remaining clips are not computed")
    return _worker_children().submit(process_clip_single_threaded, task, **work).result()


_children = None  # on a Dask worker: its loky executor, once a clip has run there
_stopped_runs: set[str] = set()  # on a Dask worker: the builds that ended (their run_id)


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


def stop_worker_children(run_id: str) -> None:
    """Run on a Dask worker at the end of build ``run_id``: stop its child processes now.

    Otherwise they hold the worker up for their idle timeout, and a closing local
    cluster has to kill it.
    """
    global _children
    _stopped_runs.add(run_id)
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


def run_tasks(tasks: list[ClipTask], *, jobs: int, features, augmenter, sr, duration, client=None,
              run_id: str = ""):
    """Yield worker results as they finish (any order), keeping memory bounded.

    ``client`` (a ``distributed.Client``) runs the same joblib call on its Dask cluster
    instead of local processes; the cluster's worker threads then set the parallelism
    and ``jobs`` is not used, and ``run_id`` names the build on its workers.
    """
    work = dict(features=features, augmenter=augmenter, sr=sr, duration=duration)
    if client is not None:
        yield from _run_on_dask(tasks, client=client, work=dict(work, run_id=run_id))
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
    # Names this build's tasks on Dask workers, which may serve several builds in turn.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def check_data(self, lists: SplitLists) -> None:
        """Raise :class:`DataNotVisible` unless every worker can read every listed file."""
        if self.client is not None:
            sizes = {str(clip.path): clip.path.stat().st_size for clips in lists.clips.values() for clip in clips}
            check_workers_see(self.client, sizes, root=lists.root)

    def run(self, tasks: list[ClipTask], **work):
        self.ran = True
        # A worker per clip at most; on a Dask cluster its worker threads decide.
        self.workers = 0 if self.client is not None else max(1, min(self.jobs, len(tasks)))
        return run_tasks(tasks, jobs=self.jobs, client=self.client, run_id=self.run_id, **work)


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
                    _stop_children(client, run_id=engine.run_id)
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


def _stop_children(client, *, run_id: str) -> None:
    try:
        client.run(stop_worker_children, run_id)
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



def close_results(results) -> None:
    """Close a results generator now, which stops its workers (loky kills them), rather
    than whenever it is collected; without joblib's warning about cancelled tasks,
    which an interrupted build expects."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tasks .*(used|cancelled)", category=UserWarning)
        results.close()
