"""common/: the error family, locks that name their holder, atomic files, the CLI entry point."""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.atomic import StorageError, atomic_path, storage_error, write_json, write_text
from common.cli import run
from common.errors import UserError
from common.locks import FileLock, LockHeld, lock_path

ROOT = Path(__file__).resolve().parents[1]


def hold_lock_in_child(target, *, shared: bool):
    """A child process that takes the lock on ``target``, says so, and waits to be killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from common.locks import FileLock
        lock = FileLock({str(target)!r}, shared={shared}, what="cache").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError) and issubclass(LockHeld, UserError)
    assert issubclass(StorageError, UserError)


def test_exclusive_lock_refuses_a_second_process_and_names_it(tmp_path):
    target = tmp_path / "cache.h5"
    child = hold_lock_in_child(target, shared=False)
    try:
        with pytest.raises(LockHeld) as info:
            FileLock(target, what="cache").acquire()
        message = str(info.value)
        assert f"pid {child.pid}" in message and str(target) in message and "lock file" in message
        with pytest.raises(LockHeld):
            FileLock(target, shared=True, what="cache").acquire()
    finally:
        child.kill()
        child.wait()
    # The kernel dropped the dead holder's lock: no stale lock.
    with FileLock(target, what="cache") as lock:
        assert lock.held
    assert not lock_path(target).exists()


def test_shared_locks_coexist_but_keep_a_writer_out(tmp_path):
    target = tmp_path / "cache.h5"
    child = hold_lock_in_child(target, shared=True)
    try:
        with FileLock(target, shared=True):
            pass
        with pytest.raises(LockHeld, match="reading it"):
            FileLock(target).acquire()
    finally:
        child.kill()
        child.wait()


def test_folder_lock_lives_inside_the_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(run_dir, what="run folder"):
        assert (run_dir / ".lock").exists()
        info = json.loads((run_dir / ".lock").read_text())
        assert info["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"valid_acc": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"valid_acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_results_json_never_holds_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "results.json", {"valid_acc": float("nan")})
    assert not (tmp_path / "results.json").exists()


def test_full_disk_is_a_storage_error_naming_the_file():
    exc = storage_error(OSError(errno.ENOSPC, "No space left on device"), "runs/x/best.pt")
    assert isinstance(exc, StorageError)
    assert "runs/x/best.pt" in str(exc) and "no space left" in str(exc)
    assert storage_error(OSError(errno.ENOENT, "No such file"), "x") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_a_storage_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="permission denied"):
            write_text(folder / "x.txt", "x")
    finally:
        folder.chmod(0o700)


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--fail", default="")
    return p


def test_cli_prints_a_user_error_as_one_line(capsys):
    def main(args):
        raise UserError("--lr nan: must be a finite number")

    with pytest.raises(SystemExit) as info:
        run(main, _parser(), [])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: --lr nan: must be a finite number\n"


def test_cli_lets_bugs_keep_their_traceback():
    def main(args):
        raise ValueError("a bug, not the user's fault")

    with pytest.raises(ValueError, match="a bug"):
        run(main, _parser(), [])


def test_sigterm_runs_cleanup_and_prints_one_line(tmp_path):
    marker = tmp_path / "cleaned"
    code = textwrap.dedent(f"""
        import argparse, sys, time
        from common.cli import run
        def main(args):
            try:
                print("working", flush=True)
                time.sleep(60)
            finally:
                open({str(marker)!r}, "w").close()
        run(main, argparse.ArgumentParser(), [])
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "working"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM
    assert marker.exists()
    assert "Traceback" not in err and err.strip().splitlines() == ["stopped by SIGTERM; what was finished "
                                                                   "is kept; run the same command again "
                                                                   "to resume"]


def test_every_spelling_of_a_target_meets_at_one_lock(tmp_path, monkeypatch):
    target = tmp_path / "cache.h5"
    (tmp_path / "link.h5").symlink_to(target)
    monkeypatch.chdir(tmp_path)
    with FileLock("cache.h5"):
        for spelling in (target, tmp_path / "link.h5", "./cache.h5"):
            with pytest.raises(LockHeld):
                FileLock(spelling).acquire()


def test_atomic_files_get_the_mode_of_any_new_file(tmp_path):
    write_text(tmp_path / "results.json", "{}")
    (tmp_path / "plain.txt").write_text("{}")
    assert (tmp_path / "results.json").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
