"""Run artefacts: results.json in one schema for train.py, evaluate.py and the SVM reference."""
from __future__ import annotations

import json

import pytest


import evaluate
import mfcc_svm
from tests.test_predict import tiny_runs
from training.artifacts import results_summary, write_results

# What every results.json has (report.py and bench/cv_folds.py read these), and every split in it.
COMMON_KEYS = {"valid_acc", "test_acc", "valid_trained_on", "labels", "valid", "test"}
SPLIT_KEYS = {"clip_acc", "per_class_acc", "confusion_matrix", "clips"}


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def test_train_evaluate_and_svm_write_one_schema(runs, tiny_cache, tmp_path):
    trained = json.loads((runs["mel"] / "results.json").read_text())
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--cache", str(runs["cache"]), "--checkpoint", str(runs["mel"] / "best.pt"), "--device", "cpu",
         "--no-progress", "--out", str(tmp_path / "ensemble.json")]))
    ensemble = json.loads((tmp_path / "ensemble.json").read_text())
    mfcc_svm.main(mfcc_svm.get_args_parser().parse_args(["--cache", str(tiny_cache), "--out-dir",
                                                         str(tmp_path / "svm")]))
    svm = json.loads((tmp_path / "svm" / "results.json").read_text())
    for results in (trained, ensemble, svm):
        assert COMMON_KEYS <= set(results)
        keys = [key for key in results if key != "cache"]  # evaluate.py adds the cache it read, last
        assert keys[:2] == ["valid_acc", "test_acc"] and keys[-2:] == ["valid", "test"]
        for split in ("valid", "test"):
            assert SPLIT_KEYS <= set(results[split])
    # Segment scores where segments were scored: a trained run and an ensemble, not the SVM.
    assert {"valid_segment_acc", "test_segment_acc"} <= set(trained) & set(ensemble)
    assert not {"valid_segment_acc", "test_segment_acc"} & set(svm)
    assert (tmp_path / "svm" / "metrics.jsonl").read_text() == ""
    assert json.loads((tmp_path / "svm" / "args.json").read_text())["model"] == "mfcc-svm"


def test_results_with_a_non_finite_number_are_not_written(tmp_path):
    report = {"clip_acc": float("nan"), "segment_acc": 0.5}
    summary = results_summary({"valid": report, "test": report}, labels=["a", "b"], trained_on_valid=False,
                              facts={})
    with pytest.raises(ValueError):  # a NaN in results.json would hide a failed run
        write_results(tmp_path / "results.json", summary)
    assert list(tmp_path.iterdir()) == []
