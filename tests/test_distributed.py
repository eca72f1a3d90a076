"""Scale-out: the cache build on a Dask cluster, and train.py under torchrun.

The Dask tests need the optional packages of requirements-dist.txt (skipped without
them); the torchrun tests run two gloo processes on the CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import build_cache
import builder.cache_build
import builder.engines
import train
from builder import BackendError, DataNotVisible
from synthetic import generate_dataset
from training.checkpoint import load_checkpoint
from tests.conftest import TINY_SECONDS, build_args
from tests.test_build_cache import assert_same_content
from tests.test_train import train_args

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
# Generous: a cold start of two torch processes on two busy cores takes seconds.
TORCHRUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """8 genres x 4 clips x 4 s: 16 train (each with an augmented copy), 8 valid, 8 test."""
    root = tmp_path_factory.mktemp("dist_data")
    generate_dataset(root, clips_per_genre=4, seconds=TINY_SECONDS, seed=11)
    return root


@pytest.fixture(scope="module")
def local_cache(small_data, tmp_path_factory) -> Path:
    """The reference: the local (loky) backend, 2 workers, with augmentation."""
    out = tmp_path_factory.mktemp("dist_local") / "cache.h5"
    build_cache.main(build_args(small_data, out, "--features", "mel", "--augment", "1", "--jobs", str(WORKERS)))
    return out


@pytest.fixture(scope="module")
def cluster():
    """A client of a LocalCluster of 2 single-threaded worker processes.

    Each worker also runs a thread that keeps drawing from the global ``random`` and
    ``numpy.random`` generators, as a worker's event loop and its other task threads
    do now and then; the augmenter seeds and uses those generators, so a build that
    ran it in the worker's own process would come out different.
    """
    distributed = pytest.importorskip("distributed")

    class DrawFromGlobalGenerators(distributed.WorkerPlugin):
        def setup(self, worker):
            import random
            import threading

            self.stop = threading.Event()

            def draw():
                while not self.stop.wait(0.0005):
                    random.random()
                    np.random.random()

            threading.Thread(target=draw, daemon=True).start()

        def teardown(self, worker):
            self.stop.set()

    with distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local, \
            distributed.Client(local, set_as_default=False) as client:
        client.register_plugin(DrawFromGlobalGenerators(), name="draw-from-global-generators")
        yield client


def dask_build(data, out, client):
    """The reference build's settings, run on the cluster of ``client``."""
    return build_cache.main(build_args(data, out, "--features", "mel", "--augment", "1",
                                       "--backend", "dask", "--scheduler", client.scheduler.address))


# -- the cache build on Dask ----------------------------------------------------------------
def test_local_cluster_of_jobs_workers_builds_the_same_file(small_data, local_cache, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "dask.h5"
    summary = build_cache.main(build_args(small_data, out, "--features", "mel", "--augment", "1",
                                          "--backend", "dask", "--jobs", str(WORKERS)))
    assert summary.built_rows == 16 * 2 + 8 + 8 and summary.augmented_rows == 16
    with h5py.File(out, "r") as f:
        # Augmented rows are the ones a worker's shared random generators could spoil.
        applied = [a for a in f["train/augment"][...] if a]
        assert len(applied) == 16
    assert_same_content(local_cache, out)


def test_worker_killed_mid_build_loses_and_duplicates_nothing(cluster, small_data, local_cache, tmp_path,
                                                               monkeypatch):
    written, killed = [], []
    original = builder.cache_build.store_result

    def write_then_kill_a_busy_worker(writer, result):
        skipped = original(writer, result)
        written.append((result.split, result.clip))
        if len(written) == 4:
            busy = [w for w, keys in cluster.processing().items() if keys] or list(cluster.processing())
            pid = cluster.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)  # its nanny starts a new one
            killed.append(pid)
        return skipped

    monkeypatch.setattr(builder.cache_build, "store_result", write_then_kill_a_busy_worker)
    out = tmp_path / "dask.h5"
    summary = dask_build(small_data, out, cluster)
    assert killed, "no worker was killed"
    assert killed[0] not in cluster.run(os.getpid).values()
    assert len(written) == len(set(written)) == 32  # each clip once
    assert summary.built_rows == 48 and not summary.resumed
    assert_same_content(local_cache, out)


