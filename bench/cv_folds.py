"""Track-grouped cross-validation over train + valid: fold folders, and the pooled held-out accuracy.

    python bench/cv_folds.py make data/gamemusic data/cv/gamemusic/folds --folds 5 --seed 0
    python bench/cv_folds.py summary runs/cv/gamemusic runs/cv/moremusic   # after training every fold

A valid split of a few dozen clips from a handful of tracks is a noisy judge: a recipe
can win on it by luck in those tracks. ``make`` cuts the source's train + valid clips
into ``--folds`` folds with scikit-learn's ``StratifiedGroupKFold`` (each class spread
evenly, every group on one side), grouped by the source's ``tracks.tsv`` (track, album
or artist per clip; see ``pipeline/splits.py``). **The source's test clips are never
used**: no fold folder lists them. Fold ``k`` is itself a GTZAN-shaped data folder:

- ``test_filtered.txt``: outer fold ``k``, the held-out clips it is scored on;
- ``valid_filtered.txt``: fold ``k+1 (mod K)``, which train.py uses to pick its best epoch;
- ``train_filtered.txt``: the other ``K-2`` folds;
- ``tracks.tsv``: the groups of those clips, so every build's leakage check confirms that
  no group crosses;
- ``<genre>`` folders: symbolic links to the source's (no copies; links inside a root are
  followed, see the symbolic-link policy in ``pipeline/splits.py``).

Without a groups file every clip is its own group, and folds may share recordings:
``make`` says so on stderr and in ``NOTE.txt`` of each fold folder. Folds are seeded
(``--seed``) and deterministic; running ``make`` again writes what is missing and
refuses to replace folds that differ.

``summary`` reads ``RUNS/fold<k>/<recipe>_s<seed>/results.json`` (``bench/cv_study.py``
writes them), pools each (recipe, seed)'s held-out clip accuracy over all folds (correct
held-out clips over held-out clips), and reports mean ± sd over seeds and each fold's
figure, as Markdown. Given several runs roots (one per data set), it also averages each
recipe's pooled accuracy over the sets: the selection rule is the best mean grouped-CV
accuracy averaged over the sets. Only seeds with every fold of every set finished count;
other recipes are listed as incomplete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


from common.atomic import write_text
from common.cli import run
from common.errors import UserError
from pipeline.splits import GROUPS_FILE, LIST_FILES, Clip, read_split_lists

DEFAULT_FOLDS = 5
FOLDS_FILE = "folds.json"   # in the folds folder, written last: the folds are complete
NOTE_FILE = "NOTE.txt"      # in each fold folder when the source has no groups
STUDY_FILE = "cv.json"      # in a runs root: which folds its runs were trained on
RUN_NAME = re.compile(r"^(?P<recipe>.+)_s(?P<seed>\d+)$")
FOLD_NAME = re.compile(r"^fold(?P<k>\d+)$")

UNGROUPED_NOTE = ("The source {source} has no {groups} (one '<listed path><TAB><group id>' line per clip), so "
                  "every clip is its own group: these folds may share recordings between their train, valid "
                  "and test clips, and their held-out accuracy may be inflated. Add {groups} to the source "
                  "and make the folds again in a new folder.")


class FoldError(UserError):
    """The folds cannot be made or summarised as asked; the message says why and what to do."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write the fold folders fold0, fold1, ...")
    make.add_argument("source", help="GTZAN-style data folder with train/valid/test lists (and tracks.tsv)")
    make.add_argument("out", help="folder for the fold folders fold0, fold1, ...")
    make.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="number of folds, at least 3 "
                      "(default: %(default)s)")
    make.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    summary = commands.add_parser("summary", help="pool each recipe's held-out accuracy over the folds")
    summary.add_argument("runs", nargs="+", help="runs root(s) of fold<k>/<recipe>_s<seed> run folders, one per "
                         "data set (or a bench/cv_study.py study folder, which holds runs/)")
    summary.add_argument("--folds", type=int, default=None, help="folds per set (default: from the runs root's "
                         f"{STUDY_FILE}, else the fold<k> folders found)")
    return p


