"""Ranking finished runs and writing the Markdown report that compares them.

Runs are ranked by valid accuracy only (test is shown, never used to choose); runs of
one recipe over several seeds (``<recipe>_s<seed>``) are also summarised per recipe;
runs scored on different clips or labels are ranked apart. Test accuracy comes with a
95% Wilson score interval over the test clips (:func:`wilson_interval`), so a reader
sees how far apart two accuracies must be before a split of that size can tell them
apart. No torch: see :mod:`training.runs`.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from common.atomic import write_text
from training.errors import ReportError
from training.folders import check_output_file
from training.plots import plot_confusion, plot_learning_curves
from training.runs import Run


# -- how sure an accuracy is --------------------------------------------------------------------
CONFIDENCE = 0.95


def wilson_interval(accuracy: float, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``n`` clips.

    Each clip is one Bernoulli trial (right or wrong); unlike the normal
    approximation ``p ± z sqrt(p (1 - p) / n)``, the interval stays inside [0, 1] and
    does not shrink to a point at 0 or 1 accuracy.

    Parameters
    ----------
    accuracy : float
        The share of the ``n`` clips classified right, in [0, 1].
    n : int
        How many clips it was measured on (>= 1).
    confidence : float
        Coverage of the interval, e.g. 0.95.

    Returns
    -------
    low, high : float

    >>> [round(v, 4) for v in wilson_interval(0.5, 10)]
    [0.2366, 0.7634]
    >>> [round(v, 4) for v in wilson_interval(0.0, 10)]
    [0.0, 0.2775]
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"wilson_interval: n={n!r} must be a positive number of clips")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"wilson_interval: accuracy {accuracy!r} must lie in [0, 1]")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    z2n = z * z / n
    centre = (accuracy + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(accuracy * (1 - accuracy) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def n_test_clips(run: Run) -> int | None:
    """How many clips the run's test accuracy was measured on (its confusion matrix's total),
    None when its results.json records neither the matrix nor the count."""
    test = run.results.get("test") or {}
    matrix = test.get("confusion_matrix")
    if isinstance(matrix, list) and matrix:
        total = sum(sum(row) for row in matrix)
        return int(total) if total > 0 else None
    clips = test.get("clips")
    return clips if isinstance(clips, int) and clips > 0 else None


def format_interval(interval: tuple[float, float] | None) -> str:
    """``"[0.63, 0.79]"``; ``""`` when there is none.

    >>> format_interval((0.6312, 0.7921)), format_interval(None)
    ('[0.63, 0.79]', '')
    """
    return "" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


# -- derived columns -----------------------------------------------------------------------------
def recorded(run: Run, key: str):
    """A fact train.py records in results.json (None for a run that predates it)."""
    return run.results.get(key)


def describe(run: Run) -> dict:
    """One table row of a run, as plain values."""
    return {
        "run": run.name, "path": str(run.path),
        "model": run.args.get("model", (run.meta or {}).get("model")),
        "feature": run.args.get("feature", (run.meta or {}).get("feature")),
        "segment_seconds": run.args.get("segment_seconds"),
        "augment_versions": recorded(run, "augment_versions"),
        "optimizer": run.args.get("optimizer"), "lr": run.args.get("lr"),
        "epochs": len(run.history), "max_epochs": run.args.get("epochs"),
        "parameters": recorded(run, "parameters"),
        "train_seconds": recorded(run, "train_seconds"),
        "valid_acc": run.valid_acc, "test_acc": run.test_acc,
        "test_clips": n_test_clips(run), "test_interval": run_interval(run),
        "trained_on_valid": run.trained_on_valid,
        "cache_fingerprint": run.fingerprint, "labels": list(run.labels),
    }


def run_interval(run: Run) -> tuple[float, float] | None:
    """The 95% Wilson interval of the run's test accuracy over its test clips (None if unknown)."""
    n = n_test_clips(run)
    return None if n is None else wilson_interval(run.test_acc, n)


# -- choosing ------------------------------------------------------------------------------------
def comparison_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that can be compared: scored on the same clips with the same labels, in input order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.data_fingerprint, run.labels), []).append(run)
    return list(groups.values())


@dataclass
class Recipe:
    """The runs of one recipe, one per seed, and their accuracies' mean and spread."""
    name: str
    runs: list[Run]

    @property
    def trained_on_valid(self) -> bool:
        return any(run.trained_on_valid for run in self.runs)

    def stats(self, split: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one run) of the split's accuracy."""
        values = [getattr(run, f"{split}_acc") for run in self.runs]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def valid_acc(self) -> float:
        """Mean valid accuracy over the seeds: what :func:`choose` and :func:`ranked` compare."""
        return self.stats("valid")[0]

    def test_interval(self) -> tuple[float, float] | None:
        """The 95% Wilson interval of the seed-mean test accuracy, over the clips of one split.

        The seeds score the same test clips, so their clips are not pooled: that would
        count each clip once per seed and overstate how much was measured. (Recipes of
        one comparison group score the same clips; the smallest count is taken should
        they differ.) None when no run records its clips.
        """
        counts = [n for n in (n_test_clips(run) for run in self.runs) if n is not None]
        return wilson_interval(self.stats("test")[0], min(counts)) if counts else None


