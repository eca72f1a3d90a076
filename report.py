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
run's lead of a few clips is noise. Test accuracy is shown with its 95% Wilson score
interval over the test clips (for a recipe: of the seed mean, with n the clips of one
split, since the seeds score the same clips), e.g. ``0.717 ± 0.064 [0.63, 0.79]``: 133
test clips cannot separate recipes 3 points apart. Runs scored on different clips or label sets are
not comparable: they are ranked in separate tables under a warning. Caches that differ
only in features or augmentation score the same clips, so their runs are compared.

Only JSON is read: never a checkpoint (unpickling a ``.pt`` file from elsewhere could
run code) and never torch, which this module does not import. ``--out`` is checked
before any run is read, and the report and its figures are written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import run
from training.errors import ReportError
from training.folders import check_output_file
from training.report import write_report
from training.runs import RUN_DESCRIPTION, RUN_FILES, read_runs


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished train.py --out-dir folders")
    p.add_argument("--out", default="report.md",
                   help="Markdown file to write; its figures go beside it (default: %(default)s)")
    return p


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
