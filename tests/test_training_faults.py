"""Faults the restructuring of training (issue 13) fixed, through entry points older code also has.

Each test imports only scripts and modules that existed before ``training/``, so that it
can be run against older code, where it fails for the fault it describes.
"""
from __future__ import annotations


import pytest
import torch


import evaluate
import mfcc_svm
from tests.test_predict import tiny_runs


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def test_svm_reference_checks_its_out_dir_before_any_work(tmp_path):
    # Before: the cache was read and the SVMs fitted first, then mkdir failed with a traceback.
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    with pytest.raises(ValueError, match=r"--out-dir .*taken is a file") as caught:
        mfcc_svm.main(mfcc_svm.get_args_parser().parse_args(["--cache", str(tmp_path / "no-cache.h5"),
                                                             "--out-dir", str(blocker)]))
    assert str(blocker) in str(caught.value)
    assert blocker.read_text() == "not a folder\n"


def test_a_member_that_cannot_be_rebuilt_is_named_once(runs, tmp_path):
    # Before: "checkpoint X: checkpoint X: cannot rebuild ...", one prefix from each of two layers.
    ckpt = torch.load(runs["mel"] / "best.pt", weights_only=True)
    ckpt["model_config"]["widths"] = 3  # not an argument of cnn1d
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    args = evaluate.get_args_parser().parse_args(["--cache", str(runs["cache"]), "--checkpoint", str(bad),
                                                  "--device", "cpu", "--no-progress"])
    with pytest.raises(evaluate.EvaluateError) as caught:
        evaluate.main(args)
    message = str(caught.value)
    assert "cannot rebuild its model 'cnn1d'" in message and "widths" in message
    assert message.count(str(bad)) == 1, message