def recipes(runs: list[Run]) -> list[Recipe]:
    """Runs grouped by recipe name (``<recipe>_s<seed>``), in input order."""
    found: dict[str, Recipe] = {}
    for run in runs:
        found.setdefault(run.recipe, Recipe(run.recipe, [])).runs.append(run)
    return list(found.values())


def choose(runs):
    """The run (or :class:`Recipe`) with the highest valid accuracy (first given wins a tie).

    Test accuracy is never looked at, and runs trained on valid cannot be chosen.
    None when every run was trained on valid.
    """
    candidates = [run for run in runs if not run.trained_on_valid]
    return max(candidates, key=lambda run: run.valid_acc) if candidates else None


def ranked(runs):
    """Runs (or recipes) by descending valid accuracy (stable: ties keep the input order)."""
    return sorted(runs, key=lambda run: -run.valid_acc)


# -- writing -------------------------------------------------------------------------------------
def format_seconds(seconds: float | None) -> str:
    """``"45 s"``, ``"12m 05s"``, ``"3h 02m"``; ``"?"`` when unknown.

    >>> format_seconds(725), format_seconds(10980), format_seconds(None)
    ('12m 05s', '3h 03m', '?')
    """
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s} s" if s < 60 else f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s % 3600 // 60:02d}m"


def _cell(value) -> str:
    if value is None:
        return "?"
    return str(value).replace("|", "\\|")


TABLE_HEADER = ("", "run", "model", "feature", "segment (s)", "aug. versions", "optimizer", "lr",
                "epochs", "parameters", "train time", "valid acc", "test acc [95% interval]")


INTERVAL_NOTE = (
    "Test accuracy comes with its 95% Wilson score interval over the test clips, in brackets: each clip is "
    "one right-or-wrong trial, so the interval is how much the accuracy could move on another draw of as many "
    "clips. Two accuracies whose intervals overlap widely are not told apart by this test set. For a "
    "recipe, ± is the standard deviation over its seeds (how much training varies), and the interval is that "
    "of the seed-mean accuracy with n = the clips of one split: the seeds score the same clips, so pooling "
    "them would overstate n.")


def runs_table(runs: list[Run], chosen: Run | None, rows: dict[int, dict] | None = None) -> str:
    """Markdown table of ``runs`` sorted by valid accuracy, the chosen one marked.

    ``rows`` maps ``id(run)`` to :func:`describe`'s row where already computed.
    """
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for run in ranked(runs):
        row = rows[id(run)] if rows else describe(run)
        params = row["parameters"]
        valid = f"{row['valid_acc']:.4f}" + (" (trained on)" if row["trained_on_valid"] else "")
        test = " ".join(filter(None, (f"{row['test_acc']:.4f}", format_interval(row["test_interval"]))))
        cells = ["**chosen**" if run is chosen else "", row["run"], row["model"], row["feature"],
                 row["segment_seconds"], row["augment_versions"], row["optimizer"], row["lr"],
                 f"{row['epochs']}/{_cell(row['max_epochs'])}", f"{params:,}" if params is not None else None,
                 format_seconds(row["train_seconds"]),
                 valid, test]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


RECIPE_HEADER = ("", "recipe", "seeds", "model", "feature", "segment (s)", "aug. versions",
                 "train time", "valid acc (mean ± sd)", "test acc (mean ± sd) [95% interval]")


