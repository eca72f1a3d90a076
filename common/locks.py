"""Advisory locks on files and folders that say who holds them.

A job that writes a cache or a run folder holds an **exclusive** lock on it; a job that
only reads a cache (training) holds a **shared** one. A second job that cannot get its
lock stops at once, before it touches anything, with a message naming the process that
holds it.

The lock is ``flock`` on a small side file, ``<target>.lock`` beside a file or
``<folder>/.lock`` inside a folder, never on the target itself: HDF5 takes its own
``flock`` on the files it opens. The kernel drops a lock when its process dies, so a
``kill -9`` leaves no stale lock behind. A holder of an exclusive lock writes its pid,
host, start time and command into the side file, which is removed when the last holder
lets go.

Locks are advisory (only this project's jobs honour them) and, on network file
systems, only as good as the file system's locking.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "cache.h5"
>>> with FileLock(target, what="cache"):
...     try:
...         FileLock(target, what="cache").acquire()
...     except LockHeld as exc:
...         print(str(exc).split(": ")[1][:3])
pid
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from common.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; jobs are not protected there
    fcntl = None


class LockHeld(UserError):
    """Another process holds the lock; nothing was touched."""


def lock_path(target) -> Path:
    """Where the lock of ``target`` lives: inside an existing folder, else beside it.

    >>> lock_path("cache.h5").name
    'cache.h5.lock'
    """
    # Resolved, so that every spelling of one target (relative, absolute, through a
    # symbolic link) meets at the same lock file.
    target = Path(target).resolve()
    return target / ".lock" if target.is_dir() else target.with_name(target.name + ".lock")


def describe_holder(path: Path) -> str:
    """What the lock file at ``path`` says of its holder, as words."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process is reading it"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command')})")


class FileLock:
    """An exclusive or shared lock on ``target`` (a file or folder path); a context manager.

    Parameters
    ----------
    target : path
        The file or folder to protect. A folder must exist (its lock lives inside it);
        a file need not.
    shared : bool
        Shared (many readers) instead of exclusive (one writer, no readers).
    what : str
        How the message names the target, e.g. ``"cache"`` or ``"run folder"``.
    hint : str
        What the user can do instead, appended to the refusal.

    Raises
    ------
    LockHeld
        From :meth:`acquire`, when another process holds a conflicting lock.
    """

    def __init__(self, target, *, shared: bool = False, what: str = "file", hint: str = ""):
        self.target = Path(target)
        self.shared = shared
        self.what = what
        self.hint = hint
        self._fd: int | None = None
        self.path: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        if fcntl is None:  # pragma: no cover
            return self
        self.path = lock_path(self.target)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Another holder may remove the file between our open and our flock: retry on a
        # fresh file until the one we locked is the one at the path.
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = describe_holder(self.path)
                raise LockHeld(f"{self.what} {self.target} is in use: {holder}; lock file {self.path}. "
                               f"Wait for that job to finish or stop it"
                               + (f"; {self.hint}" if self.hint else "")) from None
            if self._same_file(fd):
                break
            os.close(fd)
        else:  # pragma: no cover - only under a storm of lock churn
            raise LockHeld(f"cannot lock {self.target}: its lock file {self.path} keeps changing")
        self._fd = fd
        if not self.shared:
            self._write_holder()
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?"}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Let go; the last holder removes the lock file."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Only a sole holder may remove the file: others may still be reading under it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._same_file(fd):
                os.unlink(self.path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __getstate__(self):
        raise TypeError("a FileLock belongs to the process that took it and cannot be pickled")

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return f"FileLock({str(self.target)!r}, {'shared' if self.shared else 'exclusive'}, {state})"
