"""Files that appear whole or not at all, and write errors that say what went wrong.

Every artefact a job leaves (checkpoints, results, logs, plots, reports) is written to a
temporary file in the same folder, flushed to disk and renamed over the target, so a
kill or a full disk never leaves half a file where a reader expects a whole one.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "results.json"
>>> write_json(target, {"valid_acc": 0.75})
>>> target.read_text()
'{\\n  "valid_acc": 0.75\\n}\\n'
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserError

# errno values that mean "the storage cannot take this write", not a bug.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied",
                  errno.EFBIG: "the file is too large for the file system"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


class StorageError(UserError):
    """A write failed because of the storage (full, read-only, no permission)."""


def storage_error(exc: OSError, path, *, doing: str = "writing") -> StorageError | None:
    """A :class:`StorageError` naming ``path`` for an ``OSError`` the storage caused, else None.

    >>> storage_error(OSError(28, "No space left on device"), "runs/x/best.pt").args[0][:56]
    'cannot finish writing runs/x/best.pt: no space left on t'
    """
    why = STORAGE_ERRNOS.get(getattr(exc, "errno", None))
    if why is None:
        return None
    hint = ("free some space there, or write to another folder" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "write to a folder you can write to")
    return StorageError(f"cannot finish {doing} {path}: {why} ({exc.strerror or exc}); {hint}")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    For writers that take a file name (``torch.save``, ``savefig``). The temporary
    file is removed if the block raises; the target is then left as it was. A full disk
    or unwritable folder becomes a :class:`StorageError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) or exc
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); an artefact gets the mode any new file would.
        os.chmod(tmp, _NEW_FILE_MODE)
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(exc, path) or exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value) -> None:
    """Replace ``path`` with ``value`` as indented JSON, atomically.

    Non-finite floats are refused (``ValueError``): JSON has no NaN, and a results file
    that says NaN hides a failed run.
    """
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder) -> None:
    # The rename is durable once the folder's entry is; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
