"""The cache build under hostile and unlucky use: full disks, two builds at once, kills,
damaged or unfinished files, degenerate lists and absurd flags.

Written through public entry points (``build_cache.main``, subprocesses, ``FeatureCache``,
``cache.inspect.summarize``) so that each test also runs against older code. Tests that
need a small file system mount a tmpfs and are skipped unless the suite runs as root (CI
does).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import build_cache
import builder.cache_build
import builder.engines
from cache.inspect import summarize
from cache.reader import CacheError, FeatureCache
from cache.writer import SettingsMismatch
from pipeline.splits import LIST_FILES, SplitLists, read_split_lists
from synthetic import generate_dataset
from tests.conftest import TINY_SECONDS, build_args
from tests.test_build_cache import assert_same_content

REPO = Path(__file__).resolve().parents[1]
SECONDS = 2.0
FLAGS = ("--duration", str(SECONDS), "--features", "mel", "--augment", "1")
# 8 genres x 4 clips: 16 train (each with an augmented copy), 8 valid, 8 test.
N_CLIPS = 32


def args(data, out, *extra):
    return build_args(data, out, *FLAGS, *extra)


def partial_of(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_data")
    generate_dataset(root, clips_per_genre=4, seconds=SECONDS, seed=5)
    return root


@pytest.fixture
def data(small_data, tmp_path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(small_data, tmp_path / "data"))


@pytest.fixture(scope="module")
def reference(small_data, tmp_path_factory) -> Path:
    """The file an uninterrupted build of these settings writes."""
    out = tmp_path_factory.mktemp("faults_reference") / "reference.h5"
    build_cache.main(args(small_data, out))
    return out


def interrupted_build(monkeypatch, data, out, *extra, after: int) -> Path:
    """Run a build that Ctrl-C stops after ``after`` clips; return its .partial."""
    original = builder.cache_build.store_result
    written = []

    def stop_after(writer, result):
        if len(written) == after:
            raise KeyboardInterrupt
        written.append(result.clip)
        return original(writer, result)

    monkeypatch.setattr(builder.cache_build, "store_result", stop_after)
    with pytest.raises(KeyboardInterrupt):
        build_cache.main(args(data, out, *extra))
    monkeypatch.setattr(builder.cache_build, "store_result", original)
    assert partial_of(out).exists() and not out.exists()
    return partial_of(out)


def done_rows(path: Path) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return sum(int((f[split]["status"][...] == 1).sum()) for split in ("train", "valid", "test"))


def train_files(data: Path) -> list[Path]:
    return [clip.path for clip in read_split_lists(data).clips["train"]]


# -- small file systems ----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)`` -> the folder of a new tmpfs of that size (unmounted afterwards)."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path, *, leave: int) -> Path:
    """Write a file into ``folder`` until at most ``leave`` bytes stay free."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            stat = os.statvfs(folder)
            free = stat.f_bavail * stat.f_frsize
            if free <= leave:
                break
            os.write(fd, b"\0" * max(4096, min(2 ** 20, free - leave)))
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


# -- 1. a full disk ---------------------------------------------------------------------------
def test_disk_too_small_is_refused_before_anything_is_written(small_disk, small_data):
    disk = small_disk("1m")
    with pytest.raises(ValueError, match=rf"needs \d+\.\d MB, \d+\.\d MB free in {re.escape(str(disk))}"):
        build_cache.main(args(small_data, disk / "c.h5"))
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("how", ["below-the-reserve", "to-the-last-byte"])
def test_disk_filling_up_mid_build_stops_with_a_message_and_resumes(small_disk, small_data, reference,
                                                                   monkeypatch, how):
    disk = small_disk("8m")
    out = disk / "c.h5"
    if how == "to-the-last-byte":
        # Without the writer's reserve the write itself meets the full disk.
        monkeypatch.setattr("cache.writer.RESERVE_BYTES", 0, raising=False)
    original, written = builder.cache_build.store_result, []

    def fill_after_five(writer, result):
        if len(written) == 5:
            fill(disk, leave=0 if how == "to-the-last-byte" else 64 * 1024)
        written.append(result.clip)
        return original(writer, result)

    monkeypatch.setattr(builder.cache_build, "store_result", fill_after_five)
    with pytest.raises(ValueError, match=r"(is full|no space left)") as caught:
        build_cache.main(args(small_data, out))
    assert str(disk) in str(caught.value) and "run the same command again" in str(caught.value)
    assert partial_of(out).exists() and not out.exists()

    (disk / "filler").unlink()
    monkeypatch.setattr(builder.cache_build, "store_result", original)
    summary = build_cache.main(args(small_data, out))
    assert summary.resumed
    assert_same_content(reference, out)


