"""From segment probabilities to clip scores, and from clip predictions to a split's report.

A clip's probabilities are the mean of its segments'; an ensemble's are the mean of
its members' clip probabilities. :func:`split_report` gives the fields of a split in
results.json (see :mod:`training.artifacts`).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix


def clip_scores(probs: np.ndarray, clip_ids: np.ndarray, *, clip_labels: np.ndarray, n_classes: int) -> dict:
    """Segment- and clip-level scores; clip probabilities are the mean over its segments.

    Parameters
    ----------
    probs : np.ndarray
        ``(segments, n_classes)`` segment probabilities.
    clip_ids : np.ndarray
        ``(segments,)`` the clip of each segment, indexing ``clip_labels``.
    clip_labels : np.ndarray
        ``(clips,)`` label index of every clip.

    Returns
    -------
    dict
        ``loss`` (mean segment cross-entropy), ``segment_acc``, ``clip_acc``,
        ``clip_pred`` ``(clips,)`` and ``clip_probs`` ``(clips, n_classes)``.
    """
    seg_labels = clip_labels[clip_ids]
    n_clips = len(clip_labels)
    clip_probs = np.zeros((n_clips, n_classes))
    np.add.at(clip_probs, clip_ids, probs)
    clip_probs /= np.bincount(clip_ids, minlength=n_clips)[:, None]
    clip_pred = clip_probs.argmax(1)
    eps = 1e-12
    return {
        "loss": float(-np.log(probs[np.arange(len(probs)), seg_labels] + eps).mean()),
        "segment_acc": float(accuracy_score(seg_labels, probs.argmax(1))),
        "clip_acc": float(accuracy_score(clip_labels, clip_pred)),
        "clip_pred": clip_pred,
        "clip_probs": clip_probs,
    }


def ensemble_scores(predictions: list[tuple[np.ndarray, np.ndarray]], *, clip_labels: np.ndarray,
                    n_classes: int) -> dict:
    """Scores of an ensemble in :func:`clip_scores`'s form.

    ``predictions`` holds each member's ``(probs, clip_ids)``. Clip probabilities are
    the mean over members of each member's clip probabilities. When every member cut
    the same segments, their segment probabilities are averaged first, which gives the
    same clip probabilities and also a segment accuracy and loss; otherwise those two
    are None.
    """
    probs, clip_ids = predictions[0]
    if all(p.shape == probs.shape and np.array_equal(c, clip_ids) for p, c in predictions):
        return clip_scores(np.mean([p for p, _ in predictions], axis=0), clip_ids, clip_labels=clip_labels,
                           n_classes=n_classes)
    clip_probs = np.mean([clip_scores(p, c, clip_labels=clip_labels, n_classes=n_classes)["clip_probs"]
                          for p, c in predictions], axis=0)
    clip_pred = clip_probs.argmax(1)
    return {"loss": None, "segment_acc": None,
            "clip_acc": float(accuracy_score(clip_labels, clip_pred)),
            "clip_pred": clip_pred, "clip_probs": clip_probs}


def clip_report(y_true, y_pred, labels) -> dict:
    """Clip accuracy, per-class accuracy (None for a class with no clips), confusion matrix
    and clip count of one split: the fields of results.json that report.py reads.

    >>> clip_report([0, 0, 1], [0, 1, 1], ["a", "b", "c"])["per_class_acc"]
    {'a': 0.5, 'b': 1.0, 'c': None}
    """
    matrix = confusion_matrix(y_true, y_pred, labels=range(len(labels)))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = matrix.diagonal() / matrix.sum(1)
    return {"clip_acc": float(accuracy_score(y_true, y_pred)),
            "per_class_acc": {label: (None if math.isnan(v) else float(v)) for label, v in zip(labels, per_class)},
            "confusion_matrix": matrix.tolist(),
            "clips": int(len(y_true))}


def split_report(scores: dict, *, clip_labels: np.ndarray, labels) -> dict:
    """:func:`clip_report` of one split's clip predictions, with its segment accuracy and loss."""
    return {**clip_report(clip_labels, scores["clip_pred"], labels),
            "segment_acc": scores["segment_acc"], "loss": scores["loss"]}
