"""Output folders and files: checked before any work, locked while a job writes them.

A run folder belongs to one run: a new run is refused where another one left its
outputs (unless asked to replace them), and the folder is locked (exclusive,
:class:`common.locks.FileLock`) while a job uses it. Never imports torch: report.py
checks its ``--out`` with :func:`check_output_file`.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common.atomic import STORAGE_ERRNOS, StorageError
from common.errors import UserError
from common.locks import FileLock
from training.errors import TrainError

# What a run leaves in its --out-dir. A new run there first removes these, so that
# nothing of an older run mixes with it.
RUN_OUTPUTS = ("best.pt", "last.pt", "args.json", "run.json", "metrics.jsonl", "results.json",
               "curves.png", "confusion_test.png", "confusion_valid.png")
# The outputs worth keeping: a folder without them holds at most the start of a run
# that never finished an epoch, which a new run may replace without asking.
RUN_RESULTS = ("last.pt", "best.pt", "metrics.jsonl", "results.json")


# -- any output ------------------------------------------------------------------------------------
def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a folder."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_output_folder(folder, *, flag: str, error=UserError, named=None) -> Path:
    """Make ``folder`` (if needed) and check that files can be written in it, before any work.

    Raises ``error`` (a :class:`UserError` class) naming ``flag`` and ``named`` (the
    path the user gave; default ``folder``) when ``folder`` is a file or lies under
    one, and :class:`~common.atomic.StorageError` when it cannot be made or written
    (read-only, no permission, full).
    """
    folder = Path(folder)
    named = folder if named is None else Path(named)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        where = "is a file" if blocker == named else f"lies under {blocker}, which is a file"
        raise error(f"{flag} {named} {where}; give a {'folder (it is made if missing)' if named == folder else 'path in a folder'}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = STORAGE_ERRNOS.get(exc.errno, exc.strerror or str(exc))
        raise StorageError(f"{flag} {named}: cannot write in {folder} ({why}); give a folder you can "
                           f"write to") from None
    return folder


def check_output_file(path, *, flag: str, error=UserError) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is made
    if missing); a folder at ``path``, or a file above it, is refused."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{flag} {path} is a folder; give a file name, e.g. {path / 'report.md'}")
    check_output_folder(path.parent, flag=flag, error=error, named=path)
    return path


# -- run folders -----------------------------------------------------------------------------------
def present_outputs(out_dir: Path, names=RUN_OUTPUTS) -> list[str]:
    """Which of ``names`` are in ``out_dir``."""
    return [name for name in names if (out_dir / name).exists()]


def describe_run(out_dir: Path) -> str:
    """A few words on the run in ``out_dir`` from its JSON files (never its checkpoints)."""
    try:
        saved = json.loads((out_dir / "args.json").read_text())
        what = f"{saved['model']} on {saved['feature']}"
    except (OSError, ValueError, KeyError, TypeError):
        what = "a run"
    try:
        epochs = sum(1 for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        epochs = 0
    state = "finished" if (out_dir / "results.json").exists() else f"{epochs} epoch(s) done"
    return f"{what}, {state}"


def refuse_existing_run(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a new run in a folder that holds a run's results, unless ``overwrite``."""
    found = present_outputs(out_dir, RUN_RESULTS)
    if found and not overwrite:
        resume = " continue it with --resume (and the flags it was trained with)," if "last.pt" in found else ""
        raise TrainError(f"--out-dir {out_dir} already holds a run ({describe_run(out_dir)}: "
                         f"{', '.join(found)});{resume} replace it with --overwrite (deletes its outputs "
                         f"first), or give another --out-dir")


def clear_outputs(out_dir: Path, names=RUN_OUTPUTS) -> None:
    """Delete ``names`` from ``out_dir``, and temporary files a killed writer left of them."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    remove_temporaries(out_dir, names)


def remove_temporaries(out_dir: Path, names=RUN_OUTPUTS) -> None:
    """Delete the temporary files of ``names`` that a killed writer (kill -9) left behind.

    Only while holding the folder's lock: nobody else is writing them then.
    """
    for name in names:
        for tmp in out_dir.glob(f".{name}.*.tmp"):  # common.atomic's temporary files
            tmp.unlink(missing_ok=True)


def lock_run_folder(out_dir: Path) -> FileLock:
    """The exclusive lock of the run folder ``out_dir`` (which exists), taken."""
    return FileLock(out_dir, what="run folder", hint="or give another --out-dir").acquire()


@contextmanager
def claim_run_folder(out_dir: Path, *, resume: bool, overwrite: bool):
    """Hold ``out_dir`` for one training: usable, locked, and holding no other run.

    Checked before any work: a folder that is a file, lies under a file or cannot be
    written; with ``resume``, a folder without last.pt; without, a folder that holds a
    run (unless ``overwrite``, whose deletion waits until the new run is ready to write).
    """
    if resume and not (out_dir / "last.pt").is_file():
        started = " (the run there stopped before its first epoch finished)" if (out_dir / "args.json").exists() else ""
        raise TrainError(f"--resume: checkpoint {out_dir / 'last.pt'} does not exist, so there is no run to "
                         f"resume in {out_dir}{started}; start the run without --resume")
    check_output_folder(out_dir, flag="--out-dir", error=TrainError)
    with lock_run_folder(out_dir):
        if not resume:
            refuse_existing_run(out_dir, overwrite=overwrite)
        remove_temporaries(out_dir)
        yield


@contextmanager
def claim_eval_folder(out_dir: Path, *, own: bool, overwrite: bool):
    """Hold ``out_dir`` for an evaluation: usable, locked, and holding no other results.

    The checkpoint's ``own`` folder may be re-evaluated (on its own cache, see
    ``training.evaluation.eval_out_dir``); any other folder that holds results or a run
    needs ``overwrite``, which clears them first.
    """
    check_output_folder(out_dir, flag="--out-dir", error=TrainError)
    with lock_run_folder(out_dir):
        if not own:
            found = present_outputs(out_dir, RUN_RESULTS)
            if found and not overwrite:
                raise TrainError(f"--eval-only: --out-dir {out_dir} already holds results ({', '.join(found)}); "
                                 f"replace them with --overwrite, or give another --out-dir")
            if found:
                clear_outputs(out_dir)
        yield
