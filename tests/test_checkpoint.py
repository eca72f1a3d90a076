"""The one checkpoint schema: format 1 as train.py wrote it before training/ existed, and records of
older and newer train.py versions, still load, predict and evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
import train
from tests.test_predict import tiny_runs
from training.checkpoint import load_checkpoint, load_members, recorded_config
from training.errors import CheckpointError

# What a best.pt of train.py held at commit 3d7fe5e (before training/), and its "args" in order.
FORMAT_1_KEYS = {"format", "model", "model_config", "feature", "feature_settings", "labels", "sample_rate", "cache",
                 "cache_fingerprint", "data_fingerprint", "segment_frames", "parameters", "normalization", "args",
                 "state_dict", "epoch", "best", "history", "optimizer", "scheduler", "scaler", "torch_rng"}
FORMAT_1_ARGS = ["cache", "feature", "model", "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov",
                 "weight_decay", "l1", "mixup", "mask_bins", "mask_frames", "dropout", "model_set", "schedule",
                 "warmup_epochs", "lr_patience", "lr_factor", "min_lr", "segment_seconds", "crops_per_clip",
                 "eval_hop_seconds", "merge_train_valid", "seed", "device", "amp", "compile", "workers", "out_dir",
                 "resume", "overwrite", "eval_only", "checkpoint", "no_progress"]
# Flags that train.py versions older than the checkpoint format did not record yet.
LATER_FLAGS = ("mixup", "mask_bins", "mask_frames", "eval_hop_seconds", "merge_train_valid", "schedule",
               "warmup_epochs", "crops_per_clip", "overwrite")


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def rewritten(runs, folder: Path, change) -> Path:
    """The mel run's best.pt, changed by ``change(ckpt)`` and saved with plain torch.save, in ``folder``."""
    ckpt = torch.load(runs["mel"] / "best.pt", weights_only=True)
    change(ckpt)
    folder.mkdir()
    torch.save(ckpt, folder / "best.pt")
    return folder / "best.pt"


def test_checkpoints_keep_format_1(runs):
    ckpt = torch.load(runs["mel"] / "best.pt", weights_only=True)
    assert ckpt["format"] == 1 and set(ckpt) == FORMAT_1_KEYS
    assert list(ckpt["args"]) == FORMAT_1_ARGS
    assert json.loads((runs["mel"] / "args.json").read_text()) == ckpt["args"]


def older_args(ckpt):
    for name in LATER_FLAGS:
        ckpt["args"].pop(name)


def newer_args(ckpt):
    ckpt["args"]["a_flag_of_a_later_version"] = [1, 2]


@pytest.mark.parametrize("change", [older_args, newer_args], ids=["older", "newer"])
def test_records_of_other_versions_load_evaluate_and_predict(change, runs, tmp_path):
    path = rewritten(runs, tmp_path / "run", change)
    (member,) = load_members([path])
    config = recorded_config(member.ckpt)
    assert (config.model, config.feature, config.eval_hop_seconds, config.merge_train_valid) == \
        ("cnn1d", "mel", None, False)
    results = train.main(train.get_args_parser().parse_args(
        ["--eval-only", "--checkpoint", str(path), "--cache", str(runs["cache"]), "--out-dir", str(tmp_path / "eval"),
         "--no-progress"]))
    saved = json.loads((runs["mel"] / "results.json").read_text())
    assert (results["valid_acc"], results["test_acc"]) == (saved["valid_acc"], saved["test_acc"])
    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal(22050 * 3), 22050)
    output = predict.main(predict.get_args_parser().parse_args([str(song), "--checkpoint", str(path)]))
    assert output["failed"] == 0
    assert sum(output["files"][0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_another_format_is_refused_saying_what_to_do(runs, tmp_path):
    path = rewritten(runs, tmp_path / "future", lambda ckpt: ckpt.update(format=2))
    with pytest.raises(CheckpointError, match=r"has checkpoint format 2, this code reads 1; retrain or use"):
        load_checkpoint(path)
