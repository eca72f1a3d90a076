"""The one checkpoint schema: files written before training/ existed still load, predict and evaluate;
new ones have the same keys; one member loader for predict and evaluate."""
from __future__ import annotations

import json
import shutil
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

# A best.pt written by train.py at commit 3d7fe5e (before the training/ package), with
#   python -m pipeline.synthetic DATA --clips-per-genre 4 --seconds 4 --seed 7
#   python build_cache.py --data DATA --out cache.h5 --features mfcc --duration 4 --augment 0 --jobs 1
#   python train.py --cache cache.h5 --feature mfcc --model cnn1d --model-set channels=4 --epochs 1 \
#       --segment-seconds 2 --optimizer sgd --momentum 0 --batch-size 16 --crops-per-clip 1 --out-dir run
OLD_CHECKPOINT = Path(__file__).resolve().parent / "data" / "checkpoint_format1.pt"


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


@pytest.fixture
def old_checkpoint(tmp_path) -> Path:
    folder = tmp_path / "old_run"
    folder.mkdir()
    return Path(shutil.copy(OLD_CHECKPOINT, folder / "best.pt"))


def test_a_checkpoint_written_before_loads_with_its_config(old_checkpoint):
    (member,) = load_members([old_checkpoint])
    config = recorded_config(member.ckpt)
    assert (config.model, config.feature, config.model_set, config.optimizer) == ("cnn1d", "mfcc", ("channels=4",),
                                                                                   "sgd")
    assert member.labels == tuple(sorted(member.labels)) and len(member.labels) == 8
    assert member.model.config["channels"] == 4 and not member.model.training


def test_a_checkpoint_written_before_classifies_audio(old_checkpoint, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, 0.1 * np.random.default_rng(0).standard_normal(22050 * 3), 22050)
    output = predict.main(predict.get_args_parser().parse_args([str(song), "--checkpoint", str(old_checkpoint)]))
    assert output["failed"] == 0
    assert sum(output["files"][0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_checkpoint_written_before_evaluates_on_a_cache_of_today(old_checkpoint, tiny_cache, tmp_path, capsys):
    results = train.main(train.get_args_parser().parse_args(
        ["--eval-only", "--checkpoint", str(old_checkpoint), "--cache", str(tiny_cache),
         "--out-dir", str(tmp_path / "eval"), "--no-progress"]))
    assert 0.0 <= results["test_acc"] <= 1.0 and results["test"]["clips"] == 16
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["test_acc"] == results["test_acc"]
    assert "trained on another cache" in capsys.readouterr().err


def test_new_checkpoints_have_the_keys_of_old_ones(runs):
    old = torch.load(OLD_CHECKPOINT, weights_only=True)
    new = torch.load(runs["mel"] / "best.pt", weights_only=True)
    assert set(new) == set(old)
    assert list(new["args"]) == list(old["args"])
    assert new["format"] == old["format"] == 1


def test_another_format_is_refused_saying_what_to_do(runs, tmp_path):
    ckpt = torch.load(runs["mel"] / "best.pt", weights_only=True)
    ckpt["format"] = 2
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"has checkpoint format 2, this code reads 1; retrain or use"):
        load_checkpoint(tmp_path / "future.pt")