# -- make ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldPlan:
    """What ``make`` writes: the fold of every pooled clip and each file's text.

    Attributes
    ----------
    clips : tuple of Clip
        The source's train then valid clips, in list order.
    fold_of : tuple of int
        Outer fold of each clip, ``len(clips)`` entries in ``0 .. folds-1``.
    groups : tuple of str
        Group of each clip (its listed path where the source has no groups file).
    grouped : bool
        Whether the groups came from the source's groups file.
    """

    source: Path
    folds: int
    seed: int
    clips: tuple[Clip, ...]
    fold_of: tuple[int, ...]
    groups: tuple[str, ...]
    grouped: bool

    def split_of(self, k: int) -> dict[str, list[int]]:
        """Indices of fold ``k``'s train, valid and test clips (test: fold k, valid: fold k+1)."""
        valid = (k + 1) % self.folds
        roles = {"train": [], "valid": [], "test": []}
        for i, fold in enumerate(self.fold_of):
            roles["test" if fold == k else "valid" if fold == valid else "train"].append(i)
        return roles


def pool_clips(source) -> tuple[Path, tuple[Clip, ...], bool]:
    """``(root, train + valid clips, grouped)`` of a checked source; test is read only to check leakage."""
    lists = read_split_lists(source)
    return lists.root, lists.clips["train"] + lists.clips["valid"], lists.has_groups


def check_fold_count(folds: int) -> None:
    if folds < 3:
        raise FoldError(f"--folds {folds}: need at least 3 (fold k is scored on fold k, picks its epoch on "
                        f"fold k+1 and trains on the others)")


def check_groups_per_class(labels: list[str], groups: list[str], *, folds: int, grouped: bool) -> None:
    """Refuse a class with fewer groups than folds: some fold could not hold it out."""
    per_class = {label: len(set(g for l, g in zip(labels, groups) if l == label)) for label in sorted(set(labels))}
    short = {label: n for label, n in per_class.items() if n < folds}
    if short:
        what = "groups (tracks.tsv)" if grouped else "clips"
        listed = ", ".join(f"{label} has {n}" for label, n in short.items())
        fewest = min(per_class.values())
        fix = (f"use --folds {fewest} or fewer" if fewest >= 3 else
               "a class with fewer than 3 cannot be cross-validated: add recordings of it to train or valid")
        raise FoldError(f"--folds {folds}: every class needs at least {folds} {what} in train + valid, but "
                        f"{listed}; {fix}")


def assign_folds(labels: list[str], groups: list[str], *, folds: int, seed: int) -> list[int]:
    """Outer fold of each clip: stratified by label, grouped, seeded (deterministic).

    >>> assign_folds(["a"] * 6 + ["b"] * 6, [str(i // 2) for i in range(12)], folds=3, seed=0)
    [0, 0, 2, 2, 1, 1, 1, 1, 2, 2, 0, 0]
    """
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = [0] * len(labels)
    for k, (_, held_out) in enumerate(splitter.split(labels, labels, groups)):
        for i in held_out:
            fold_of[i] = k
    return fold_of


def check_every_fold_holds_every_class(labels: list[str], fold_of: list[int], *, folds: int, seed: int) -> None:
    """Refuse folds where some class has no held-out clip (the splitter could not spread it)."""
    present = {(label, k) for label, k in zip(labels, fold_of)}
    gaps = [f"fold{k} holds out no {label}" for label in sorted(set(labels)) for k in range(folds)
            if (label, k) not in present]
    if gaps:
        raise FoldError(f"--folds {folds} --seed {seed}: {'; '.join(gaps)}; use fewer folds or another seed")


def plan_folds(source, *, folds: int = DEFAULT_FOLDS, seed: int = 0) -> FoldPlan:
    """Check the source and assign every train + valid clip to a fold (writes nothing)."""
    check_fold_count(folds)
    root, clips, grouped = pool_clips(source)
    labels = [clip.label for clip in clips]
    groups = [clip.group if grouped else clip.listed for clip in clips]
    check_groups_per_class(labels, groups, folds=folds, grouped=grouped)
    fold_of = assign_folds(labels, groups, folds=folds, seed=seed)
    check_every_fold_holds_every_class(labels, fold_of, folds=folds, seed=seed)
    return FoldPlan(source=root, folds=folds, seed=seed, clips=tuple(clips), fold_of=tuple(fold_of),
                    groups=tuple(groups), grouped=grouped)


def settings_of(plan: FoldPlan) -> dict:
    """What ``folds.json`` records: how the folds were made, and from which lists."""
    digest = hashlib.sha256("".join(f"{c.split}\t{c.listed}\t{g}\n" for c, g in zip(plan.clips, plan.groups))
                            .encode()).hexdigest()
    return {"source": str(plan.source), "folds": plan.folds, "seed": plan.seed, "grouped": plan.grouped,
            "clips": len(plan.clips), "groups": len(set(plan.groups)), "pool_sha256": digest}


