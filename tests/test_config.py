"""training.config: one dataclass per mode, the parsers' defaults, records of runs, one validate()."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

import evaluate
import predict
import train
from training.config import DEVICES, OPTIMIZER_NAMES, EvalConfig, PredictConfig, TrainConfig
from training.errors import EvaluateError, PredictError, TrainError
from training.optim import OPTIMIZERS
from training.runtime import resolve_device


def parsed(parser: argparse.ArgumentParser, *argv) -> argparse.Namespace:
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("script, config, argv", [
    (train, TrainConfig, []),
    (evaluate, EvalConfig, ["--checkpoint", "a.pt"]),
    (predict, PredictConfig, ["song.wav", "--checkpoint", "a.pt"]),
])
def test_every_flag_is_a_config_field_with_the_parsers_default(script, config, argv):
    args = parsed(script.get_args_parser(), *argv)
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(vars(args)) == fields
    built = config.from_args(args)
    for name, value in vars(args).items():
        if name not in {"checkpoint", "inputs", "model_set"} or value is None:
            assert getattr(built, name) == value, name
        else:
            assert list(getattr(built, name)) == list(value), name


def test_train_config_records_the_flags_as_args_did():
    # args.json and a checkpoint's "args" held vars(args); the record keeps its keys, order and values.
    args = parsed(train.get_args_parser(), "--model-set", "channels=8", "--model-set", "kernel_sizes=4,4,2",
                  "--dropout", "0.2", "--no-progress")
    record = TrainConfig.from_args(args).to_dict()
    assert list(record) == list(vars(args)) and record == vars(args)
    assert json.loads(json.dumps(record)) == record  # plain values only
    assert TrainConfig.from_dict(record) == TrainConfig.from_args(args)


def test_a_record_of_another_version_reads_with_defaults_and_without_unknown_keys():
    older = {"model": "resnet", "feature": "mel", "lr": 0.01}  # before most flags existed
    newer = {**TrainConfig().to_dict(), "model": "crnn", "a_future_flag": [1, 2]}
    assert TrainConfig.from_dict(older) == TrainConfig(model="resnet", feature="mel", lr=0.01)
    assert TrainConfig.from_dict(newer) == TrainConfig(model="crnn")
    assert TrainConfig.from_dict({}).eval_hop_seconds is None and not TrainConfig.from_dict({}).merge_train_valid


def test_configs_are_frozen_and_derived_values_make_new_ones():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 4
    filled = config.with_paths()
    assert (filled.cache, filled.out_dir) == ("cache.h5", "runs/latest")
    assert (config.cache, config.out_dir) == (None, None)


@pytest.mark.parametrize("changes, message", [
    ({"model": "transformer"}, "unknown model 'transformer'; choose one of: cnn1d"),
    ({"optimizer": "lion"}, "unknown optimizer 'lion'; choose one of: sgd, adam, adamw, rmsprop"),
    ({"schedule": "step"}, "unknown --schedule 'step'"),
    ({"lr": float("nan")}, "--lr nan: must be a finite number > 0"),
    ({"lr": True}, "--lr True: must be a finite number > 0"),
    ({"dropout": 1.0}, "--dropout 1.0: must be a finite number in [0, 1)"),
    ({"epochs": 2.5}, "--epochs 2.5: must be an integer at least 1"),
    ({"seed": 2 ** 32}, f"--seed {2 ** 32}: must be an integer between 0 and {2 ** 32 - 1}"),
    ({"workers": -1}, "--workers -1: must be an integer at least 0 (0: load in the main process)"),
    ({"schedule": "plateau", "lr": 1e-6}, "--lr 1e-06 is below --min-lr 1e-05"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict each other"),
    ({"resume": True, "eval_only": True}, "--resume and --eval-only contradict each other"),
    ({"checkpoint": "a.pt"}, "--checkpoint a.pt is read by --eval-only only"),
])
def test_train_config_validate_names_the_flag(changes, message):
    with pytest.raises(TrainError) as caught:
        dataclasses.replace(TrainConfig(), **changes).validate()
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("config, error, message", [
    (EvalConfig(batch_size=0), EvaluateError, "--batch-size 0: must be at least 1"),
    (EvalConfig(workers=-1), EvaluateError, "--workers -1: must be 0 or more"),
    (PredictConfig(top=0), PredictError, "--top 0: must be at least 1"),
    (PredictConfig(batch_size=0), PredictError, "--batch-size 0: must be at least 1"),
])
def test_eval_and_predict_configs_validate_their_flags(config, error, message):
    with pytest.raises(error, match=message):
        config.validate()


def test_model_settings_follow_the_one_key_value_rule():
    config = TrainConfig(model_set=("channels=64", "kernel_sizes=8,8,4", "padding=valid", "pooling=None"),
                         dropout=0.3)
    assert config.model_settings() == {"channels": 64, "kernel_sizes": [8, 8, 4], "padding": "valid",
                                       "pooling": None, "dropout": 0.3}
    with pytest.raises(TrainError, match=r"--model-set: model setting 'channels': expected KEY=VALUE"):
        TrainConfig(model_set=("channels",)).model_settings()


def test_one_list_of_optimizers_and_devices():
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
    for script, argv in ((train, []), (evaluate, ["--checkpoint", "a.pt"]), (predict, ["x", "--checkpoint", "a"])):
        device = next(a for a in script.get_args_parser()._actions if a.dest == "device")
        assert tuple(device.choices) == DEVICES, script.__name__
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(PredictError, match="--device tpu"):
        resolve_device("tpu", error=PredictError)
