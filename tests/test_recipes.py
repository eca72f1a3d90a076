"""The accuracy-study tools: the MFCC + SVM reference and the seeded recipe sweep.

The cross-validation tools (bench/cv_folds.py, bench/cv_study.py) are tested in test_cv_study.py."""
from __future__ import annotations

import json

import numpy as np
import pytest


import mfcc_svm
from training.report import recipes
from training.runs import read_run, read_runs
import sweep
from cache.reader import CacheError, FeatureCache
from tests.conftest import TINY_SECONDS


def test_svm_reference_scores_clips_and_reports_like_a_run(tiny_cache, tmp_path, capsys):
    summary = mfcc_svm.main(mfcc_svm.get_args_parser().parse_args(
        ["--cache", str(tiny_cache), "--out-dir", str(tmp_path / "svm")]))
    cache = FeatureCache(tiny_cache)
    # Synthetic genres differ in timbre: MFCC statistics separate them well above chance (1/8).
    assert summary["valid_acc"] >= 0.5 and summary["svm"]["C"] in mfcc_svm.C_GRID
    assert summary["test"]["clips"] == int((cache.rows("test")["version"] == 0).sum())
    assert np.trace(summary["test"]["confusion_matrix"]) == round(summary["test_acc"] * summary["test"]["clips"])
    run = read_run(tmp_path / "svm")  # report.py reads it beside the trained runs
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
    assert [r.name for r in recipes(read_runs(runs))] == ["quick"]


def test_sweep_refuses_unknown_recipes():
    from common.errors import UserError  # inside: older code has no common package

    with pytest.raises(UserError, match="unknown recipe.*nope.*choose from"):
        sweep.main(sweep.get_args_parser().parse_args(["--only", "nope"]))


def test_sweep_lists_recipes_with_their_flags(capsys):
    sweep.main(sweep.get_args_parser().parse_args(["--list"]))
    out = capsys.readouterr().out
    for name, (cache, flags) in sweep.RECIPES.items():
        assert f"{name}: cache {cache}" in out and " ".join(flags) in out
