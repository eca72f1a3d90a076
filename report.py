"""Compare finished training runs in one Markdown report.

    python report.py runs/mel_cnn1d runs/mel_resnet runs/mfcc_crnn --out report.md

Reads each run's args.json, metrics.jsonl, results.json and run.json (what the run is:
model, feature, labels, cache; "?" for runs older than run.json) and writes a report with a table of
the runs sorted by valid accuracy, the run chosen by valid accuracy (never by test:
test accuracy is shown, not used), the learning curves of every run in one figure, and
the chosen run's confusion matrix and per-class accuracy. Figures are PNG files beside
the report.

Runs of one recipe over several seeds (folders named ``<recipe>_s<seed>``, as
``bench/sweep.py`` writes them) are also summarised as mean and standard deviation per
recipe, and the recipe with the best mean valid accuracy is chosen: on small sets one
run's lead of a few clips is noise. Runs scored on different clips or label sets are
not comparable: they are ranked in separate tables under a warning. Caches that differ
only in features or augmentation score the same clips, so their runs are compared.

Only JSON is read: never a checkpoint (unpickling a ``.pt`` file from elsewhere could
run code) and never torch, which this module does not import. ``--out`` is checked
before any run is read, and the report and its figures are written atomically.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import STORAGE_ERRNOS, StorageError, atomic_path, write_text
from common.cli import run
from common.errors import UserError

RUN_FILES = ("args.json", "metrics.jsonl", "results.json")
RUN_DESCRIPTION = "run.json"  # written by train.py; older runs lack it


class ReportError(UserError):
    """A run folder that cannot be reported; the message names it and says what to do."""


# -- outputs (also train.py's and evaluate.py's, which import them: they need no torch) ---------
def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a folder."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_output_folder(folder, *, flag: str, error=UserError, named=None) -> Path:
    """Make ``folder`` (if needed) and check that files can be written in it, before any work.

    Raises ``error`` (a :class:`UserError` class) naming ``flag`` and ``named`` (the
    path the user gave; default ``folder``) when ``folder`` is a file or lies under
    one, and :class:`~common.atomic.StorageError` when it cannot be made or written
    (read-only, no permission, full).
    """
    folder = Path(folder)
    named = folder if named is None else Path(named)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        where = "is a file" if blocker == named else f"lies under {blocker}, which is a file"
        raise error(f"{flag} {named} {where}; give a {'folder (it is made if missing)' if named == folder else 'path in a folder'}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = STORAGE_ERRNOS.get(exc.errno, exc.strerror or str(exc))
        raise StorageError(f"{flag} {named}: cannot write in {folder} ({why}); give a folder you can "
                           f"write to") from None
    return folder


def check_output_file(path, *, flag: str, error=UserError) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder is made
    if missing); a folder at ``path``, or a file above it, is refused."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{flag} {path} is a folder; give a file name, e.g. {path / 'report.md'}")
    check_output_folder(path.parent, flag=flag, error=error, named=path)
    return path


def plot_confusion(matrix, labels, path: Path, title: str) -> None:
    """The confusion matrix ``(n_classes, n_classes)`` of clip predictions as a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6 + 0.3 * len(labels), 5 + 0.3 * len(labels)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, colorbar=False,
                                                                           xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished train.py --out-dir folders")
    p.add_argument("--out", default="report.md",
                   help="Markdown file to write; its figures go beside it (default: %(default)s)")
    return p


# -- reading runs --------------------------------------------------------------------------------
@dataclass
class Run:
    """What a finished run left in its folder.

    ``meta`` holds the run's description from its run.json (model, model_config,
    feature, feature_settings, labels, cache_fingerprint, ...); None for runs older
    than run.json.
    """
    path: Path
    name: str
    args: dict
    history: list[dict]
    results: dict
    meta: dict | None

    @property
    def valid_acc(self) -> float:
        return float(self.results["valid_acc"])

    @property
    def test_acc(self) -> float:
        return float(self.results["test_acc"])

    @property
    def trained_on_valid(self) -> bool:
        """Valid was in the training data (--merge-train-valid): its accuracy chooses nothing."""
        return bool(self.results.get("valid_trained_on", self.args.get("merge_train_valid", False)))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.results.get("labels") or (self.meta or {}).get("labels") or ())

    @property
    def fingerprint(self) -> str | None:
        """The cache the run was trained on."""
        return self.results.get("cache_fingerprint") or (self.meta or {}).get("cache_fingerprint")

    @property
    def data_fingerprint(self) -> str | None:
        """The clips and labels the run was scored on (its cache's, for runs that predate it)."""
        return self.results.get("data_fingerprint") or self.fingerprint

    @property
    def recipe(self) -> str:
        """The run's name without a trailing ``_s<seed>``."""
        return re.sub(r"_s\d+$", "", self.name)


