"""Ranking finished runs and writing the Markdown report that compares them.

Runs are ranked by valid accuracy only (test is shown, never used to choose); runs of
one recipe over several seeds (``<recipe>_s<seed>``) are also summarised per recipe;
runs scored on different clips or labels are ranked apart. No torch: see
:mod:`training.runs`.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from common.atomic import write_text
from training.errors import ReportError
from training.folders import check_output_file
from training.plots import plot_confusion, plot_learning_curves
from training.runs import Run


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
        "trained_on_valid": run.trained_on_valid,
        "cache_fingerprint": run.fingerprint, "labels": list(run.labels),
    }


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
                "epochs", "parameters", "train time", "valid acc", "test acc")


def runs_table(runs: list[Run], chosen: Run | None, rows: dict[int, dict] | None = None) -> str:
    """Markdown table of ``runs`` sorted by valid accuracy, the chosen one marked.

    ``rows`` maps ``id(run)`` to :func:`describe`'s row where already computed.
    """
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for run in ranked(runs):
        row = rows[id(run)] if rows else describe(run)
        params = row["parameters"]
        valid = f"{row['valid_acc']:.4f}" + (" (trained on)" if row["trained_on_valid"] else "")
        cells = ["**chosen**" if run is chosen else "", row["run"], row["model"], row["feature"],
                 row["segment_seconds"], row["augment_versions"], row["optimizer"], row["lr"],
                 f"{row['epochs']}/{_cell(row['max_epochs'])}", f"{params:,}" if params is not None else None,
                 format_seconds(row["train_seconds"]),
                 valid, f"{row['test_acc']:.4f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


RECIPE_HEADER = ("", "recipe", "seeds", "model", "feature", "segment (s)", "aug. versions",
                 "train time", "valid acc (mean ± sd)", "test acc (mean ± sd)")


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
                 f"{test:.3f} ± {test_sd:.3f}"]
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
    return [f"Chosen by valid accuracy: **{run.name}** (`{run.path}`), valid {run.valid_acc:.4f}, "
            f"test {run.test_acc:.4f}. The test accuracy is reported only; it played no part in the choice.",
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
             f"highest valid accuracy is chosen. Test accuracy is shown but never used to choose.", ""]
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