def fold_files(plan: FoldPlan, k: int) -> dict[str, str]:
    """Name -> text of every file in fold ``k``'s folder."""
    roles = plan.split_of(k)
    files = {LIST_FILES[split]: "".join(plan.clips[i].listed + "\n" for i in roles[split]) for split in roles}
    if plan.grouped:
        files[GROUPS_FILE] = "".join(f"{plan.clips[i].listed}\t{plan.groups[i]}\n"
                                     for split in ("train", "valid", "test") for i in roles[split])
    else:
        files[NOTE_FILE] = UNGROUPED_NOTE.format(source=plan.source, groups=GROUPS_FILE) + "\n"
    return files


def planned_links(plan: FoldPlan) -> dict[str, Path]:
    """Genre folder name -> the source's folder it links to (links resolved, absolute)."""
    return {label: (plan.source / label).resolve() for label in sorted({c.label for c in plan.clips})}


def conflicts(out: Path, plan: FoldPlan) -> list[str]:
    """Existing paths under ``out`` that differ from the plan (nothing is replaced)."""
    found = []
    expected = {f"fold{k}/{name}": text for k in range(plan.folds) for name, text in fold_files(plan, k).items()}
    expected[FOLDS_FILE] = json.dumps(settings_of(plan), indent=2) + "\n"
    for relative, text in expected.items():
        path = out / relative
        if path.exists() or path.is_symlink():
            try:
                same = path.is_file() and path.read_text(encoding="utf-8") == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                found.append(relative)
    for k in range(plan.folds):
        for label, target in planned_links(plan).items():
            link = out / f"fold{k}" / label
            if (link.exists() or link.is_symlink()) and not (link.is_symlink() and
                                                              Path(os.readlink(link)) == target):
                found.append(f"fold{k}/{label}")
    return found


def refuse_conflicts(out: Path, plan: FoldPlan, found: list[str]) -> None:
    made = ""
    try:
        old = json.loads((out / FOLDS_FILE).read_text())
        made = (f" (it holds --folds {old.get('folds')} --seed {old.get('seed')} of {old.get('source')}"
                + (", from other lists or groups" if old.get("pool_sha256") != settings_of(plan)["pool_sha256"]
                   else "") + ")")
    except (OSError, ValueError):
        pass
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise FoldError(f"{out} already holds other folds{made}: {shown} differ from --folds {plan.folds} "
                    f"--seed {plan.seed} of {plan.source}; nothing was changed. Write the folds to another "
                    f"folder, or delete {out} (and the caches and runs made from it) to make them again")


def write_plan(out: Path, plan: FoldPlan) -> list[Path]:
    """Write the missing files and links of ``plan`` under ``out``; ``folds.json`` last."""
    paths = []
    for k in range(plan.folds):
        fold = out / f"fold{k}"
        fold.mkdir(parents=True, exist_ok=True)
        for label, target in planned_links(plan).items():
            if not (fold / label).is_symlink():
                os.symlink(target, fold / label, target_is_directory=True)
        for name, text in fold_files(plan, k).items():
            if not (fold / name).is_file():
                write_text(fold / name, text)
        paths.append(fold)
    if not (out / FOLDS_FILE).is_file():
        write_text(out / FOLDS_FILE, json.dumps(settings_of(plan), indent=2) + "\n")
    return paths


def write_folds(source, out, *, folds: int = DEFAULT_FOLDS, seed: int = 0) -> list[Path]:
    """Plan, check against what ``out`` holds, then write the fold folders; returns their paths.

    Raises
    ------
    FoldError
        Fewer than 3 folds, a class with fewer groups than folds, a fold that holds
        out no clip of some class, or ``out`` holding other folds (nothing written).
    SplitListError
        The source's lists or groups are unusable (e.g. a group in two splits).
    """
    plan = plan_folds(source, folds=folds, seed=seed)
    out = Path(out)
    found = conflicts(out, plan)
    if found:
        refuse_conflicts(out, plan, found)
    if not plan.grouped:
        print("warning: " + UNGROUPED_NOTE.format(source=plan.source, groups=GROUPS_FILE), file=sys.stderr)
    paths = write_plan(out, plan)
    print(held_out_table(plan))
    return paths