def recipes_table(group: list[Recipe], chosen: Recipe | None) -> str:
    """Markdown table of recipes sorted by mean valid accuracy, the chosen one marked."""
    lines = ["| " + " | ".join(RECIPE_HEADER) + " |", "|" + "---|" * len(RECIPE_HEADER)]
    for recipe in ranked(group):
        first = describe(recipe.runs[0])
        times = [t for t in (recorded(run, "train_seconds") for run in recipe.runs) if t is not None]
        (valid, valid_sd), (test, test_sd) = recipe.stats("valid"), recipe.stats("test")
        cells = ["**chosen**" if recipe is chosen else "", recipe.name, len(recipe.runs), first["model"],
                 first["feature"], first["segment_seconds"], first["augment_versions"],
                 format_seconds(statistics.fmean(times) if times else None),
                 f"{valid:.3f} ± {valid_sd:.3f}" + (" (trained on)" if recipe.trained_on_valid else ""),
                 " ".join(filter(None, (f"{test:.3f} ± {test_sd:.3f}", format_interval(recipe.test_interval()))))]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def per_class_table(run: Run) -> str:
    """Markdown table of the run's per-class clip accuracy on valid and test."""
    valid, test = run.results["valid"]["per_class_acc"], run.results["test"]["per_class_acc"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["| genre | valid acc | test acc |", "|---|---|---|"]
    lines += [f"| {_cell(label)} | {fmt(valid.get(label))} | {fmt(test.get(label))} |" for label in test]
    return "\n".join(lines)


def _group_title(group: list[Run]) -> str:
    fingerprint = group[0].data_fingerprint
    data = f"data {fingerprint[:12]}" if fingerprint else "unknown data (the run records no cache)"
    return f"{data}, labels: {', '.join(group[0].labels)}"


def chosen_section(run: Run, confusion_png: Path) -> list[str]:
    """The chosen run: its accuracies, test confusion matrix figure and per-class accuracy."""
    plot_confusion(run.results["test"]["confusion_matrix"], list(run.labels), confusion_png,
                   f"{run.name}: test (clip level)")
    interval, n = run_interval(run), n_test_clips(run)
    over = "" if interval is None else f" (95% interval {format_interval(interval)} over {n} clips)"
    return [f"Chosen by valid accuracy: **{run.name}** (`{run.path}`), valid {run.valid_acc:.4f}, "
            f"test {run.test_acc:.4f}{over}. The test accuracy is reported only; it played no part in the choice.",
            "", f"![test confusion matrix of {run.name}]({confusion_png.name})", "",
            per_class_table(run), ""]


def write_report(runs: list[Run], out) -> dict:
    """Write the Markdown report and its figures; returns what was written and chosen.

    Returns
    -------
    dict
        ``report`` (Path), ``figures`` (list of Path), ``chosen`` (one run name, or None,
        per comparison group), ``chosen_recipes`` (one recipe name per group, None where
        no recipe has two seeds or all were trained on valid), ``groups`` (run names per
        group) and ``runs`` (rows of
        :func:`describe`, sorted by valid accuracy within each group).
    """
    out = check_output_file(out, flag="--out", error=ReportError)
    groups = comparison_groups(runs)
    chosen = [choose(group) for group in groups]
    rows = {id(run): describe(run) for run in runs}
    chosen_recipes: list[str | None] = []
    curves_png = out.with_name(f"{out.stem}_curves.png")
    plot_learning_curves([(run.name, run.history, any(run is c for c in chosen)) for run in runs], curves_png)
    figures = [curves_png]

    lines = ["# Training runs", "",
             f"{len(runs)} run(s). Runs are ranked by valid accuracy (clip level); the run with the "
             f"highest valid accuracy is chosen. Test accuracy is shown but never used to choose.", "",
             INTERVAL_NOTE, ""]
    if len(groups) > 1:
        lines += [f"> **Warning:** these runs were scored on {len(groups)} different sets of clips or labels, so their "
                  f"accuracies are not comparable across groups; each group is ranked on its own.", ""]
    if any(run.trained_on_valid for run in runs):
        lines += ["Runs marked *(trained on)* trained on the valid split (`--merge-train-valid`); "
                  "their valid accuracy is not a held-out score and they are not chosen.", ""]
    for index, (group, best) in enumerate(zip(groups, chosen), start=1):
        heading = "## Runs" if len(groups) == 1 else f"## Group {index}: {_group_title(group)}"
        group_recipes = recipes(group)
        if len(group_recipes) < len(group):
            best_recipe = choose(group_recipes)
            chosen_recipes.append(None if best_recipe is None else best_recipe.name)
            lines += [heading.replace("Runs", "Recipes", 1) if len(groups) == 1 else heading, "",
                      "Mean and sample standard deviation over each recipe's seeds; the recipe with the "
                      "best mean valid accuracy is chosen.", "",
                      recipes_table(group_recipes, best_recipe), ""]
            heading = "### Every run" if len(groups) > 1 else "## Every run"
        else:
            chosen_recipes.append(None)
        lines += [heading, "", runs_table(group, best, rows), ""]
        if best is None:
            lines += ["No run of this group can be chosen: all were trained on the valid split.", ""]
            continue
        suffix = "" if len(groups) == 1 else f"_{index}"
        confusion_png = out.with_name(f"{out.stem}_confusion{suffix}.png")
        lines += chosen_section(best, confusion_png)
        figures.append(confusion_png)
    lines += ["## Learning curves", "", f"![learning curves of every run]({curves_png.name})", ""]
    write_text(out, "\n".join(lines))
    return {"report": out, "figures": figures,
            "chosen": [None if c is None else c.name for c in chosen],
            "chosen_recipes": chosen_recipes,
            "groups": [[run.name for run in group] for group in groups],
            "runs": [rows[id(run)] for group in groups for run in ranked(group)]}
