"""evaluate.py: one checkpoint reproduces its run, ensembles average clip probabilities."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import evaluate
from tests.test_predict import tiny_runs
from training.checkpoint import load_checkpoint, load_members, save_checkpoint
from training.ensemble import ensemble_datasets, member_segments
from training.scoring import clip_scores


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def evaluate_args(cache, checkpoints, *extra):
    argv = ["--cache", str(cache), "--device", "cpu", "--no-progress", *map(str, extra)]
    for ckpt in checkpoints:
        argv += ["--checkpoint", str(ckpt)]
    return evaluate.get_args_parser().parse_args(argv)


def member_clip_probs(path, cache, split) -> tuple[np.ndarray, np.ndarray]:
    """One member's clip probabilities ``(clips, n_classes)`` and the clips' labels."""
    (member,) = load_members([path])
    dataset = ensemble_datasets([member], cache)[0][split]
    probs, clip_ids = member_segments(member, dataset, batch_size=64, workers=0, device="cpu",
                                      amp=False, progress=False)
    scores = clip_scores(probs, clip_ids, clip_labels=dataset.clip_labels, n_classes=len(dataset.labels))
    return scores["clip_probs"], dataset.clip_labels


def test_one_checkpoint_reproduces_its_run(runs, tmp_path):
    summary = evaluate.main(evaluate_args(runs["cache"], [runs["mel"] / "best.pt"], "--out", tmp_path / "one.json"))
    saved = json.loads((runs["mel"] / "results.json").read_text())
    for key in ("valid_acc", "test_acc", "valid_segment_acc", "test_segment_acc"):
        assert summary[key] == pytest.approx(saved[key]), key
    for split in ("valid", "test"):
        assert summary[split]["confusion_matrix"] == saved[split]["confusion_matrix"]
    assert summary["members"][0]["valid_acc"] == pytest.approx(saved["valid_acc"])


def test_ensemble_of_two_checkpoints_evaluates(runs, tmp_path):
    ckpts = [runs["mel"] / "best.pt", runs["mfcc"] / "best.pt"]
    out = tmp_path / "ensemble" / "results.json"
    summary = evaluate.main(evaluate_args(runs["cache"], ckpts, "--out", out))
    for split in ("valid", "test"):
        (mel, labels), (mfcc, _) = (member_clip_probs(c, runs["cache"], split) for c in ckpts)
        expected = accuracy_score(labels, ((mel + mfcc) / 2).argmax(1))
        assert summary[f"{split}_acc"] == pytest.approx(expected)
        assert [m[f"{split}_acc"] for m in summary["members"]] == pytest.approx(
            [accuracy_score(labels, p.argmax(1)) for p in (mel, mfcc)])
        matrix = np.array(summary[split]["confusion_matrix"])
        assert matrix.sum() == len(labels) and np.trace(matrix) / matrix.sum() == pytest.approx(expected)
    # Same 2 s segments at the same frame rate: a segment-level score exists too.
    assert 0.0 <= summary["valid_segment_acc"] <= 1.0
    saved = json.loads(out.read_text())
    assert saved["checkpoints"] == [str(c) for c in ckpts] and saved["valid_acc"] == summary["valid_acc"]
    for split in ("valid", "test"):
        assert out.with_name(f"results_confusion_{split}.png").read_bytes()[:4] == b"\x89PNG"


def test_members_cutting_other_segments_still_average_clips(runs, tmp_path, capsys):
    ckpt = load_checkpoint(runs["mfcc"] / "best.pt")
    ckpt["segment_frames"] = 120  # ~2.8 s segments: another grid than the mel member's
    save_checkpoint(ckpt, tmp_path / "long.pt")
    ckpts = [runs["mel"] / "best.pt", tmp_path / "long.pt"]
    summary = evaluate.main(evaluate_args(runs["cache"], ckpts))
    assert summary["valid_segment_acc"] is None and summary["test_segment_acc"] is None
    assert "n/a" in capsys.readouterr().out
    (a, labels), (b, _) = (member_clip_probs(c, runs["cache"], "test") for c in ckpts)
    assert summary["test_acc"] == pytest.approx(accuracy_score(labels, (a + b).argmax(1)))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(labels=c["labels"][::-1]), "different labels"),
    (lambda c: c.update(feature="chroma"), "chroma"),
    (lambda c: c["feature_settings"].update(n_mels=64), "other settings"),
], ids=["labels", "feature", "feature_settings"])
def test_unusable_members_are_refused(runs, tmp_path, change, message):
    ckpt = load_checkpoint(runs["mfcc"] / "best.pt")
    change(ckpt)
    save_checkpoint(ckpt, tmp_path / "changed.pt")
    with pytest.raises(evaluate.EvaluateError, match=message):
        evaluate.main(evaluate_args(runs["cache"], [runs["mel"] / "best.pt", tmp_path / "changed.pt"]))


def test_missing_checkpoint_is_refused(runs, tmp_path):
    with pytest.raises(evaluate.EvaluateError, match="nothing.pt"):
        evaluate.main(evaluate_args(runs["cache"], [tmp_path / "nothing.pt"]))