def test_check_names_each_worker_and_file_it_cannot_read(cluster, small_data):
    present = sorted(small_data.glob("*/*.*"))[:2]
    sizes = {str(present[0]): present[0].stat().st_size,
             str(present[1]): present[1].stat().st_size + 1,  # as if the workers had another copy
             str(small_data / "blues" / "not-there.wav"): 100}
    with pytest.raises(DataNotVisible) as caught:
        builder.engines.check_workers_see(cluster, sizes, root=small_data)
    message = str(caught.value)
    assert f"{WORKERS} of {WORKERS} Dask workers cannot read the data in {small_data}" in message
    for worker in cluster.scheduler_info()["workers"]:
        assert f"{worker}: cannot read 2 of 3 files" in message
    assert "not-there.wav (No such file or directory)" in message
    assert "another copy of the data" in message and str(present[0]) + " (" not in message
    assert "same path on every worker" in message
    builder.engines.check_workers_see(cluster, {str(present[0]): present[0].stat().st_size}, root=small_data)


def can_hide_folders() -> bool:
    """True where this process may make a private mount namespace (root, or CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def wait_for_worker_count(client, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not reach {n} workers in {timeout} s")
        time.sleep(0.2)


@pytest.mark.skipif(not can_hide_folders(), reason="needs `unshare -m` (root) to hide the data from a worker")
def test_worker_that_cannot_see_the_data_stops_the_build_before_it_starts(cluster, small_data, tmp_path):
    # A real third worker whose file system has an empty folder mounted over the data,
    # as on a node where the shared file system is not mounted.
    before = set(cluster.scheduler_info()["workers"])
    worker_cmd = (f"mount -t tmpfs none {small_data} && exec {sys.executable} -m distributed.cli.dask_worker "
                  f"{cluster.scheduler.address} --nthreads 1 --no-dashboard")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    blind = subprocess.Popen(["unshare", "-m", "sh", "-c", worker_cmd], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_worker_count(cluster, WORKERS + 1)
        (blind_address,) = set(cluster.scheduler_info()["workers"]) - before
        out = tmp_path / "dask.h5"
        with pytest.raises(DataNotVisible) as caught:
            dask_build(small_data, out, cluster)
        message = str(caught.value)
        assert f"1 of {WORKERS + 1} Dask workers cannot read the data in {small_data}" in message
        assert f"{blind_address}: cannot read 32 of 32 files" in message
        assert "(No such file or directory)" in message
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    finally:
        blind.send_signal(signal.SIGTERM)
        blind.wait(timeout=30)
        wait_for_worker_count(cluster, WORKERS)


def test_missing_dask_packages_say_what_to_install(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(BackendError, match=r"dask and distributed .*pip install -r requirements-dist\.txt"):
        build_cache.main(build_args(small_data, tmp_path / "c.h5", "--backend", "dask"))
    assert not (tmp_path / "c.h5.partial").exists()


@pytest.mark.parametrize("backend, scheduler, match", [
    ("spark", None, r"unknown backend 'spark'; choose one of: loky, dask"),
    ("loky", "tcp://head:8786", r"--scheduler tcp://head:8786 needs --backend dask"),
])
def test_bad_backend_settings_are_refused_before_any_work(small_data, tmp_path, backend, scheduler, match):
    from pipeline.features import build_feature

    with pytest.raises(BackendError, match=match):
        builder.cache_build.build(data=small_data, out=tmp_path / "c.h5", features={"mel": build_feature("mel")},
                          backend=backend, scheduler=scheduler)
    assert list(tmp_path.iterdir()) == []


def test_unknown_backend_flag_is_refused_by_the_parser(small_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_args(small_data, tmp_path / "c.h5", "--backend", "spark")
    assert "invalid choice: 'spark'" in capsys.readouterr().err


def test_unreachable_scheduler_is_reported(small_data, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(builder.engines, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(BackendError, match=rf"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        build_cache.main(build_args(small_data, tmp_path / "c.h5", "--backend", "dask",
                                    "--scheduler", f"tcp://127.0.0.1:{port}"))
    assert not (tmp_path / "c.h5.partial").exists()


# -- training under torchrun ----------------------------------------------------------------
def torchrun(cache, out_dir, *extra) -> subprocess.CompletedProcess:
    """train.py in 2 gloo processes on the CPU, as `torchrun --standalone --nproc_per_node=2` does."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--cache", str(cache), "--out-dir", str(out_dir), "--model", "cnn1d",
           "--device", "cpu", "--workers", "0", "--segment-seconds", "2.0", "--batch-size", "8",
           "--optimizer", "adam", "--lr", "0.003", "--feature", "mel", "--crops-per-clip", "1", "--no-progress",
           *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_run(local_cache, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp_run")
    return out_dir, torchrun(local_cache, out_dir, "--epochs", "2")


def test_torchrun_trains_and_only_rank_0_writes(ddp_run):
    out_dir, done = ddp_run
    assert "device cpu x 2 processes" in done.stdout
    # Printed by rank 0 alone: one line per epoch, one summary.
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("epoch ")] == ["1", "2"]
    assert sum(line.startswith("test accuracy:") for line in done.stdout.splitlines()) == 1
    for name in ("best.pt", "last.pt", "args.json", "metrics.jsonl", "results.json", "curves.png",
                 "confusion_test.png", "confusion_valid.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert not list(out_dir.glob("*.tmp"))
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert load_checkpoint(out_dir / "last.pt")["epoch"] == 2


def test_torchrun_evaluation_equals_single_process_evaluation(ddp_run, local_cache, tmp_path):
    out_dir, _ = ddp_run
    sharded = json.loads((out_dir / "results.json").read_text())
    single = train.main(train_args(local_cache, tmp_path, "--eval-only", "--checkpoint", str(out_dir / "best.pt"),
                                   "--device", "cpu"))
    for split in ("valid", "test"):
        assert single[split]["clip_acc"] == sharded[split]["clip_acc"], split
        assert single[split]["segment_acc"] == sharded[split]["segment_acc"], split
        assert single[split]["confusion_matrix"] == sharded[split]["confusion_matrix"], split
        # The loss sees every probability: ranks evaluating with other weights or
        # BatchNorm statistics than the checkpoint's would move it.
        assert single[split]["loss"] == pytest.approx(sharded[split]["loss"], rel=1e-5), split


def test_torchrun_resume_continues_exactly(ddp_run, local_cache, tmp_path):
    full_dir, _ = ddp_run
    torchrun(local_cache, tmp_path, "--epochs", "1")
    done = torchrun(local_cache, tmp_path, "--epochs", "2", "--resume")
    assert "resuming after epoch 1" in done.stdout
    resumed, full = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(full_dir / "last.pt")
    assert resumed["epoch"] == full["epoch"] == 2
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    timing = ("segments_per_s", "epoch_seconds")
    strip = lambda h: {k: v for k, v in h.items() if k not in timing}  # noqa: E731
    assert [strip(h) for h in resumed["history"]] == [strip(h) for h in full["history"]]
    assert np.isclose(json.loads((tmp_path / "results.json").read_text())["test_acc"],
                      json.loads((full_dir / "results.json").read_text())["test_acc"])


def test_torchrun_resume_without_a_run_fails_once_with_a_message(local_cache, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--cache", str(local_cache), "--out-dir", str(tmp_path / "none"),
           "--device", "cpu", "--resume"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert output.count("error: --resume: checkpoint") == 1, output[-3000:]
    assert "last.pt does not exist" in output