def held_out_table(plan: FoldPlan) -> str:
    """Markdown: per fold, the clips (groups) of each class it holds out."""
    labels = sorted({c.label for c in plan.clips})
    what = f"groups from {GROUPS_FILE}" if plan.grouped else "no groups file: each clip its own group"
    lines = [f"{plan.folds} folds of train + valid of {plan.source} (seed {plan.seed}; {len(plan.clips)} clips, "
             f"{len(set(plan.groups))} groups, {what}; test is not used). Held-out clips (groups) per class:",
             "", "| fold | " + " | ".join(labels) + " | all |", "|---" * (len(labels) + 2) + "|"]
    for k in range(plan.folds):
        held = [i for i, fold in enumerate(plan.fold_of) if fold == k]
        cells = [_count([i for i in held if plan.clips[i].label == label], plan) for label in labels]
        lines.append(f"| fold{k} | " + " | ".join(cells) + f" | {_count(held, plan)} |")
    lines += ["", f"fold k: test = fold k, valid = fold k+1 (mod {plan.folds}), train = the other folds."]
    return "\n".join(lines)


def _count(indices: list[int], plan: FoldPlan) -> str:
    return f"{len(indices)} ({len({plan.groups[i] for i in indices})})"


# -- summary -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldResult:
    """The held-out ("test" of a fold) clips of one finished run."""

    correct: int
    clips: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.clips


def runs_root(path) -> Path:
    """A runs root itself, or the ``runs/`` of a bench/cv_study.py study folder."""
    path = Path(path)
    if not path.is_dir():
        raise FoldError(f"runs root {path} is not a folder; give the folder of the fold<k>/ run folders")
    if not any(FOLD_NAME.match(p.name) for p in path.iterdir()) and (path / "runs").is_dir():
        return path / "runs"
    return path


