"""An ensemble of checkpoints on a cache's valid and test clips (``evaluate.py``).

Every member reads its own feature from the cache and predicts every evaluation
segment as in training (:func:`training.evaluation.member_datasets`); its clip
probabilities are then averaged over the members. The result has the schema of a
run's results.json (:mod:`training.artifacts`), plus each member's own accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from training.artifacts import SPLITS, print_results, results_summary, write_results
from training.checkpoint import Member
from training.data import SegmentDataset
from training.errors import EvaluateError
from training.evaluation import gather_segments, member_datasets
from training.folders import check_output_file
from training.plots import plot_confusion
from training.scoring import clip_scores, ensemble_scores, split_report


def ensemble_datasets(members: list[Member], cache_path) -> list[dict[str, SegmentDataset]]:
    """Each member's valid/test datasets on the cache at ``cache_path``.

    Refuses (:class:`EvaluateError`, naming the checkpoint) a cache a member cannot
    read, and members whose datasets hold other clips (a damaged cache: never expected).
    """
    datasets = []
    for member in members:
        try:
            datasets.append(member_datasets(member, cache_path))
        except UserError as exc:
            raise EvaluateError(f"checkpoint {member.path}: {exc}") from exc
    check_same_clips(members, datasets)
    return datasets


def check_same_clips(members: list[Member], datasets: list[dict[str, SegmentDataset]]) -> None:
    """Refuse members whose datasets hold other clips than the first member's."""
    for other, theirs in zip(members[1:], datasets[1:]):
        for split in SPLITS:
            a, b = datasets[0][split], theirs[split]
            if not (np.array_equal(a.clip_paths, b.clip_paths) and np.array_equal(a.clip_labels, b.clip_labels)):
                raise EvaluateError(f"the {split} clips of feature {b.feature!r} ({other.path}) differ "
                                    f"from those of {a.feature!r} ({members[0].path}) in the cache; "
                                    f"rebuild the cache so that every feature has every clip")


def member_segments(member: Member, dataset: SegmentDataset, *, batch_size: int, workers: int, device,
                    amp: bool, progress: bool, split: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Segment probabilities ``(segments, n_classes)`` and clip ids ``(segments,)`` of one member."""
    return gather_segments(member.model, dataset, batch_size=batch_size, workers=workers,
                           device=torch.device(device), amp=amp, progress=progress,
                           desc=f"{member.path.parent.name}/{split}")


def evaluate_ensemble(members: list[Member], datasets: list[dict[str, SegmentDataset]], *, batch_size: int = 64,
                      workers: int = 0, device="cpu", amp: bool = False, progress: bool = False) -> dict:
    """Valid and test results of the ensemble (the schema of a run's results.json).

    Returns
    -------
    dict
        ``valid_acc``, ``test_acc``, ``valid_segment_acc``, ``test_segment_acc`` (None when
        the members cut different segments), ``valid_trained_on``, ``labels``,
        ``checkpoints``, ``members`` (each member's own ``valid_acc``/``test_acc``), and
        ``valid``/``test`` as :func:`training.scoring.split_report` gives them.

    Examples
    --------
    >>> members = load_members(["runs/a/best.pt", "runs/b/best.pt"])            # doctest: +SKIP
    >>> evaluate_ensemble(members, ensemble_datasets(members, "cache.h5"))["test_acc"]  # doctest: +SKIP
    0.79
    """
    labels = list(members[0].labels)
    n_classes = len(labels)
    reports, member_acc = {}, [{} for _ in members]
    for split in SPLITS:
        predictions = [member_segments(m, d[split], batch_size=batch_size, workers=workers, device=device,
                                       amp=amp, progress=progress, split=split) for m, d in zip(members, datasets)]
        for acc, (probs, clip_ids), theirs in zip(member_acc, predictions, datasets):
            acc[f"{split}_acc"] = clip_scores(probs, clip_ids, clip_labels=theirs[split].clip_labels,
                                              n_classes=n_classes)["clip_acc"]
        clip_labels = datasets[0][split].clip_labels
        scores = ensemble_scores(predictions, clip_labels=clip_labels, n_classes=n_classes)
        reports[split] = split_report(scores, clip_labels=clip_labels, labels=labels)
    facts = {"checkpoints": [str(m.path) for m in members],
             "members": [{"checkpoint": str(m.path), "model": m.ckpt["model"], "feature": m.feature, **acc}
                         for m, acc in zip(members, member_acc)]}
    return results_summary(reports, labels=labels, trained_on_valid=any(m.trained_on_valid for m in members),
                           facts=facts)


def write_ensemble_outputs(summary: dict, out: Path) -> list[Path]:
    """results JSON at ``out``, confusion matrices ``<stem>_confusion_{valid,test}.png`` beside it."""
    check_output_file(out, flag="--out", error=EvaluateError)
    write_results(out, summary)
    written = [out]
    for split in SPLITS:
        png = out.with_name(f"{out.stem}_confusion_{split}.png")
        plot_confusion(summary[split]["confusion_matrix"], summary["labels"], png,
                       f"{split} (clip level), ensemble of {len(summary['checkpoints'])}")
        written.append(png)
    return written


def print_ensemble_summary(summary: dict) -> None:
    """Each member's accuracies, then the ensemble's as a run's (:func:`print_results`)."""
    for member in summary["members"]:
        print(f"member {member['checkpoint']} ({member['model']} on {member['feature']}): "
              f"valid {member['valid_acc']:.4f}  test {member['test_acc']:.4f}")
    shown = dict(summary)
    if summary["valid_segment_acc"] is None:
        print("segment accuracy: n/a (the members cut segments of different lengths)")
        shown.update(valid_segment_acc=float("nan"), test_segment_acc=float("nan"))
    print_results(shown, summary["labels"], summary["valid_trained_on"])
