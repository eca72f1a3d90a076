"""Evaluate a checkpoint, or an ensemble of them, on a cache's valid and test clips.

    python evaluate.py --cache cache.h5 --checkpoint runs/a/best.pt --checkpoint runs/b/best.pt \\
        --out runs/ensemble.json

Every member reads its own feature from the cache and predicts every evaluation
segment as in training (train.py's datasets, segment and clip scoring); its clip
probabilities are then averaged over the members. The result has the schema of a run's
results.json (valid/test accuracy, per-class accuracy, confusion matrices), plus each
member's own accuracy. With one checkpoint this is ``train.py --eval-only``.

Checkpoints are read without unpickling anything but tensors and plain values; the
cache is locked (shared) while it is read, so a build cannot replace it meanwhile;
``--out`` is checked before any work and written atomically.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score

import train
from cache.dataset import SegmentDataset
from common.atomic import write_json
from common.cli import run
from common.errors import UserError
from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from report import check_output_file, plot_confusion

SPLITS = ("valid", "test")


class EvaluateError(UserError):
    """Checkpoints or a cache that cannot be evaluated together; the message says why."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("--cache", default=train.DEFAULT_CACHE,
                   help=f"feature cache holding every member's feature {fmt}")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint written by train.py; give it several times for an ensemble")
    p.add_argument("--out", default=None,
                   help="write the results as JSON here, and the confusion matrices beside it "
                        "(an existing file is replaced)")
    p.add_argument("--batch-size", type=int, default=64, help=f"segments per forward pass {fmt}")
    p.add_argument("--workers", type=int, default=0, help=f"DataLoader worker processes {fmt}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help=f"where to evaluate; auto picks cuda, then mps, then cpu {fmt}")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for cuda, off elsewhere)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


@dataclass
class Member:
    """One checkpoint with its model and its valid/test datasets on the cache."""
    path: Path
    ckpt: dict
    model: torch.nn.Module
    evals: dict[str, SegmentDataset]

    @property
    def trained_on_valid(self) -> bool:
        return bool((self.ckpt.get("args") or {}).get("merge_train_valid"))


def read_checkpoints(paths) -> list[tuple[Path, dict]]:
    """Load every checkpoint; refuse members that predict different labels."""
    if not paths:
        raise EvaluateError("no checkpoint given; pass --checkpoint RUN_DIR/best.pt")
    loaded = []
    for path in map(Path, paths):
        try:
            loaded.append((path, load_checkpoint(path)))
        except CheckpointError as exc:
            raise EvaluateError(str(exc)) from exc
    first, ckpt = loaded[0]
    for other, other_ckpt in loaded[1:]:
        if other_ckpt["labels"] != ckpt["labels"]:
            raise EvaluateError(f"checkpoints {first} and {other} predict different labels "
                                f"({ckpt['labels']} vs {other_ckpt['labels']}); an ensemble averages "
                                f"probabilities, so its members need the same labels in the same order")
    return loaded


def load_member(path: Path, ckpt: dict, cache_path, *, device) -> Member:
    """A checkpoint's model and evaluation datasets, refusing a cache it cannot read.

    The cache must hold the checkpoint's feature with the settings it was trained on
    and the same labels; segments and hop are the ones training evaluated with.
    """
    try:
        _, evals = train.checkpoint_eval_datasets(ckpt, path, cache_path)
        model = model_from_checkpoint(ckpt, device=device, path=path)
    except UserError as exc:
        raise EvaluateError(f"checkpoint {path}: {exc}") from exc
    return Member(path=path, ckpt=ckpt, model=model, evals=evals)


def check_same_clips(members: list[Member]) -> None:
    """Refuse members whose datasets hold other clips (a damaged cache: never expected)."""
    first = members[0]
    for other in members[1:]:
        for split in SPLITS:
            a, b = first.evals[split], other.evals[split]
            if not (np.array_equal(a.clip_paths, b.clip_paths) and np.array_equal(a.clip_labels, b.clip_labels)):
                raise EvaluateError(f"the {split} clips of feature {b.feature!r} ({other.path}) differ "
                                    f"from those of {a.feature!r} ({first.path}) in the cache; "
                                    f"rebuild the cache so that every feature has every clip")


def member_segments(member: Member, split: str, *, batch_size: int, workers: int, device, amp: bool,
                    progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Segment probabilities ``(segments, n_classes)`` and clip ids ``(segments,)`` of a split."""
    return train.gather_segments(member.model, member.evals[split], batch_size=batch_size,
                                 workers=workers, device=torch.device(device), amp=amp, ddp=train.Dist(),
                                 progress=progress, desc=f"{member.path.parent.name}/{split}")


def ensemble_scores(predictions: list[tuple[np.ndarray, np.ndarray]], dataset: SegmentDataset,
                    n_classes: int) -> dict:
    """Scores of the ensemble in ``train.clip_scores``'s form.

    Clip probabilities are the mean over members of each member's clip probabilities.
    When every member cut the same segments, their segment probabilities are averaged
    first, which gives the same clip probabilities and also a segment accuracy and
    loss; otherwise those two are None.
    """
    probs, clip_ids = predictions[0]
    if all(p.shape == probs.shape and np.array_equal(c, clip_ids) for p, c in predictions):
        return train.clip_scores(np.mean([p for p, _ in predictions], axis=0), clip_ids, dataset, n_classes)
    clip_probs = np.mean([train.clip_scores(p, c, dataset, n_classes)["clip_probs"]
                          for p, c in predictions], axis=0)
    clip_pred = clip_probs.argmax(1)
    return {"loss": None, "segment_acc": None,
            "clip_acc": float(accuracy_score(dataset.clip_labels, clip_pred)),
            "clip_pred": clip_pred, "clip_probs": clip_probs}


def evaluate_ensemble(members: list[Member], *, batch_size: int = 64, workers: int = 0, device="cpu",
                      amp: bool = False, progress: bool = False) -> dict:
    """Valid and test results of the ensemble (the schema of a run's results.json).

    Returns
    -------
    dict
        ``valid_acc``, ``test_acc``, ``valid_segment_acc``, ``test_segment_acc`` (None when
        the members cut different segments), ``valid_trained_on``, ``labels``,
        ``checkpoints``, ``members`` (each member's own ``valid_acc``/``test_acc``), and
        ``valid``/``test`` as ``train.final_report`` gives them.

    Examples
    --------
    >>> loaded = read_checkpoints(["runs/a/best.pt", "runs/b/best.pt"])       # doctest: +SKIP
    >>> members = [load_member(p, c, "cache.h5", device="cpu") for p, c in loaded]  # doctest: +SKIP
    >>> evaluate_ensemble(members)["test_acc"]                               # doctest: +SKIP
    0.79
    """
    check_same_clips(members)
    labels = list(members[0].ckpt["labels"])
    n_classes = len(labels)
    results, member_acc = {}, [{} for _ in members]
    for split in SPLITS:
        predictions = [member_segments(m, split, batch_size=batch_size, workers=workers, device=device,
                                       amp=amp, progress=progress) for m in members]
        for acc, (probs, clip_ids), member in zip(member_acc, predictions, members):
            acc[f"{split}_acc"] = train.clip_scores(probs, clip_ids, member.evals[split], n_classes)["clip_acc"]
        dataset = members[0].evals[split]
        results[split] = train.final_report(ensemble_scores(predictions, dataset, n_classes), dataset, labels)
    return {
        "valid_acc": results["valid"]["clip_acc"], "test_acc": results["test"]["clip_acc"],
        "valid_segment_acc": results["valid"]["segment_acc"],
        "test_segment_acc": results["test"]["segment_acc"],
        "valid_trained_on": any(m.trained_on_valid for m in members),
        "labels": labels,
        "checkpoints": [str(m.path) for m in members],
        "members": [{"checkpoint": str(m.path), "model": m.ckpt["model"], "feature": m.ckpt["feature"], **acc}
                    for m, acc in zip(members, member_acc)],
        **results,
    }


def write_outputs(summary: dict, out: Path) -> list[Path]:
    """results JSON at ``out``, confusion matrices ``<stem>_confusion_{valid,test}.png`` beside it."""
    check_output_file(out, flag="--out", error=EvaluateError)
    write_json(out, summary)
    written = [out]
    for split in SPLITS:
        png = out.with_name(f"{out.stem}_confusion_{split}.png")
        plot_confusion(summary[split]["confusion_matrix"], summary["labels"], png,
                       f"{split} (clip level), ensemble of {len(summary['checkpoints'])}")
        written.append(png)
    return written


def print_summary(summary: dict) -> None:
    for member in summary["members"]:
        print(f"member {member['checkpoint']} ({member['model']} on {member['feature']}): "
              f"valid {member['valid_acc']:.4f}  test {member['test_acc']:.4f}")
    shown = dict(summary)
    if summary["valid_segment_acc"] is None:
        print("segment accuracy: n/a (the members cut segments of different lengths)")
        shown.update(valid_segment_acc=float("nan"), test_segment_acc=float("nan"))
    train.print_results(shown, summary["labels"], summary["valid_trained_on"])


def main(args) -> dict:
    """Evaluate ``args.checkpoint`` (one or several) on ``args.cache``; returns the results."""
    if args.batch_size < 1:
        raise EvaluateError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise EvaluateError(f"--workers {args.workers}: must be 0 or more")
    if args.out is not None:
        check_output_file(args.out, flag="--out", error=EvaluateError)  # before any work
    try:
        device = train.resolve_device(args.device, train.Dist())
    except train.TrainError as exc:
        raise EvaluateError(str(exc)) from exc
    loaded = read_checkpoints(args.checkpoint)
    with ExitStack() as held:
        held.enter_context(train.cache_read_lock(args.cache))
        members = [load_member(path, ckpt, args.cache, device=device) for path, ckpt in loaded]
        amp = train.amp_enabled(device, args.amp)
        summary = {**evaluate_ensemble(members, batch_size=args.batch_size, workers=args.workers,
                                       device=device, amp=amp, progress=not args.no_progress),
                   "cache": str(args.cache)}
    print_summary(summary)
    if args.out is not None:
        for path in write_outputs(summary, Path(args.out)):
            print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted="nothing was written; run the same command again")
