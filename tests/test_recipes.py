"""The accuracy-study tools: the MFCC + SVM reference and the seeded recipe sweep."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import mfcc_svm  # noqa: E402
import report  # noqa: E402
import sweep  # noqa: E402
from cache.reader import CacheError, FeatureCache  # noqa: E402
from tests.conftest import TINY_SECONDS  # noqa: E402


def test_svm_reference_scores_clips_and_reports_like_a_run(tiny_cache, tmp_path, capsys):
    summary = mfcc_svm.main(mfcc_svm.get_args_parser().parse_args(
        ["--cache", str(tiny_cache), "--out-dir", str(tmp_path / "svm")]))
    cache = FeatureCache(tiny_cache)
    # Synthetic genres differ in timbre: MFCC statistics separate them well above chance (1/8).
    assert summary["valid_acc"] >= 0.5 and summary["svm"]["C"] in mfcc_svm.C_GRID
    assert summary["test"]["clips"] == int((cache.rows("test")["version"] == 0).sum())
    assert np.trace(summary["test"]["confusion_matrix"]) == round(summary["test_acc"] * summary["test"]["clips"])
    run = report.read_run(tmp_path / "svm")  # report.py reads it beside the trained runs
    assert (run.valid_acc, run.data_fingerprint) == (summary["valid_acc"], cache.data_fingerprint)
    assert "chosen on valid" in capsys.readouterr().out


def test_svm_vectors_are_mfcc_and_delta_statistics(tiny_cache):
    cache = FeatureCache(tiny_cache)
    X, y = mfcc_svm.clip_vectors(cache, "valid")
    n_mfcc = cache.feature_settings("mfcc")["n_mfcc"]
    assert X.shape == (len(y), 4 * n_mfcc)
    first = next(i for i in cache.done_rows("valid") if cache.rows("valid")["version"][i] == 0)
    coefficients = np.asarray(cache.array("valid", "mfcc").row(first), dtype=np.float64)[:n_mfcc]
    np.testing.assert_allclose(X[0, :n_mfcc], coefficients.mean(1))
    np.testing.assert_allclose(X[0, n_mfcc:2 * n_mfcc], coefficients.std(1))


def test_svm_reference_needs_the_mfcc_feature(tiny_gtzan, tmp_path):
    import build_cache
    from tests.conftest import build_args

    out = tmp_path / "mel.h5"
    build_cache.main(build_args(tiny_gtzan, out, "--features", "mel"))
    with pytest.raises(CacheError, match="no feature 'mfcc'.*--features including 'mfcc'"):
        mfcc_svm.main(mfcc_svm.get_args_parser().parse_args(["--cache", str(out), "--out-dir", str(tmp_path)]))


def test_sweep_runs_every_seed_once_and_resumes(tiny_gtzan, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "CACHES", {"tiny": ["--features", "mel", "--duration", str(TINY_SECONDS),
                                                   "--jobs", "1"]})
    quick = ["--feature", "mel", "--epochs", "1", "--segment-seconds", "2", "--batch-size", "16",
             "--crops-per-clip", "1"]
    monkeypatch.setattr(sweep, "RECIPES", {"quick": ("tiny", quick)})
    flags = ["--data", str(tiny_gtzan), "--caches", str(tmp_path / "caches"), "--runs", str(tmp_path / "runs"),
             "--seeds", "0,1", "--parallel", "2"]
    sweep.main(sweep.get_args_parser().parse_args(flags))
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["quick_s0", "quick_s1"]
    assert [json.loads((r / "args.json").read_text())["seed"] for r in runs] == [0, 1]
    assert (tmp_path / "caches" / "tiny.h5").is_file()
    capsys.readouterr()
    sweep.main(sweep.get_args_parser().parse_args(flags))  # finished runs are not trained again
    assert "started" not in capsys.readouterr().out
    assert [r.name for r in report.recipes(report.read_runs(runs))] == ["quick"]


def test_sweep_refuses_unknown_recipes():
    with pytest.raises(SystemExit, match="unknown recipe.*nope.*choose from"):
        sweep.main(sweep.get_args_parser().parse_args(["--only", "nope"]))


def test_sweep_lists_recipes_with_their_flags(capsys):
    sweep.main(sweep.get_args_parser().parse_args(["--list"]))
    out = capsys.readouterr().out
    for name, (cache, flags) in sweep.RECIPES.items():
        assert f"{name}: cache {cache}" in out and " ".join(flags) in out


def test_cv_folds_resplit_train_and_valid_in_contiguous_blocks(tiny_gtzan, tmp_path):
    import cv_folds
    from pipeline.splits import read_split_lists

    source = read_split_lists(tiny_gtzan)
    pool = {split: [c.listed for c in source.clips[split]] for split in ("train", "valid")}
    paths = cv_folds.main(cv_folds.get_args_parser().parse_args(["make", str(tiny_gtzan), str(tmp_path),
                                                                 "--folds", "3"]))
    held_out = []
    for fold in paths:
        lists = read_split_lists(fold)  # a valid data folder: every listed file resolves
        train, valid = ([c.listed for c in lists.clips[s]] for s in ("train", "valid"))
        assert sorted(train + valid) == sorted(pool["train"] + pool["valid"]) and not set(train) & set(valid)
        assert [c.listed for c in lists.clips["test"]] == [c.listed for c in source.clips["test"]]
        for label in lists.labels:  # each genre's held-out clips are one contiguous block of its clips
            ordered = [p for p in pool["train"] + pool["valid"] if p.startswith(label + "/")]
            block = [p for p in valid if p.startswith(label + "/")]
            start = ordered.index(block[0])
            assert ordered[start:start + len(block)] == block
        held_out += valid
    assert sorted(held_out) == sorted(pool["train"] + pool["valid"])  # every clip held out exactly once


def test_cv_folds_refuse_more_folds_than_clips(tiny_gtzan, tmp_path):
    import cv_folds

    with pytest.raises(ValueError, match="fewer clips than --folds 50"):
        cv_folds.write_folds(tiny_gtzan, tmp_path, folds=50)
    with pytest.raises(ValueError, match="--folds 1: need at least 2"):
        cv_folds.write_folds(tiny_gtzan, tmp_path, folds=1)


def test_cv_summary_pools_held_out_clips_over_folds(tmp_path, capsys):
    import cv_folds

    for fold, (acc, clips) in enumerate([(0.5, 10), (1.0, 30)]):
        for seed in (0, 1):
            run = tmp_path / f"fold{fold}" / f"cnn_s{seed}"
            run.mkdir(parents=True)
            (run / "results.json").write_text(json.dumps({"valid_acc": acc, "valid": {"clips": clips}}))
    pooled = cv_folds.main(cv_folds.get_args_parser().parse_args(["summary", str(tmp_path)]))
    assert pooled["cnn"] == {"folds": {"fold0": 0.5, "fold1": 1.0}, "pooled": 0.875, "clips": 80}
    assert "| cnn | 0.500 | 1.000 | 0.875 (80 clips) |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no finished runs"):
        cv_folds.main(cv_folds.get_args_parser().parse_args(["summary", str(tmp_path / "none")]))