def read_fold_result(path: Path) -> FoldResult:
    """Correct and total held-out clips of a run's ``results.json`` (its test split)."""
    try:
        results = json.loads(path.read_text())
        test = results["test"]
        matrix = test.get("confusion_matrix")
        correct = (sum(row[i] for i, row in enumerate(matrix)) if matrix
                   else round(results["test_acc"] * test["clips"]))
        return FoldResult(correct=int(correct), clips=int(test["clips"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise FoldError(f"{path}: not a results.json of train.py ({type(exc).__name__}: {exc}); "
                        f"train that run again") from None


def read_runs(root: Path) -> dict[tuple[str, int], dict[int, FoldResult]]:
    """``{(recipe, seed): {fold: result}}`` of every finished run under ``root/fold<k>/``."""
    found: dict[tuple[str, int], dict[int, FoldResult]] = {}
    for path in sorted(root.glob("fold*/*/results.json")):
        fold, run_name = FOLD_NAME.match(path.parent.parent.name), RUN_NAME.match(path.parent.name)
        if fold and run_name:
            key = (run_name["recipe"], int(run_name["seed"]))
            found.setdefault(key, {})[int(fold["k"])] = read_fold_result(path)
    return found


def study_info(root: Path, folds: int | None) -> tuple[str, int]:
    """``(set name, folds)`` of a runs root: from its cv.json, else its path and fold folders."""
    info = {}
    if (root / STUDY_FILE).is_file():
        try:
            info = json.loads((root / STUDY_FILE).read_text())
        except ValueError as exc:
            raise FoldError(f"{root / STUDY_FILE}: not JSON ({exc}); run bench/cv_study.py again to rewrite "
                            f"it, or pass --folds") from None
    if folds is None:
        folds = info.get("folds") or 1 + max((int(m["k"]) for p in root.iterdir() if (m := FOLD_NAME.match(p.name))),
                                             default=-1)
    return str(info.get("name") or root), int(folds)


@dataclass(frozen=True)
class SetRuns:
    name: str
    root: Path
    folds: int
    runs: dict[tuple[str, int], dict[int, FoldResult]]

    def complete(self, recipe: str, seed: int) -> bool:
        return set(self.runs.get((recipe, seed), {})) >= set(range(self.folds))

    def missing(self, recipe: str, seed: int) -> list[str]:
        return [f"fold{k}" for k in range(self.folds) if k not in self.runs.get((recipe, seed), {})]

    def pooled(self, recipe: str, seed: int) -> float:
        results = [self.runs[recipe, seed][k] for k in range(self.folds)]
        return sum(r.correct for r in results) / sum(r.clips for r in results)

    def clips(self, recipe: str, seed: int) -> int:
        return sum(self.runs[recipe, seed][k].clips for k in range(self.folds))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), as report.py."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(sets: list[SetRuns]) -> dict:
    """Per recipe: the seeds complete in every set, each set's pooled accuracy, their average.

    Returns ``{"sets": {name: {recipe: {"seeds", "pooled" (per seed), "mean", "sd",
    "folds" (mean held-out accuracy per fold over the seeds), "clips"}}}, "average":
    {recipe: mean over sets}, "incomplete": {recipe: [what is missing]}}``.
    """
    recipes = sorted({recipe for s in sets for recipe, _ in s.runs})
    summary = {"sets": {s.name: {} for s in sets}, "average": {}, "incomplete": {}}
    for recipe in recipes:
        seeds = sorted({seed for s in sets for r, seed in s.runs if r == recipe})
        complete = [seed for seed in seeds if all(s.complete(recipe, seed) for s in sets)]
        missing = [f"seed {seed}: " + "; ".join(f"{s.name} {', '.join(s.missing(recipe, seed))}"
                                                 for s in sets if s.missing(recipe, seed))
                   for seed in seeds if seed not in complete]
        if missing:
            summary["incomplete"][recipe] = missing
        if not complete:
            continue
        for s in sets:
            pooled = {seed: s.pooled(recipe, seed) for seed in complete}
            mean, sd = mean_sd(list(pooled.values()))
            folds = {f"fold{k}": statistics.fmean(s.runs[recipe, seed][k].accuracy for seed in complete)
                     for k in range(s.folds)}
            summary["sets"][s.name][recipe] = {"seeds": complete, "pooled": pooled, "mean": mean, "sd": sd,
                                               "folds": folds, "clips": s.clips(recipe, complete[0])}
        summary["average"][recipe] = statistics.fmean(summary["sets"][s.name][recipe]["mean"] for s in sets)
    return summary


def markdown(sets: list[SetRuns], summary: dict) -> str:
    """The per-set tables, the over-sets table (several sets), and the incomplete recipes."""
    ranked = sorted(summary["average"], key=lambda recipe: -summary["average"][recipe])
    out = []
    for s in sets:
        table = summary["sets"][s.name]
        if not table:
            continue
        clips = table[ranked[0]]["clips"]
        out += [f"{s.name}: held-out clip accuracy of {s.folds}-fold grouped cross-validation "
                f"(pooled over {clips} clips; mean ± sd over seeds)", "",
                "| recipe | seeds | " + " | ".join(f"fold{k}" for k in range(s.folds)) + " | pooled held-out acc |",
                "|---" * (s.folds + 3) + "|"]
        for recipe in sorted(table, key=lambda r: -table[r]["mean"]):
            entry = table[recipe]
            folds = " | ".join(f"{entry['folds'][f'fold{k}']:.3f}" for k in range(s.folds))
            out.append(f"| {recipe} | {len(entry['seeds'])} | {folds} | {entry['mean']:.3f} ± {entry['sd']:.3f} |")
        out.append("")
    if len(sets) > 1 and ranked:
        names = [s.name for s in sets]
        out += [f"Averaged over the {len(sets)} sets (the selection rule: best average):", "",
                "|  | recipe | seeds | " + " | ".join(names) + " | average |", "|---" * (len(names) + 4) + "|"]
        for i, recipe in enumerate(ranked):
            cells = " | ".join(f"{summary['sets'][n][recipe]['mean']:.3f} ± {summary['sets'][n][recipe]['sd']:.3f}"
                               for n in names)
            seeds = len(summary["sets"][names[0]][recipe]["seeds"])
            out.append(f"| {'**best**' if i == 0 else ''} | {recipe} | {seeds} | {cells} | "
                       f"{summary['average'][recipe]:.3f} |")
        out.append("")
    if summary["incomplete"]:
        out.append("Incomplete (these seeds are not counted):")
        out += [f"- {recipe}: " + " / ".join(missing) for recipe, missing in summary["incomplete"].items()]
    return "\n".join(out).rstrip()


def summary_main(paths, *, folds: int | None = None) -> dict:
    roots = [runs_root(p) for p in paths]
    sets = []
    for root in roots:
        name, k = study_info(root, folds)
        sets.append(SetRuns(name=name, root=root, folds=k, runs=read_runs(root)))
    names = Counter(s.name for s in sets)
    if any(n > 1 for n in names.values()):
        sets = [SetRuns(name=str(s.root), root=s.root, folds=s.folds, runs=s.runs) for s in sets]
    empty = [str(s.root) for s in sets if not s.runs]
    if empty:
        raise FoldError(f"no finished runs under {', '.join(empty)} (fold<k>/<recipe>_s<seed>/results.json); "
                        f"train on the folds first (bench/cv_study.py)")
    summary = summarise(sets)
    print(markdown(sets, summary))
    return summary


def main(args):
    if args.command == "make":
        paths = write_folds(args.source, args.out, folds=args.folds, seed=args.seed)
        for path in paths:
            print(f"wrote {path}")
        return paths
    return summary_main(args.runs, folds=args.folds)


if __name__ == "__main__":
    run(main, get_args_parser())
