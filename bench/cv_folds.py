"""Cross-validation folds of train + valid, grouped by contiguous runs of clips.

    python bench/cv_folds.py make data/gamemusic data/gamemusic_cv --folds 3
    python bench/cv_folds.py summary runs/cv        # after training on every fold

A valid split of a few dozen clips from a handful of tracks is a noisy judge: a
recipe can win on it by luck in those tracks. This writes ``--folds`` data folders,
each a GTZAN-style set whose train and valid lists re-split train + valid of the
source; test is the source's own test list, unchanged (and never used to choose).
Fold ``k`` holds out the ``k``-th contiguous block of each genre's clips. Clips cut
from one recording are numbered consecutively, so a contiguous block keeps a track's
clips together (at most the tracks at a block's two edges are split).

The genre folders are symbolic links to the source's, so a fold costs no disk space.
Build each fold's cache and train on it as usual, e.g. ``bench/sweep.py --data FOLD
--caches FOLD_CACHES --runs RUNS/foldK``; ``summary RUNS`` then pools each recipe's
held-out accuracy over the folds (correct clips over held-out clips).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.splits import LIST_FILES, read_split_lists  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write the fold folders")
    make.add_argument("source", help="GTZAN-style data folder with train/valid/test lists")
    make.add_argument("out", help="folder for the fold folders fold0, fold1, ...")
    make.add_argument("--folds", type=int, default=3, help="number of folds (default: %(default)s)")
    summary = commands.add_parser("summary", help="pool each recipe's held-out accuracy over the folds")
    summary.add_argument("runs", help="folder of foldK/<recipe>_s<seed> run folders")
    return p


def contiguous_blocks(items: list, n: int) -> list[list]:
    """``items`` cut into ``n`` contiguous blocks whose sizes differ by at most one.

    >>> contiguous_blocks(list(range(7)), 3)
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    size, extra = divmod(len(items), n)
    bounds = [0]
    for k in range(n):
        bounds.append(bounds[-1] + size + (k < extra))
    return [items[bounds[k]:bounds[k + 1]] for k in range(n)]


def write_folds(source, out, *, folds: int) -> list[Path]:
    """Write the fold folders; returns their paths."""
    lists = read_split_lists(source)
    if folds < 2:
        raise ValueError(f"--folds {folds}: need at least 2")
    by_label: dict[str, list[str]] = {}
    for split in ("train", "valid"):
        for clip in lists.clips[split]:
            by_label.setdefault(clip.label, []).append(clip.listed)
    small = {label: len(clips) for label, clips in by_label.items() if len(clips) < folds}
    if small:
        raise ValueError(f"genres with fewer clips than --folds {folds}: {small}; use fewer folds")
    blocks = {label: contiguous_blocks(clips, folds) for label, clips in by_label.items()}
    paths = []
    for k in range(folds):
        fold = Path(out) / f"fold{k}"
        fold.mkdir(parents=True, exist_ok=True)
        for label in by_label:
            link = fold / label
            if not link.exists():
                os.symlink(Path(source, label).resolve(), link)
        held_out = [c for label in by_label for c in blocks[label][k]]
        kept = [c for label in by_label for j, block in enumerate(blocks[label]) if j != k for c in block]
        test = [clip.listed for clip in lists.clips["test"]]
        for split, lines in (("train", kept), ("valid", held_out), ("test", test)):
            (fold / LIST_FILES[split]).write_text("".join(line + "\n" for line in lines))
        paths.append(fold)
    return paths


def pooled_accuracy(runs_root) -> dict[str, dict]:
    """Per recipe: held-out clip accuracy of every fold and pooled over all folds and seeds.

    Returns ``{recipe: {"folds": {fold: accuracy}, "pooled": accuracy, "clips": n}}``
    from ``RUNS/foldK/<recipe>_s<seed>/results.json`` (valid of a fold = its held-out block).
    """
    found: dict[str, dict] = {}
    for path in sorted(Path(runs_root).glob("fold*/*/results.json")):
        results = json.loads(path.read_text())
        recipe, fold = re.sub(r"_s\d+$", "", path.parent.name), path.parent.parent.name
        entry = found.setdefault(recipe, {"folds": {}, "correct": 0.0, "clips": 0})
        clips = results["valid"]["clips"]
        entry["folds"].setdefault(fold, []).append(results["valid_acc"])
        entry["correct"] += results["valid_acc"] * clips
        entry["clips"] += clips
    return {recipe: {"folds": {fold: sum(accs) / len(accs) for fold, accs in entry["folds"].items()},
                     "pooled": entry["correct"] / entry["clips"], "clips": entry["clips"]}
            for recipe, entry in found.items()}


def main(args):
    if args.command == "make":
        paths = write_folds(args.source, args.out, folds=args.folds)
        for path in paths:
            print(f"wrote {path}")
        return paths
    pooled = pooled_accuracy(args.runs)
    if not pooled:
        raise ValueError(f"no finished runs under {args.runs}/fold*/; train on the folds first")
    print("| recipe | " + " | ".join(sorted(next(iter(pooled.values()))["folds"])) + " | pooled held-out acc |")
    for recipe, entry in sorted(pooled.items(), key=lambda item: -item[1]["pooled"]):
        folds = " | ".join(f"{acc:.3f}" for _, acc in sorted(entry["folds"].items()))
        print(f"| {recipe} | {folds} | {entry['pooled']:.3f} ({entry['clips']} clips) |")
    return pooled


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
