"""Training, checkpoints, prediction, evaluation and reports under hostile and unlucky use.

One group per fault class: checkpoints that run code or do not fit their feature, two
jobs on one run folder, bad numbers, degenerate label sets, problems checked before the
work, and the error family and CLI path (SIGTERM, full disk). Every test goes through a
public entry point that also existed before these faults were fixed (``main(args)`` of
the scripts, subprocesses, ``save_checkpoint``), and imports nothing that did not.
"""
from __future__ import annotations

import fcntl
import json
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
import soundfile as sf
import torch

import build_cache
import evaluate
import predict
import report
import train
import training.data
import training.evaluation
import training.loop
from training.checkpoint import save_checkpoint
from tests.conftest import build_args
from tests.test_predict import tiny_runs
from tests.test_train import train_args

REPO = Path(__file__).resolve().parents[1]
# Generous: a cold start of torch on two busy cores takes seconds.
START_TIMEOUT_S = 120


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_cache, tmp_path_factory) -> Path:
    """A finished 1-epoch cnn1d run on mel; tests copy it before changing anything."""
    out_dir = tmp_path_factory.mktemp("faults") / "run"
    train.main(train_args(tiny_cache, out_dir, "--epochs", "1"))
    return out_dir


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    """test_predict's shared runs: a mel+mfcc cache without augmentation, and a run on each."""
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def copy_run(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


class Payload:
    """Unpickled, it creates ``marker``: what a hostile ``.pt`` file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def evil_copy(source: Path, dest: Path, marker: Path) -> Path:
    """A copy of checkpoint ``source`` that also holds a pickle payload."""
    ckpt = torch.load(source, weights_only=True)
    ckpt["payload"] = Payload(marker)
    torch.save(ckpt, dest)
    return dest


def one_audio_file(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "song.wav"
    sf.write(path, 0.1 * rng.standard_normal(22050 * 3), 22050)
    return path


def evaluate_args(cache, checkpoints, *extra):
    argv = ["--cache", str(cache), "--device", "cpu", "--no-progress", *map(str, extra)]
    for ckpt in checkpoints:
        argv += ["--checkpoint", str(ckpt)]
    return evaluate.get_args_parser().parse_args(argv)


def report_args(*runs, out):
    return report.get_args_parser().parse_args([*map(str, runs), "--out", str(out)])


def assert_one_line_naming(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message


def mounted_tmpfs(folder: Path, *options: str) -> Path:
    """``folder`` with a tmpfs mounted on it (root only: the test is skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system: a checkpoint of a few MB does not fit."""
    folder = mounted_tmpfs(tmp_path / "small", "size=1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)  # lazy: an open file must not fail the test


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only file system (root may write anywhere else)."""
    folder = mounted_tmpfs(tmp_path / "ro", "ro,size=1m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)  # lazy: an open file must not fail the test


# == 1. a checkpoint must never run code, and must fit its feature ================================
ENTRY_POINTS = ("predict", "eval-only", "resume", "evaluate")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(entry, finished_run, tiny_cache,
                                                                        tmp_path):
    marker = tmp_path / "payload-ran"
    folder = copy_run(finished_run, tmp_path / "run")
    evil = evil_copy(finished_run / "last.pt", folder / ("last.pt" if entry == "resume" else "evil.pt"), marker)
    error = None
    try:
        if entry == "predict":
            predict.main(predict.get_args_parser().parse_args([str(one_audio_file(tmp_path)),
                                                               "--checkpoint", str(evil)]))
        elif entry == "eval-only":
            train.main(train_args(tiny_cache, tmp_path / "eval", "--eval-only", "--checkpoint", str(evil)))
        elif entry == "resume":
            train.main(train_args(tiny_cache, folder, "--epochs", "2", "--resume"))
        else:
            evaluate.main(evaluate_args(tiny_cache, [evil]))
    except ValueError as exc:
        error = exc
    assert not marker.exists(), "unpickling the checkpoint ran its payload"
    assert error is not None, "the checkpoint was used"
    assert_one_line_naming(error, evil)
    assert "not loaded" in str(error)


def test_report_reads_no_checkpoint(finished_run, tmp_path):
    marker = tmp_path / "payload-ran"
    folder = copy_run(finished_run, tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        evil_copy(finished_run / name, folder / name, marker)
    summary = report.main(report_args(folder, out=tmp_path / "report.md"))
    assert not marker.exists(), "report.py unpickled a checkpoint"
    assert summary["chosen"] == ["run"]
    row = summary["runs"][0]  # what it needs comes from the run's JSON files
    assert (row["model"], row["feature"]) == ("cnn1d", "mel") and row["cache_fingerprint"]


def test_report_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c", "import report, sys; assert 'torch' not in sys.modules"],
                          cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]


def test_payload_on_the_command_line_is_one_error_line(finished_run, tiny_cache, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = evil_copy(finished_run / "best.pt", tmp_path / "evil.pt", marker)
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--eval-only", "--checkpoint", str(evil),
                           "--cache", str(tiny_cache), "--out-dir", str(tmp_path / "eval"), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert not marker.exists()
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(evil) in lines[0], done.stderr


def test_everything_a_checkpoint_holds_loads_with_weights_only(tiny_cache, tmp_path):
    # Optimizer, scheduler and scaler state, RNG state, history and args of both schedules.
    for name, flags in (("cosine", ["--optimizer", "adamw"]),
                        ("plateau", ["--optimizer", "sgd", "--schedule", "plateau", "--mixup", "0.2"])):
        train.main(train_args(tiny_cache, tmp_path / name, "--epochs", "1", *flags))
        for file in ("best.pt", "last.pt"):
            ckpt = torch.load(tmp_path / name / file, weights_only=True)
            assert {"optimizer", "scheduler", "scaler", "torch_rng", "history", "args"} <= set(ckpt)


@pytest.mark.parametrize("value", [np.float64(0.5), Path("cache.h5")], ids=["numpy-scalar", "path"])
def test_saving_refuses_what_weights_only_cannot_load(value, tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['args'\]\['x'\]"):
        save_checkpoint({"args": {"x": value}, "state_dict": {}}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("entry", ["predict", "eval-only"])
def test_normalisation_that_does_not_fit_the_feature_is_refused(entry, finished_run, tiny_cache, tmp_path):
    ckpt = torch.load(finished_run / "best.pt", weights_only=True)
    ckpt["normalization"]["mean"] = [[0.0]] * 64  # the mel feature has 128 bins
    bad = tmp_path / "bad_norm.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="normali[sz]ation mean has shape") as caught:
        if entry == "predict":
            predict.main(predict.get_args_parser().parse_args([str(one_audio_file(tmp_path)),
                                                               "--checkpoint", str(bad)]))
        else:
            train.main(train_args(tiny_cache, tmp_path / "eval", "--eval-only", "--checkpoint", str(bad)))
    assert_one_line_naming(caught.value, bad)


# == 2. one job per run folder; a finished run is never replaced silently ==========================
def test_new_run_in_a_finished_runs_folder_is_refused_and_changes_nothing(finished_run, tiny_cache, tmp_path):
    folder = copy_run(finished_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="already holds a run") as caught:
        train.main(train_args(tiny_cache, folder, "--epochs", "1", "--model", "cnn2d"))
    message = str(caught.value)
    assert "--resume" in message and "--overwrite" in message and str(folder) in message
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_overwrite_clears_the_old_runs_outputs_first(finished_run, tiny_cache, tmp_path, monkeypatch):
    folder = copy_run(finished_run, tmp_path / "run")
    # The new run fails in its first batch: nothing of the old run may be left beside it.
    monkeypatch.setattr(training.loop, "l1_penalty", lambda model: torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="diverged"):
        train.main(train_args(tiny_cache, folder, "--epochs", "1", "--l1", "1e-6", "--overwrite"))
    left = {p.name for p in folder.iterdir()}
    assert not left & {"best.pt", "last.pt", "results.json", "metrics.jsonl", "confusion_test.png"}, left
    assert json.loads((folder / "args.json").read_text())["l1"] == 1e-6


@pytest.fixture(scope="module")
def running_training(tiny_cache, tmp_path_factory):
    """A train.py process on tiny_cache, killed at the end; yields (process, out_dir, argv, stderr file).

    Yielded once its first epoch is saved (best.pt and last.pt exist).
    """
    root = tmp_path_factory.mktemp("running")
    out_dir = root / "run"
    argv = ["--cache", str(tiny_cache), "--out-dir", str(out_dir), "--segment-seconds", "2.0", "--workers", "0",
            "--no-progress", "--batch-size", "16", "--feature", "mel", "--crops-per-clip", "1", "--epochs", "1000"]
    stdout, stderr = open(root / "stdout", "w"), open(root / "stderr", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, stdout=stdout,
                            stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ((out_dir / "last.pt").exists() and (out_dir / "best.pt").exists()):
            assert proc.poll() is None, (root / "stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "the training did not finish an epoch in time"
            time.sleep(0.2)
        yield proc, out_dir, argv, root / "stderr"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stdout.close()
        stderr.close()


@pytest.mark.parametrize("job", ["train", "resume", "eval-only"])
def test_second_job_on_a_run_folder_in_use_is_refused_naming_the_other(job, running_training, tiny_cache,
                                                                        monkeypatch):
    proc, out_dir, argv, _ = running_training

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"a second {job} started working in the run folder in use")

    monkeypatch.setattr(training.loop, "train_one_epoch", must_not_run)
    monkeypatch.setattr(training.loop, "final_evaluation", must_not_run)
    monkeypatch.setattr(training.evaluation, "final_evaluation", must_not_run)
    extra = {"train": ["--overwrite"], "resume": ["--resume"], "eval-only": ["--eval-only"]}[job]
    args = train.get_args_parser().parse_args([*argv, *extra] if job != "eval-only" else
                                              ["--eval-only", "--out-dir", str(out_dir), "--no-progress"])
    with pytest.raises(ValueError, match=rf"in use: pid {proc.pid}\b") as caught:
        train.main(args)
    assert "run folder" in str(caught.value) and str(out_dir) in str(caught.value)
    assert proc.poll() is None  # the running job was not disturbed


def test_training_holds_a_shared_lock_on_its_cache(running_training, tiny_cache):
    # What a build of the same cache does before replacing it: an exclusive lock, refused here.
    lock = tiny_cache.with_name(tiny_cache.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # other readers are welcome
    finally:
        os.close(fd)


def test_eval_only_on_another_cache_does_not_replace_the_runs_results(runs, tiny_cache, tmp_path):
    # tiny_cache holds the same clips and mel settings, but it is another cache than the run's.
    results = runs["mel"] / "results.json"
    before = results.read_bytes()
    with pytest.raises(ValueError, match="--out-dir") as caught:
        train.main(train.get_args_parser().parse_args(
            ["--eval-only", "--checkpoint", str(runs["mel"] / "best.pt"), "--cache", str(tiny_cache),
             "--no-progress"]))
    assert str(results) in str(caught.value)
    assert results.read_bytes() == before
    # With a folder of their own, they are written there.
    out = tmp_path / "on_tiny_cache"
    train.main(train.get_args_parser().parse_args(
        ["--eval-only", "--checkpoint", str(runs["mel"] / "best.pt"), "--cache", str(tiny_cache),
         "--out-dir", str(out), "--no-progress"]))
    assert (out / "results.json").exists() and results.read_bytes() == before


def test_eval_only_into_a_folder_with_other_results_needs_overwrite(runs, finished_run, tmp_path):
    folder = copy_run(finished_run, tmp_path / "other")
    before = (folder / "results.json").read_bytes()
    argv = ["--eval-only", "--checkpoint", str(runs["mel"] / "best.pt"), "--out-dir", str(folder), "--no-progress"]
    with pytest.raises(ValueError, match="--overwrite"):
        train.main(train.get_args_parser().parse_args(argv))
    assert (folder / "results.json").read_bytes() == before


# == 3. bad numbers never train to garbage =========================================================
@pytest.mark.parametrize("name, value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--weight-decay", "-0.01"), ("--weight-decay", "nan"),
    ("--momentum", "-0.5"), ("--momentum", "1.5"), ("--l1", "nan"), ("--l1", "-1"), ("--mixup", "inf"),
    ("--dropout", "nan"), ("--dropout", "1.0"), ("--min-lr", "nan"), ("--seed", str(2 ** 32)),
    ("--segment-seconds", "inf"), ("--segment-seconds", "nan"), ("--eval-hop-seconds", "0"),
    ("--eval-hop-seconds", "nan"), ("--seed", "-1"), ("--workers", "-2"), ("--lr-patience", "-1"),
])
def test_bad_number_flags_are_refused_before_any_work(name, value, tiny_cache, tmp_path):
    out_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=re.escape(f"{name} {value}")):
        train.main(train_args(tiny_cache, out_dir, "--epochs", "1", name, value))
    assert not out_dir.exists()


def test_loss_that_stops_being_finite_stops_training_and_keeps_the_last_good_epoch(tiny_cache, tmp_path,
                                                                                  monkeypatch):
    # Epoch 1 trains normally; from epoch 2 on the loss is NaN (via the L1 term).
    poisoned = {"on": False}
    real_plot = training.loop.plot_curves

    def plot_then_poison(*args, **kwargs):  # called once per finished epoch
        real_plot(*args, **kwargs)
        poisoned["on"] = True

    monkeypatch.setattr(training.loop, "plot_curves", plot_then_poison)
    monkeypatch.setattr(training.loop, "l1_penalty",
                        lambda model: torch.tensor(float("nan") if poisoned["on"] else 0.0))
    with pytest.raises(ValueError, match=r"diverged.*epoch 2, batch 1 \(lr [0-9.e-]+\)") as caught:
        train.main(train_args(tiny_cache, tmp_path, "--epochs", "3", "--l1", "1e-6"))
    assert "last.pt keeps epoch 1" in str(caught.value)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert not (tmp_path / "results.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.fixture
def damaged_cache(runs, tmp_path):
    """A copy of the runs' mel+mfcc cache (no augmentation) that a test may write NaN into."""
    return Path(shutil.copy(runs["cache"], tmp_path / "cache.h5"))


def poison_row(cache: Path, split: str, row: int) -> str:
    """Put a NaN into one mel row; returns the row's clip path."""
    with h5py.File(cache, "r+") as f:
        data = f[f"{split}/features/mel"]
        values = data[row]
        values[3, 5] = np.nan
        data[row] = values
        return f[f"{split}/path"].asstr()[row]


@pytest.mark.parametrize("split", ["train", "valid"])
def test_nan_in_a_feature_row_is_named_with_its_clip(split, damaged_cache, tmp_path):
    clip = poison_row(damaged_cache, split, 2)
    out_dir = tmp_path / "run"
    with pytest.raises(ValueError) as caught:
        train.main(train_args(damaged_cache, out_dir, "--epochs", "1"))
    message = str(caught.value)
    for part in ("NaN", f"split {split!r}", "row 2", clip, "'mel'", "rebuild"):
        assert part in message, (part, message)
    assert not (out_dir / "results.json").exists()


# == 4. degenerate label sets ======================================================================
def cache_of_genres(tiny_gtzan, folder: Path, *, train_genres, eval_genres) -> Path:
    """A mel cache of the tiny set whose train list holds ``train_genres`` and whose valid and
    test lists hold ``eval_genres``."""
    data = folder / "data"
    data.mkdir(parents=True)
    for genre in set(train_genres) | set(eval_genres):
        shutil.copytree(tiny_gtzan / genre, data / genre)
    for split, genres in (("train", train_genres), ("valid", eval_genres), ("test", eval_genres)):
        lines = (tiny_gtzan / f"{split}_filtered.txt").read_text().splitlines(True)
        (data / f"{split}_filtered.txt").write_text("".join(l for l in lines if l.split("/")[0] in genres))
    out = folder / "cache.h5"
    try:
        build_cache.main(build_args(data, out, "--features", "mel"))
    except ValueError as exc:  # a build that refuses such lists itself
        pytest.skip(f"the cache build refuses these lists: {exc}")
    return out


def test_training_clips_of_one_genre_are_refused(tiny_gtzan, tmp_path):
    cache = cache_of_genres(tiny_gtzan, tmp_path, train_genres=["classical"], eval_genres=["classical", "jazz"])
    with pytest.raises(ValueError, match=r"two genres") as caught:
        train.main(train_args(cache, tmp_path / "run", "--epochs", "1"))
    assert "'classical'" in str(caught.value)
    assert not (tmp_path / "run" / "results.json").exists()


def test_genre_missing_from_train_gets_a_loud_warning(tiny_gtzan, tmp_path, capsys):
    cache = cache_of_genres(tiny_gtzan, tmp_path, train_genres=["classical", "jazz"],
                            eval_genres=["classical", "jazz", "metal"])
    capsys.readouterr()
    train.main(train_args(cache, tmp_path / "run", "--epochs", "1"))
    err = capsys.readouterr().err
    assert "warning:" in err and "'metal'" in err and "valid" in err and "test" in err, err


# == 5. problems found before the work, not after ==================================================
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_dir_that_is_or_lies_under_a_file_is_refused_first(where, tiny_cache, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out_dir = blocker if where == "file" else blocker / "run"
    with pytest.raises(ValueError, match=re.escape(str(out_dir))) as caught:
        train.main(train_args(tiny_cache, out_dir, "--epochs", "1"))
    assert "--out-dir" in str(caught.value) and "file" in str(caught.value)
    assert blocker.read_text() == "not a folder\n"


def test_unwritable_out_dir_is_refused_first(tiny_cache, read_only_folder, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training.data, "compute_normalization", no_training)
    with pytest.raises(ValueError, match="read-only") as caught:
        train.main(train_args(tiny_cache, read_only_folder / "run", "--epochs", "1"))
    assert "--out-dir" in str(caught.value) and str(read_only_folder / "run") in str(caught.value)


@pytest.mark.parametrize("where", ["folder", "under-file", "read-only"])
def test_report_out_is_checked_before_reading_runs(where, tmp_path, request):
    if where == "folder":
        out = tmp_path
    elif where == "under-file":
        (tmp_path / "taken").write_text("x")
        out = tmp_path / "taken" / "report.md"
    else:
        out = request.getfixturevalue("read_only_folder") / "report.md"
    with pytest.raises(ValueError, match=re.escape(f"--out {out}")):
        report.main(report_args(tmp_path / "no-such-run", out=out))


@pytest.mark.parametrize("flags, trained", [
    (["--model", "cnn2d"], "--model cnn1d"),
    (["--feature", "mfcc"], "--feature mel"),
    (["--optimizer", "sgd"], "--optimizer adamw"),
])
def test_resume_with_other_run_defining_flags_says_what_the_run_was(flags, trained, finished_run, tiny_cache,
                                                                    tmp_path):
    folder = copy_run(finished_run, tmp_path / "run")
    with pytest.raises(ValueError, match="was trained with") as caught:
        train.main(train_args(tiny_cache, folder, "--epochs", "2", "--resume", *flags))
    assert trained in str(caught.value) and str(folder) in str(caught.value)
    assert "start a new --out-dir" in str(caught.value)


def test_resume_in_a_folder_without_a_run_says_to_start_one(tiny_cache, tmp_path):
    with pytest.raises(ValueError, match="without --resume"):
        train.main(train_args(tiny_cache, tmp_path / "nothing", "--resume"))
    assert not (tmp_path / "nothing").exists()


# == 6. one error family, one CLI path, storage faults =============================================
@pytest.mark.parametrize("error", [
    "train.TrainError", "training.checkpoint.CheckpointError", "predict.PredictError", "predict.ClipError",
    "evaluate.EvaluateError", "report.ReportError",
])
def test_every_user_error_belongs_to_the_one_family(error):
    module, name = error.rsplit(".", 1)
    cls = getattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[name]), name)
    assert "UserError" in [base.__name__ for base in cls.__mro__], cls.__mro__


def test_sigterm_leaves_a_resumable_run(running_training, tiny_cache):
    proc, out_dir, argv, stderr = running_training
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    err = stderr.read_text()
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM; the last finished epoch is kept in {out_dir}/last.pt; continue with "
        f"--resume --out-dir {out_dir} (and the same other flags)")
    done = torch.load(out_dir / "last.pt", weights_only=True)["epoch"]
    assert not list(out_dir.glob("*.tmp")) and not list(out_dir.glob(".*.tmp"))
    resumed = train.main(train.get_args_parser().parse_args(
        [*argv[:-1], str(done + 1), "--resume"]))
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, done + 2))
    assert json.loads((out_dir / "results.json").read_text())["test_acc"] == resumed["test_acc"]


def test_resume_after_kill_9_removes_the_half_written_files(finished_run, tiny_cache, tmp_path):
    # What a writer killed mid-checkpoint leaves: its temporary file beside the intact last.pt.
    folder = copy_run(finished_run, tmp_path / "run")
    (folder / ".last.pt.k9x2a.tmp").write_bytes(b"half a checkpoint")
    train.main(train_args(tiny_cache, folder, "--epochs", "1", "--resume"))
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "results.json").read_text())["epochs_trained"] == 1


def test_full_disk_keeps_the_previous_checkpoint_and_names_the_file(small_disk):
    path = small_disk / "last.pt"
    save_checkpoint({"state_dict": {"w": torch.ones(10)}, "epoch": 1}, path)
    with pytest.raises(ValueError, match=re.escape(str(path))) as caught:
        save_checkpoint({"state_dict": {"w": torch.ones(1_000_000)}, "epoch": 2}, path)  # 4 MB
    assert "no space left" in str(caught.value)
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and kept["state_dict"]["w"].numel() == 10
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]
