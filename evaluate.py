"""Evaluate a checkpoint, or an ensemble of them, on a cache's valid and test clips.

    python evaluate.py --cache cache.h5 --checkpoint runs/a/best.pt --checkpoint runs/b/best.pt \\
        --out runs/ensemble.json

Every member reads its own feature from the cache (each part of a stacked one such as
``mel+cqt``) and predicts every evaluation segment as in training (training.evaluation's datasets, segment and clip scoring); its clip
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
from pathlib import Path

from common.cli import run
from training.checkpoint import load_members
from training.config import DEVICES, EvalConfig
from training.data import cache_read_lock
from training.ensemble import ensemble_datasets, evaluate_ensemble, print_ensemble_summary, write_ensemble_outputs
from training.errors import EvaluateError
from training.folders import check_output_file
from training.runtime import amp_enabled, resolve_device

__all__ = ["get_args_parser", "main", "EvaluateError"]


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of evaluate.py; the defaults are :class:`training.config.EvalConfig`'s."""
    D = EvalConfig()  # noqa: N806
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("--cache", default=D.cache,
                   help=f"feature cache holding every member's feature {fmt}")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint written by train.py; give it several times for an ensemble")
    p.add_argument("--out", default=D.out,
                   help="write the results as JSON here, and the confusion matrices beside it "
                        "(an existing file is replaced)")
    p.add_argument("--batch-size", type=int, default=D.batch_size, help=f"segments per forward pass {fmt}")
    p.add_argument("--workers", type=int, default=D.workers, help=f"DataLoader worker processes {fmt}")
    p.add_argument("--device", default=D.device, choices=DEVICES,
                   help=f"where to evaluate; auto picks cuda, then mps, then cpu {fmt}")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=D.amp,
                   help="mixed precision (default: on for cuda, off elsewhere)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> dict:
    """Evaluate ``args.checkpoint`` (one or several) on ``args.cache``; returns the results."""
    config = EvalConfig.from_args(args)
    if config.out is not None:
        check_output_file(config.out, flag="--out", error=EvaluateError)  # before any work
    device = resolve_device(config.device, error=EvaluateError)
    members = load_members(config.checkpoint, device=device, error=EvaluateError)
    with ExitStack() as held:
        held.enter_context(cache_read_lock(config.cache))
        datasets = ensemble_datasets(members, config.cache)
        summary = {**evaluate_ensemble(members, datasets, batch_size=config.batch_size, workers=config.workers,
                                       device=device, amp=amp_enabled(device, config.amp),
                                       progress=not config.no_progress),
                   "cache": str(config.cache)}
    print_ensemble_summary(summary)
    if config.out is not None:
        for path in write_ensemble_outputs(summary, Path(config.out)):
            print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted="nothing was written; run the same command again")