def _refuse_constant(name: str):
    raise ValueError(f"it holds {name}, which is not a number")


def _read_json(path: Path):
    try:
        # NaN and Infinity are not JSON: a file holding them comes from a run that diverged.
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; re-run the evaluation "
                          f"(train.py --eval-only --out-dir {path.parent}) or leave the run out") from None


def _read_history(path: Path) -> list[dict]:
    history = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line, parse_constant=_refuse_constant))
        except ValueError as exc:
            raise ReportError(f"{path}, line {number} is not JSON ({exc}); the run's log is damaged") from exc
    return history


def _read_meta(folder: Path) -> dict | None:
    """The run's run.json, or None for a run older than it (its columns then show "?")."""
    path = folder / RUN_DESCRIPTION
    if not path.is_file():
        return None
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ReportError(f"{path} is not a JSON object; the run folder is damaged (re-run the training "
                          f"or leave the run out)")
    return meta


def read_run(folder, *, name: str | None = None) -> Run:
    """Read a finished run folder (``train.py --out-dir``).

    Raises
    ------
    ReportError
        The folder is missing, unfinished (no results.json) or damaged.

    >>> run = read_run("runs/demo")  # doctest: +SKIP
    >>> run.valid_acc, run.test_acc  # doctest: +SKIP
    (0.71, 0.69)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"run folder {folder} does not exist; give train.py --out-dir folders")
    missing = [f for f in RUN_FILES if not (folder / f).is_file()]
    if missing:
        raise ReportError(f"run {folder} is not finished (missing {', '.join(missing)}); let it finish, "
                          f"resume it (train.py --resume --out-dir {folder}) or leave it out")
    results = _read_json(folder / "results.json")
    lacking = [k for k in ("valid_acc", "test_acc", "valid", "test") if k not in results]
    if lacking:
        raise ReportError(f"{folder / 'results.json'} lacks {', '.join(lacking)}; re-run the evaluation "
                          f"(train.py --eval-only --out-dir {folder})")
    return Run(path=folder, name=name or folder.name, args=_read_json(folder / "args.json"),
               history=_read_history(folder / "metrics.jsonl"), results=results, meta=_read_meta(folder))


def read_runs(folders) -> list[Run]:
    """Read every run; runs whose folder names clash are named by their full path."""
    folders = [Path(f) for f in folders]
    names = [f.resolve().name for f in folders]
    return [read_run(f, name=f.resolve().name if names.count(f.resolve().name) == 1 else str(f))
            for f in folders]


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


def plot_learning_curves(runs: list[Run], path: Path, chosen: list[Run]) -> None:
    """Every run's loss and valid accuracy per epoch in one figure (chosen runs bold)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        epochs = [h["epoch"] for h in run.history]
        style = {"color": colors[i % len(colors)], "marker": "o", "markersize": 3,
                 "linewidth": 2.5 if any(run is c for c in chosen) else 1.2}
        ax_loss.plot(epochs, [h["train_loss"] for h in run.history], linestyle="--", **style)
        ax_loss.plot(epochs, [h["valid_loss"] for h in run.history], label=run.name, **style)
        ax_acc.plot(epochs, [h["valid_clip_acc"] for h in run.history], label=run.name, **style)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (valid solid, train dashed)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="valid accuracy (clip level)", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    plot_learning_curves(runs, curves_png, [c for c in chosen if c is not None])
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


def main(args) -> dict:
    """Read ``args.runs`` and write the report to ``args.out``; returns :func:`write_report`'s dict."""
    out = check_output_file(args.out, flag="--out", error=ReportError)  # before reading the runs
    if out.name in (*RUN_FILES, RUN_DESCRIPTION) and out.resolve().parent in {Path(r).resolve() for r in args.runs}:
        raise ReportError(f"--out {out} is a file of the run in {out.parent}; give another file name, "
                          f"e.g. {out.with_name('report.md')}")
    runs = read_runs(args.runs)
    summary = write_report(runs, args.out)
    for name in summary["chosen"]:
        if name is not None:
            print(f"chosen by valid accuracy: {name}")
    for name in summary["chosen_recipes"]:
        if name is not None:
            print(f"recipe chosen by mean valid accuracy: {name}")
    print(f"wrote {summary['report']} and {len(summary['figures'])} figure(s) beside it")
    return summary


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted="the report was not written; run the same command again")