def test_a_write_the_disk_refuses_is_named_and_the_build_resumes(small_data, reference, tmp_path,
                                                                monkeypatch):
    """What HDF5 raises for ENOSPC (a RuntimeError with the errno in its text), simulated."""
    out = tmp_path / "c.h5"
    original, calls = h5py.File.flush, []

    def refuse_the_twelfth(self):
        calls.append(1)
        if len(calls) == 12:
            raise RuntimeError("Unable to synchronously flush file (file write failed: time = now, filename = "
                               f"'{partial_of(out)}', file descriptor = 3, errno = 28, error message = 'No "
                               "space left on device', buf = 0x1, total write size = 3512)")
        original(self)

    monkeypatch.setattr(h5py.File, "flush", refuse_the_twelfth)
    with pytest.raises(ValueError, match="no space left on the device") as caught:
        build_cache.main(args(small_data, out))
    assert str(partial_of(out)) in str(caught.value) and f"in {tmp_path}" in str(caught.value)
    monkeypatch.setattr(h5py.File, "flush", original)
    assert build_cache.main(args(small_data, out)).resumed
    assert_same_content(reference, out)


def test_done_row_whose_bytes_are_wrong_is_computed_again(small_data, reference, tmp_path, monkeypatch,
                                                          capsys):
    out = tmp_path / "c.h5"
    partial = interrupted_build(monkeypatch, small_data, out, after=6)
    with h5py.File(partial, "r+") as f:
        done = np.flatnonzero(f["train/status"][...] == 1)
        row = int(done[len(done) // 2])
        mel = f["train/features/mel"]
        damaged = mel[row]
        damaged[:, damaged.shape[1] // 2:] = 0  # marked done, partly zeros
        mel[row] = damaged
    build_cache.main(args(small_data, out))
    assert "do not match their checksum" in capsys.readouterr().err
    assert_same_content(reference, out)


def test_partial_that_cannot_be_opened_is_kept_and_named(small_data, tmp_path):
    out = tmp_path / "c.h5"
    partial_of(out).write_bytes(b"not an HDF5 file" * 64)
    with pytest.raises(ValueError, match=re.escape(str(partial_of(out))) + ".*--overwrite to start again"):
        build_cache.main(args(small_data, out))
    assert partial_of(out).read_bytes() == b"not an HDF5 file" * 64
    build_cache.main(args(small_data, out, "--overwrite"))
    assert FeatureCache(out).labels


def test_partial_another_program_holds_open_is_kept(small_data, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    partial = interrupted_build(monkeypatch, small_data, out, after=3)
    before = done_rows(partial)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('open', flush=True); sys.stdin.read()", str(partial)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ValueError, match="another program has it open"):
            build_cache.main(args(small_data, out))
    finally:
        holder.communicate("")
    assert partial.exists() and done_rows(partial) == before


# -- 2. concurrent use ------------------------------------------------------------------------
def test_second_build_on_the_same_out_stops_and_touches_nothing(small_data, tmp_path):
    out = tmp_path / "c.h5"
    flags = ["--data", str(small_data), "--duration", str(SECONDS), "--features", "mel,cqt",
             "--augment", "2", "--jobs", "1", "--no-progress", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "build_cache.py", *flags], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        try:
            if done_rows(partial_of(out)) >= 2:
                break
        except (OSError, KeyError):
            pass
        time.sleep(0.1)
    assert first.poll() is None, "the first build ended before the second started"
    with pytest.raises(ValueError, match=rf"in use: pid {first.pid} .*build_cache\.py"):
        build_cache.main(build_cache.get_args_parser().parse_args(flags))
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "rows built" in stdout and not partial_of(out).exists()
    cache = FeatureCache(out)
    assert all((cache.rows(split)["status"] == 1).all() for split in cache.splits)


def test_a_reading_training_blocks_overwrite_but_not_an_up_to_date_check(small_data, tmp_path):
    from common.locks import FileLock  # what train.py holds while it reads a cache

    out = tmp_path / "c.h5"
    build_cache.main(args(small_data, out))
    before = out.stat().st_mtime_ns
    with FileLock(out, shared=True, what="cache"):
        assert build_cache.main(args(small_data, out)).up_to_date
        with pytest.raises(ValueError, match=rf"cache {re.escape(str(out))} is in use: another process is reading"):
            build_cache.main(args(small_data, out, "--n-mels", "64", "--overwrite"))
    assert out.stat().st_mtime_ns == before and not partial_of(out).exists()


# -- 3. an unfinished file at the final path ---------------------------------------------------
def test_unfinished_file_at_the_final_path_is_resumed_not_up_to_date(small_data, reference, tmp_path):
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    with h5py.File(out, "r+") as f:
        f.attrs["complete"] = 0
        f["valid/status"][2] = 0  # a row still to compute
    with pytest.raises(CacheError, match="re-run the same build_cache.py command to resume"):
        FeatureCache(out)
    with pytest.raises(SettingsMismatch, match="n_mels"):
        build_cache.main(args(small_data, out, "--n-mels", "64"))
    summary = build_cache.main(args(small_data, out))
    assert not summary.up_to_date and summary.resumed and summary.built_rows == 1
    assert_same_content(reference, out)


# -- 4. retrying skipped clips ------------------------------------------------------------------
@pytest.fixture
def repaired(data, tmp_path, capsys):
    """A cache built while one training file was broken, and that file repaired since."""
    bad = train_files(data)[3]
    good = bad.read_bytes()
    bad.write_bytes(b"not audio" * 100)
    out = tmp_path / "c.h5"
    summary = build_cache.main(args(data, out))
    assert [s["path"] for s in summary.skipped] == [read_split_lists(data).clips["train"][3].listed]
    assert "--retry-skipped" in capsys.readouterr().err
    bad.write_bytes(good)
    return data, out


def test_repaired_file_is_computed_by_retry_skipped(repaired, reference):
    data, out = repaired
    again = build_cache.main(args(data, out))
    assert again.up_to_date and "--retry-skipped" in again.describe()
    summary = build_cache.main(args(data, out, "--retry-skipped"))
    assert summary.built_rows == 2 and not summary.skipped
    assert_same_content(reference, out)


def test_retry_killed_midway_resumes_and_is_refused_while_a_training_reads(repaired, reference, monkeypatch):
    from common.locks import FileLock

    data, out = repaired
    with FileLock(out, shared=True, what="cache"):
        with pytest.raises(ValueError, match="in use"):
            build_cache.main(args(data, out, "--retry-skipped"))
    assert out.exists() and not partial_of(out).exists()
    interrupted_build(monkeypatch, data, out, "--retry-skipped", after=0)
    assert build_cache.main(args(data, out)).resumed
    assert_same_content(reference, out)


# -- 5. SIGTERM ----------------------------------------------------------------------------------
def processes_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


SIGTERM_FLAGS = ("--duration", str(TINY_SECONDS), "--features", "mel,cqt", "--augment", "2", "--no-progress")


@pytest.fixture(scope="module")
def sigterm_reference(tiny_gtzan, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sigterm_reference") / "reference.h5"
    build_cache.main(build_cache.get_args_parser().parse_args(
        ["--data", str(tiny_gtzan), *SIGTERM_FLAGS, "--jobs", "1", "--out", str(out)]))
    return out


@pytest.mark.parametrize("backend, sig", [("loky", signal.SIGTERM), ("dask", signal.SIGTERM),
                                          ("loky", signal.SIGKILL)], ids=["loky-TERM", "dask-TERM", "loky-KILL"])
def test_sigterm_stops_every_worker_and_leaves_a_resumable_build(tiny_gtzan, sigterm_reference, tmp_path, backend,
                                                                 sig):
    """SIGTERM: one line, status 143, no worker left. SIGKILL cannot be handled, yet its
    workers must not outlive it either."""
    if backend == "dask":
        pytest.importorskip("distributed")
    flags = ["--data", str(tiny_gtzan), *SIGTERM_FLAGS]
    out = tmp_path / "c.h5"
    command = [sys.executable, "build_cache.py", *flags, "--jobs", "2", "--backend", backend, "--out", str(out)]
    build = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)  # its own process group: the build and its workers
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and build.poll() is None:
            try:
                if done_rows(partial_of(out)) >= 6:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.1)
        assert build.poll() is None, "the build ended before it could be stopped"
        assert len(processes_in_group(build.pid)) > 1, "no workers were running"
        build.send_signal(sig)
        if sig == signal.SIGTERM:
            stderr = build.communicate(timeout=60)[1].decode()
            assert build.returncode == 128 + signal.SIGTERM
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM"), stderr
        else:
            assert build.wait(timeout=60) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while processes_in_group(build.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_in_group(build.pid) == [], "workers of the stopped build are still running"
    finally:
        for pid in processes_in_group(build.pid):  # whatever a failed run left, by its ids
            os.kill(pid, signal.SIGKILL)
    assert partial_of(out).exists()
    assert build_cache.main(build_cache.get_args_parser().parse_args([*flags, "--jobs", "1", "--out",
                                                                      str(out)])).resumed
    assert_same_content(sigterm_reference, out)


# -- 6. non-finite features ---------------------------------------------------------------------
def test_non_finite_feature_row_is_skipped_naming_the_feature(small_data, tmp_path, monkeypatch):
    import pipeline.clip

    original, calls = pipeline.clip.compute_features, []

    def nan_in_the_fourth(features, samples):
        out = original(features, samples)
        calls.append(1)
        if len(calls) == 4:
            out["mel"] = out["mel"].copy()
            out["mel"][0, 0] = np.nan
        return out

    monkeypatch.setattr(pipeline.clip, "compute_features", nan_in_the_fourth)
    summary = build_cache.main(args(small_data, tmp_path / "c.h5"))
    assert len(summary.skipped) == 1 and re.search(r"feature mel .*NaN", summary.skipped[0]["reason"])
    cache = FeatureCache(tmp_path / "c.h5")
    for split in cache.splits:
        mel = np.asarray(cache.array(split, "mel"))
        assert np.isfinite(mel[cache.done_rows(split)]).all()


# -- 7. degenerate label sets -------------------------------------------------------------------
def keep_lines(data: Path, split: str, keep) -> None:
    path = data / LIST_FILES[split]
    path.write_text("".join(line + "\n" for line in path.read_text().split() if keep(line)))


def test_lists_of_a_single_genre_are_refused(data, tmp_path):
    for split in LIST_FILES:
        keep_lines(data, split, lambda line: line.startswith("jazz/"))
    with pytest.raises(ValueError, match=r"single genre \(jazz\).*at least two") as caught:
        build_cache.main(args(data, tmp_path / "c.h5"))
    assert "train_filtered.txt" in str(caught.value)
    assert not list(tmp_path.glob("c.h5*"))


def test_genre_missing_from_train_warns_and_builds(data, tmp_path, capsys):
    keep_lines(data, "train", lambda line: not line.startswith(("disco/", "pop/")))
    build_cache.main(args(data, tmp_path / "c.h5"))
    err = capsys.readouterr().err
    assert re.search(r"WARNING: genre\(s\) disco, pop are in .*valid_filtered.txt.* but not in train_filtered",
                     err), err
    assert FeatureCache(tmp_path / "c.h5").labels


# -- 8. the long tail: paths, numbers, undecodable splits, damaged attributes, inspect ---------
def test_out_that_is_a_folder_or_under_a_file_is_refused(small_data, tmp_path):
    with pytest.raises(ValueError, match="is a folder; give the cache file's path"):
        build_cache.main(args(small_data, tmp_path))
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ValueError, match=r"notes\.txt is a file, not a folder"):
        build_cache.main(args(small_data, tmp_path / "notes.txt" / "sub" / "c.h5"))


def test_out_in_a_missing_folder_is_created(small_data, tmp_path):
    out = tmp_path / "new" / "deeper" / "c.h5"
    build_cache.main(args(small_data, out))
    assert FeatureCache(out).labels


def test_out_on_a_read_only_file_system_is_refused_before_the_work(small_disk, small_data, monkeypatch):
    disk = small_disk("1m", "ro")
    monkeypatch.setattr(builder.engines, "process_clip",
                        lambda *a, **k: pytest.fail("a clip was computed for an unwritable --out"))
    with pytest.raises(ValueError, match=rf"--out {re.escape(str(disk))}/c\.h5: cannot write in its folder"):
        build_cache.main(args(small_data, disk / "c.h5"))


@pytest.mark.parametrize("flag, value", [
    ("--duration", "nan"), ("--duration", "inf"), ("--duration", "-1"), ("--duration", "0"),
    ("--duration", "1e9"), ("--sr", "0"), ("--sr", "-22050"), ("--sr", "100000000"),
    ("--jobs", "0"), ("--jobs", "100000"),
])
def test_absurd_numbers_are_refused_naming_the_flag(small_data, tmp_path, flag, value):
    with pytest.raises(ValueError, match=rf"^{flag} \S+: must be"):
        build_cache.main(args(small_data, tmp_path / "c.h5", flag, value))
    assert list(tmp_path.iterdir()) == []


def test_workers_are_capped_at_the_clips_left(small_data, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupted_build(monkeypatch, small_data, out, after=N_CLIPS - 1)
    summary = build_cache.main(args(small_data, out, "--jobs", "8"))
    assert summary.resumed and summary.workers == 1


def test_every_training_clip_undecodable_fails_and_retries_once_fixed(data, reference, tmp_path):
    originals = {path: path.read_bytes() for path in train_files(data)}
    for path in originals:
        path.write_bytes(b"not audio" * 100)
    out = tmp_path / "c.h5"
    with pytest.raises(ValueError, match=r"no clip of the train split\(s\) could be decoded") as caught:
        build_cache.main(args(data, out))
    assert "run the same command again" in str(caught.value)
    assert not out.exists() and partial_of(out).exists()
    for path, good in originals.items():
        path.write_bytes(good)
    assert build_cache.main(args(data, out)).resumed
    assert_same_content(reference, out)


@pytest.mark.parametrize("attr, value", [("complete", "yes"), ("format_version", "x"),
                                         ("settings", "{not-json"), ("labels", "42")])
def test_root_attribute_of_the_wrong_type_is_named(small_data, reference, tmp_path, attr, value):
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    with h5py.File(out, "r+") as f:
        f.attrs[attr] = value
    for read in (FeatureCache, summarize):
        with pytest.raises(CacheError, match=rf"root attribute '{attr}'"):
            read(out)
    with pytest.raises(ValueError, match=rf"root attribute '{attr}'.*--overwrite"):
        build_cache.main(args(small_data, out))
    done = subprocess.run([sys.executable, "-m", "cache.inspect", str(out)], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and f"'{attr}'" in done.stderr, done.stderr


def test_inspect_shows_a_build_in_progress(small_data, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    partial = interrupted_build(monkeypatch, small_data, out, after=5)
    # Held open for writing by another process, as a running build holds it (HDF5's lock).
    holder = subprocess.Popen([sys.executable, "-c", "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('open', flush=True); sys.stdin.read()", str(partial)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        text = summarize(out)
        cli = subprocess.run([sys.executable, "-m", "cache.inspect", str(out)], cwd=REPO, capture_output=True,
                             text=True)
    finally:
        holder.communicate("")
    assert text.startswith(f"note: {out} does not exist yet") and str(partial) in text
    assert "UNFINISHED" in text and re.search(r"train +16 clips, 32 rows .* (\d+) done", text)
    assert cli.returncode == 0 and cli.stdout.strip() == text


# -- 9. one error family --------------------------------------------------------------------------
def test_every_build_error_is_a_user_error():
    from builder import BackendError, DataNotVisible, NothingUsable, WorkersLost
    from common.atomic import StorageError
    from common.errors import UserError
    from common.locks import LockHeld
    from pipeline.audio import AudioLoadError

    for error in (CacheError, SettingsMismatch, BackendError, DataNotVisible, WorkersLost, NothingUsable,
                  StorageError, LockHeld, AudioLoadError):
        assert issubclass(error, UserError), error
    assert issubclass(AudioLoadError, RuntimeError)  # as callers caught it before


def test_cli_prints_one_line_for_a_user_error(small_data, tmp_path):
    done = subprocess.run([sys.executable, "build_cache.py", "--data", str(small_data), "--out",
                           str(tmp_path / "c.h5"), "--features", "mel", "--n-mfcc", "13"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: --n-mfcc applies to none of the features ['mel']"]


# -- 10. groups per row ---------------------------------------------------------------------------
def with_groups(lists: SplitLists, group_of) -> SplitLists:
    """The lists with a ``group`` attribute on every clip, as pipeline.splits gives with a groups file."""

    @dataclasses.dataclass(frozen=True)
    class GroupedClip(type(next(iter(lists.clips["train"])))):
        group: str | None = None

    def grouped(clip):
        values = {f.name: getattr(clip, f.name) for f in dataclasses.fields(clip) if f.name != "group"}
        return GroupedClip(**values, group=group_of(clip))

    return dataclasses.replace(lists, clips={split: tuple(grouped(c) for c in clips)
                                             for split, clips in lists.clips.items()})


def test_groups_are_stored_per_row_and_fingerprinted(small_data, reference, tmp_path, monkeypatch):
    plain = read_split_lists(small_data)
    settings = FeatureCache(reference).settings
    for split, clips in plain.clips.items():  # without groups: the fingerprint of older builds
        listed = "\n".join(clip.listed for clip in clips).encode()
        assert settings["sources"][split] == {"count": len(clips), "sha256": hashlib.sha256(listed).hexdigest()}

    def track(clip):
        return None if clip.split == "test" else f"track{int(clip.listed[-9:-4]) // 2}"

    monkeypatch.setattr(builder.cache_build, "read_split_lists", lambda root: with_groups(read_split_lists(root), track))
    out = tmp_path / "c.h5"
    build_cache.main(args(small_data, out))
    cache_ = FeatureCache(out)
    rows = cache_.rows("train")
    assert rows["group"].tolist() == [track(plain.clips["train"][c]) for c in rows["clip"]]
    assert set(cache_.rows("test")["group"]) == {""}
    assert "groups_sha256" in cache_.settings["sources"]["train"]
    assert cache_.fingerprint != FeatureCache(reference).fingerprint
    if shutil.which("h5ls"):
        listing = subprocess.run(["h5ls", "-r", str(out)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"^/train/group\s+Dataset", listing, re.M)

    monkeypatch.setattr(builder.cache_build, "read_split_lists",
                        lambda root: with_groups(read_split_lists(root), lambda clip: clip.listed))
    with pytest.raises(SettingsMismatch, match="groups_sha256"):
        build_cache.main(args(small_data, out))


def test_cache_of_the_older_layout_is_up_to_date_and_an_older_partial_resumes(small_data, reference, tmp_path,
                                                                              monkeypatch):
    def to_older_layout(path):
        """No group or checksum field, and row text as variable-length strings."""
        with h5py.File(path, "r+") as f:
            for split in ("train", "valid", "test"):
                group = f[split]
                for name in ("group", "checksum"):
                    if name in group:
                        del group[name]
                for name in ("augment", "flags"):
                    values = group[name].asstr()[()].astype(object)
                    del group[name]
                    group.create_dataset(name, data=values, dtype=h5py.string_dtype())

    old_cache = tmp_path / "old.h5"
    shutil.copy(reference, old_cache)
    to_older_layout(old_cache)
    assert build_cache.main(args(small_data, old_cache)).up_to_date
    assert FeatureCache(old_cache).rows("train")["group"].tolist() == [""] * 32

    out = tmp_path / "c.h5"
    to_older_layout(interrupted_build(monkeypatch, small_data, out, after=7))
    assert build_cache.main(args(small_data, out)).resumed
    with h5py.File(out, "r") as f, h5py.File(reference, "r") as ref:
        for split in ("train", "valid", "test"):
            np.testing.assert_array_equal(f[split]["features/mel"][...], ref[split]["features/mel"][...])
            np.testing.assert_array_equal(f[split]["checksum"][...], ref[split]["checksum"][...])
            assert f[split]["flags"].asstr()[()].tolist() == ref[split]["flags"].asstr()[()].tolist()
            assert f[split]["augment"].asstr()[()].tolist() == ref[split]["augment"].asstr()[()].tolist()
