"""What a run leaves in its folder, in one schema for training, evaluation and the SVM reference.

- ``results.json`` (:func:`results_summary`): ``valid_acc``, ``test_acc`` (clip level),
  ``valid_segment_acc``/``test_segment_acc`` (where segments were scored),
  ``valid_trained_on``, ``labels``, the writer's facts (parameters, fingerprints,
  members, ...), then one report per split (:func:`training.scoring.split_report`:
  ``clip_acc``, ``per_class_acc``, ``confusion_matrix``, ``clips``, ...).
- ``metrics.jsonl``: one JSON object per epoch (:func:`write_metrics`).
- ``args.json``: the run's config (:meth:`training.config.TrainConfig.to_dict`).
- ``run.json``: what the run is (``training.checkpoint.run_description``), readable
  without loading a checkpoint.

Every file is written atomically (:mod:`common.atomic`; JSON refuses NaN). Report
readers (:mod:`training.runs`) read these fields; none of this imports torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.atomic import write_json, write_text
from training.folders import clear_outputs

SPLITS = ("valid", "test")


def results_summary(reports: dict[str, dict], *, labels, trained_on_valid: bool, facts: dict) -> dict:
    """The results.json document of per-split ``reports`` (``valid`` and ``test``).

    Segment accuracies are given when the reports have them (None where members cut
    different segments); a clip-level scorer such as the SVM reference has none.

    >>> report = {"clip_acc": 0.5, "segment_acc": 0.4}
    >>> list(results_summary({"valid": report, "test": report}, labels=["a", "b"], trained_on_valid=False,
    ...                      facts={"parameters": 10}))[:7]
    ['valid_acc', 'test_acc', 'valid_segment_acc', 'test_segment_acc', 'valid_trained_on', 'labels', 'parameters']
    """
    summary = {"valid_acc": reports["valid"]["clip_acc"], "test_acc": reports["test"]["clip_acc"]}
    if all("segment_acc" in reports[split] for split in SPLITS):
        summary.update(valid_segment_acc=reports["valid"]["segment_acc"],
                       test_segment_acc=reports["test"]["segment_acc"])
    return {**summary, "valid_trained_on": trained_on_valid, "labels": list(labels), **facts,
            **{split: reports[split] for split in SPLITS}}


def write_results(path, summary: dict) -> None:
    """results.json (or evaluate.py's ``--out``), atomically."""
    write_json(path, summary)


def write_metrics(path, history: list[dict]) -> None:
    """metrics.jsonl, rewritten whole from the history, so a resumed run never repeats an epoch."""
    write_text(path, "".join(json.dumps(h, allow_nan=False) + "\n" for h in history))


def start_run_outputs(out_dir: Path, *, args: dict, description: dict, fresh: bool) -> None:
    """Write args.json and run.json; a fresh run first removes what an older one left."""
    if fresh:
        clear_outputs(out_dir)
    write_json(out_dir / "args.json", args)
    # What report.py needs to know of the run, readable without unpickling a checkpoint.
    write_json(out_dir / "run.json", description)


def print_results(summary: dict, labels, trained_on_valid: bool) -> None:
    """The accuracies, per-class test accuracy and test confusion matrix of a results.json."""
    note = "  (valid was trained on: --merge-train-valid)" if trained_on_valid else ""
    print(f"valid accuracy: clip {summary['valid_acc']:.4f}  segment {summary['valid_segment_acc']:.4f}{note}")
    print(f"test accuracy:  clip {summary['test_acc']:.4f}  segment {summary['test_segment_acc']:.4f}")
    width = max(len(label) for label in labels)
    print("per-class test accuracy: " + "  ".join(
        f"{label}={acc:.2f}" if acc is not None else f"{label}=n/a"
        for label, acc in summary["test"]["per_class_acc"].items()))
    print("test confusion matrix (rows: true, columns: predicted):")
    for label, row in zip(labels, summary["test"]["confusion_matrix"]):
        print(f"  {label:>{width}} " + " ".join(f"{v:3d}" for v in row))
