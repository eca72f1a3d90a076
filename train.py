"""Train a genre classifier on the HDF5 feature cache and report clip-level accuracy.

    python train.py --feature mel --model cnn1d

Trains on random segments (``--segment-seconds``) streamed from the memory-mapped
cache, evaluates every segment of every valid/test clip and averages the segment
probabilities per clip. Writes best.pt/last.pt, args.json, run.json, metrics.jsonl,
results.json and plots to ``--out-dir``. Runs on the GPU when there is one, and under
``torchrun`` with DistributedDataParallel.

A run folder belongs to one run: a new run is refused where another one left its
outputs (continue it with ``--resume``, or replace it with ``--overwrite``), and the
folder is locked while a job uses it. The cache is locked (shared) while it is read,
so a build cannot replace it under a training. Every epoch ends with an atomic
last.pt, so a killed run continues with ``--resume``; a loss that stops being finite
stops the run there.
"""
from __future__ import annotations

import argparse
import dataclasses

from common.cli import run
from models import MODELS
from training.config import (DEFAULT_CACHE, DEFAULT_MASK, DEFAULT_OUT_DIR, DEVICES, OPTIMIZER_NAMES, PART_SEPARATOR,
                             SCHEDULES, TrainConfig)
from training.errors import TrainError  # noqa: F401  (train.TrainError: what main raises)
from training.evaluation import evaluate_checkpoint
from training.loop import fit
from training.runtime import default_workers, resolve_device, setup_distributed, teardown_distributed


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of train.py; the defaults are :class:`training.config.TrainConfig`'s."""
    D = TrainConfig()  # noqa: N806
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("--cache", default=D.cache,
                   help=f"feature cache made by build_cache.py (default: {DEFAULT_CACHE}; with --eval-only, "
                        f"the cache the checkpoint was trained on)")
    p.add_argument("--feature", default=D.feature,
                   help=f"cached feature to train on, or several spectrograms of the cache with the same frame "
                        f"rate joined by '{PART_SEPARATOR}' (e.g. mel{PART_SEPARATOR}cqt): each is normalised "
                        f"per bin on its own, and they are stacked along the bins in that order, so every "
                        f"spectrogram model takes them {fmt}")
    p.add_argument("--model", default=D.model, help=f"one of {', '.join(MODELS)} {fmt}")
    p.add_argument("--epochs", type=int, default=D.epochs, help=f"most epochs to train {fmt}")
    p.add_argument("--batch-size", type=int, default=D.batch_size, help=f"segments per batch {fmt}")
    p.add_argument("--lr", type=float, default=D.lr, help=f"initial learning rate {fmt}")
    p.add_argument("--optimizer", default=D.optimizer, choices=sorted(OPTIMIZER_NAMES), help=f"optimizer {fmt}")
    p.add_argument("--momentum", type=float, default=D.momentum, help=f"momentum of sgd and rmsprop {fmt}")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum for sgd")
    p.add_argument("--weight-decay", type=float, default=D.weight_decay,
                   help=f"weight decay (decoupled for adamw, an L2 penalty otherwise) {fmt}")
    p.add_argument("--l1", type=float, default=D.l1, help=f"L1 penalty on the weights, added to the loss {fmt}")
    p.add_argument("--mixup", type=float, default=D.mixup, metavar="ALPHA",
                   help=f"mixup: blend training segments with weights drawn from Beta(ALPHA, ALPHA); "
                        f"0 turns it off {fmt}")
    p.add_argument("--mask-bins", type=int, default=D.mask_bins,
                   help=f"SpecAugment: zero one band of up to this many bins in each training segment; "
                        f"for stacked features (mel{PART_SEPARATOR}cqt) the band lies anywhere on the stacked "
                        f"bins, and may span the border of two parts "
                        f"(default: {DEFAULT_MASK[0]} for spectrograms, 0 for waveforms)")
    p.add_argument("--mask-frames", type=int, default=D.mask_frames,
                   help=f"SpecAugment: zero one span of up to this many frames in each training segment "
                        f"(default: {DEFAULT_MASK[1]} for spectrograms, 0 for waveforms)")
    p.add_argument("--dropout", type=float, default=D.dropout,
                   help="dropout of the model's head (default: the model's own default)")
    p.add_argument("--model-set", action="append", default=list(D.model_set), metavar="KEY=VALUE",
                   help="any other setting of the model, e.g. --model-set channels=64 or "
                        "--model-set kernel_sizes=8,8,4 (repeatable; see the model's docstring)")
    p.add_argument("--schedule", default=D.schedule, choices=SCHEDULES,
                   help=f"learning-rate schedule: plateau (reduce when the valid loss stops falling) or "
                        f"cosine (linear warm-up, then cosine decay to zero at --epochs) {fmt}")
    p.add_argument("--warmup-epochs", type=int, default=D.warmup_epochs,
                   help=f"epochs of linear lr warm-up of the cosine schedule {fmt}")
    p.add_argument("--lr-patience", type=int, default=D.lr_patience,
                   help=f"plateau: epochs without valid-loss improvement before the lr is reduced {fmt}")
    p.add_argument("--lr-factor", type=float, default=D.lr_factor, help=f"plateau: factor the lr is reduced by {fmt}")
    p.add_argument("--min-lr", type=float, default=D.min_lr,
                   help=f"plateau: stop training once the lr falls below this {fmt}")
    p.add_argument("--segment-seconds", type=float, default=D.segment_seconds,
                   help=f"length of the training and evaluation segments in seconds {fmt}")
    p.add_argument("--crops-per-clip", type=int, default=D.crops_per_clip,
                   help=f"random training segments drawn from each clip per epoch {fmt}")
    p.add_argument("--eval-hop-seconds", type=float, default=D.eval_hop_seconds,
                   help="hop between evaluation segments (default: the segment length, no overlap)")
    p.add_argument("--merge-train-valid", action="store_true",
                   help="train on train+valid for the final model: the last epoch is kept, since valid "
                        "cannot choose one (valid is still reported, but it was trained on)")
    p.add_argument("--seed", type=int, default=D.seed, help=f"seed of weights, crops and shuffling {fmt}")
    p.add_argument("--device", default=D.device, choices=DEVICES,
                   help=f"where to train; auto picks cuda, then mps, then cpu {fmt}")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=D.amp,
                   help="mixed precision (default: on for cuda, off elsewhere)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=D.workers,
                   help="DataLoader worker processes (default: 0 on the CPU, where shipping batches "
                        "between processes costs more than the memory-mapped crops; 4 on a GPU)")
    p.add_argument("--out-dir", default=D.out_dir,
                   help=f"the run folder, where checkpoints, logs and plots go (default: {DEFAULT_OUT_DIR}; "
                        f"with --eval-only, the checkpoint's folder). A folder that holds another run is "
                        f"refused: continue that run with --resume, or replace it with --overwrite")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its last.pt; give the flags it was trained with "
                        "(--epochs may be raised)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out-dir that holds one: its outputs (checkpoints, logs, "
                        "results, plots) are deleted first")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate --checkpoint (default: OUT_DIR/best.pt) on valid and test, no training. "
                        "Results go to --out-dir (default: the checkpoint's folder, whose results.json they "
                        "replace). Results on another cache than the checkpoint was trained on never go into "
                        "the checkpoint's folder: give them an --out-dir of their own; one that already "
                        "holds results needs --overwrite")
    p.add_argument("--checkpoint", default=D.checkpoint, help="checkpoint for --eval-only (default: OUT_DIR/best.pt)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> dict:
    """Train (or evaluate) as ``args`` say; returns the final results (also in results.json)."""
    config = TrainConfig.from_args(args)  # every flag checked before any work
    ddp = setup_distributed(config.device)
    try:
        device = resolve_device(config.device, local_rank=ddp.local_rank)
        if config.workers is None:
            config = dataclasses.replace(config, workers=default_workers(device))
        if config.eval_only:
            return evaluate_checkpoint(config, ddp=ddp, device=device)
        return fit(config, ddp=ddp, device=device)
    finally:
        teardown_distributed(ddp)


def interrupted_hint(argv=None) -> str:
    """What the line after Ctrl-C or SIGTERM tells the user to do."""
    args, _ = get_args_parser().parse_known_args(argv)
    if args.eval_only:
        return "nothing was written; run the same command again"
    return (f"the last finished epoch is kept in {args.out_dir or DEFAULT_OUT_DIR}/last.pt; continue "
            f"with --resume --out-dir {args.out_dir or DEFAULT_OUT_DIR} (and the same other flags)")


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted=interrupted_hint())
