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
import json
import math
import os
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from cache.dataset import SegmentDataset, batch_loader, compute_normalization, eval_hop_frames
from cache.reader import CacheError, FeatureCache
from common.atomic import atomic_path, write_json, write_text
from common.cli import run
from common.errors import UserError
from common.locks import FileLock
from models import MODELS, build_model, count_parameters, model_input_kind, parse_model_settings
from models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from report import check_output_folder, plot_confusion

DEFAULT_CACHE = "cache.h5"
DEFAULT_OUT_DIR = "runs/latest"
SCHEDULES = ("plateau", "cosine")
# The defaults are the recipe chosen by valid accuracy on real music (README, "Choosing the
# defaults"); --mask-* defaults apply to spectrogram features only.
DEFAULT_MASK = (12, 20)
OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
}


# What a run leaves in its --out-dir. A new run there first removes these, so that
# nothing of an older run mixes with it.
RUN_OUTPUTS = ("best.pt", "last.pt", "args.json", "run.json", "metrics.jsonl", "results.json",
               "curves.png", "confusion_test.png", "confusion_valid.png")
# The outputs worth keeping: a folder without them holds at most the start of a run
# that never finished an epoch, which a new run may replace without asking.
RUN_RESULTS = ("last.pt", "best.pt", "metrics.jsonl", "results.json")
# Flags that define what a run trains: resuming with other values would continue
# another run than the one in the folder. (--epochs may change: it trains longer.)
RUN_DEFINING = ("model", "feature", "model_set", "dropout", "segment_seconds", "crops_per_clip",
                "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "l1", "mixup",
                "mask_bins", "mask_frames", "schedule", "warmup_epochs", "lr_patience", "lr_factor",
                "min_lr", "eval_hop_seconds", "merge_train_valid", "seed")
# Float flags: (test, what the value must be). Non-finite values are refused for all.
FLOAT_FLAGS = {
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0 (0 turns it off)"),
    "l1": (lambda v: v >= 0, ">= 0 (0 turns it off)"),
    "mixup": (lambda v: v >= 0, "0 (off) or a positive Beta parameter such as 0.2"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr_factor": (lambda v: 0 < v < 1, "between 0 and 1"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "segment_seconds": (lambda v: v > 0, "> 0"),
    "eval_hop_seconds": (lambda v: v > 0, "> 0"),
}
# Int flags: (lowest, highest or None, what the value means at the lowest).
INT_FLAGS = {
    "epochs": (1, None, ""), "batch_size": (1, None, ""), "crops_per_clip": (1, None, ""),
    "warmup_epochs": (0, None, " (0: no warm-up)"), "lr_patience": (0, None, ""),
    "seed": (0, 2 ** 32 - 1, ""),  # numpy's global seed takes 32 bits
    "workers": (0, None, " (0: load in the main process)"),
    "mask_bins": (0, None, " (0: off)"), "mask_frames": (0, None, " (0: off)"),
}


class TrainError(UserError):
    """Bad input to training: reported as a message, not a traceback."""


class Diverged(TrainError):
    """The training loss or the valid predictions stopped being finite."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("--cache", default=None,
                   help=f"feature cache made by build_cache.py (default: {DEFAULT_CACHE}; with --eval-only, "
                        f"the cache the checkpoint was trained on)")
    p.add_argument("--feature", default="cqt", help=f"cached feature to train on {fmt}")
    p.add_argument("--model", default="cnn1d", help=f"one of {', '.join(MODELS)} {fmt}")
    p.add_argument("--epochs", type=int, default=30, help=f"most epochs to train {fmt}")
    p.add_argument("--batch-size", type=int, default=32, help=f"segments per batch {fmt}")
    p.add_argument("--lr", type=float, default=1e-3, help=f"initial learning rate {fmt}")
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS), help=f"optimizer {fmt}")
    p.add_argument("--momentum", type=float, default=0.9, help=f"momentum of sgd and rmsprop {fmt}")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum for sgd")
    p.add_argument("--weight-decay", type=float, default=1e-2,
                   help=f"weight decay (decoupled for adamw, an L2 penalty otherwise) {fmt}")
    p.add_argument("--l1", type=float, default=0.0, help=f"L1 penalty on the weights, added to the loss {fmt}")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help=f"mixup: blend training segments with weights drawn from Beta(ALPHA, ALPHA); "
                        f"0 turns it off {fmt}")
    p.add_argument("--mask-bins", type=int, default=None,
                   help=f"SpecAugment: zero one band of up to this many bins in each training segment "
                        f"(default: {DEFAULT_MASK[0]} for spectrograms, 0 for waveforms)")
    p.add_argument("--mask-frames", type=int, default=None,
                   help=f"SpecAugment: zero one span of up to this many frames in each training segment "
                        f"(default: {DEFAULT_MASK[1]} for spectrograms, 0 for waveforms)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout of the model's head (default: the model's own default)")
    p.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of the model, e.g. --model-set channels=64 or "
                        "--model-set kernel_sizes=8,8,4 (repeatable; see the model's docstring)")
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES,
                   help=f"learning-rate schedule: plateau (reduce when the valid loss stops falling) or "
                        f"cosine (linear warm-up, then cosine decay to zero at --epochs) {fmt}")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help=f"epochs of linear lr warm-up of the cosine schedule {fmt}")
    p.add_argument("--lr-patience", type=int, default=3,
                   help=f"plateau: epochs without valid-loss improvement before the lr is reduced {fmt}")
    p.add_argument("--lr-factor", type=float, default=0.2, help=f"plateau: factor the lr is reduced by {fmt}")
    p.add_argument("--min-lr", type=float, default=1e-5,
                   help=f"plateau: stop training once the lr falls below this {fmt}")
    p.add_argument("--segment-seconds", type=float, default=3.0,
                   help=f"length of the training and evaluation segments in seconds {fmt}")
    p.add_argument("--crops-per-clip", type=int, default=8,
                   help=f"random training segments drawn from each clip per epoch {fmt}")
    p.add_argument("--eval-hop-seconds", type=float, default=None,
                   help="hop between evaluation segments (default: the segment length, no overlap)")
    p.add_argument("--merge-train-valid", action="store_true",
                   help="train on train+valid for the final model: the last epoch is kept, since valid "
                        "cannot choose one (valid is still reported, but it was trained on)")
    p.add_argument("--seed", type=int, default=0, help=f"seed of weights, crops and shuffling {fmt}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help=f"where to train; auto picks cuda, then mps, then cpu {fmt}")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for cuda, off elsewhere)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: 0 on the CPU, where shipping batches "
                        "between processes costs more than the memory-mapped crops; 4 on a GPU)")
    p.add_argument("--out-dir", default=None,
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
    p.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only (default: OUT_DIR/best.pt)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


# -- set-up -------------------------------------------------------------------------------
@dataclass
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    info = Dist(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise TrainError(f"process {info.rank} has LOCAL_RANK {info.local_rank}, but this node has "
                             f"{torch.cuda.device_count()} GPUs; use --nproc_per_node "
                             f"{torch.cuda.device_count()} or fewer")
        # Before the process group: NCCL and all_gather_object use the current device,
        # which is otherwise GPU 0 on every process.
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def resolve_device(name: str, ddp: Dist) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        return torch.device("cuda", ddp.local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainError("--device mps asked for, but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_workers(device: torch.device) -> int:
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def flag(name: str) -> str:
    """The command-line spelling of argument ``name``.

    >>> flag("segment_seconds")
    '--segment-seconds'
    """
    return "--" + name.replace("_", "-")


def check_args(args) -> None:
    """Refuse, before any work, every flag value (or combination) training cannot use.

    The one place where flags are checked: names, every number's type, finiteness and
    range, and flags that contradict each other.
    """
    if args.model not in MODELS:
        raise TrainError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    if args.optimizer not in OPTIMIZERS:
        raise TrainError(f"unknown optimizer {args.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if args.schedule not in SCHEDULES:
        raise TrainError(f"unknown --schedule {args.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    for name, (test, wanted) in FLOAT_FLAGS.items():
        value = getattr(args, name)
        if value is None and name in ("dropout", "eval_hop_seconds"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not test(value):
            raise TrainError(f"{flag(name)} {value}: must be a finite number {wanted}")
    for name, (low, high, note) in INT_FLAGS.items():
        value = getattr(args, name)
        if value is None and name in ("workers", "mask_bins", "mask_frames"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or \
                (high is not None and value > high):
            limits = f"between {low} and {high}" if high is not None else f"at least {low}{note}"
            raise TrainError(f"{flag(name)} {value}: must be an integer {limits}")
    if args.schedule == "plateau" and args.lr < args.min_lr:
        raise TrainError(f"--lr {args.lr} is below --min-lr {args.min_lr}: the plateau schedule would stop "
                         f"before the first epoch; raise --lr or lower --min-lr")
    for a, b in (("resume", "overwrite"), ("resume", "eval_only")):
        if getattr(args, a) and getattr(args, b):
            raise TrainError(f"{flag(a)} and {flag(b)} contradict each other; give one of them")
    if args.checkpoint is not None and not args.eval_only:
        raise TrainError(f"--checkpoint {args.checkpoint} is read by --eval-only only; add --eval-only to "
                         f"evaluate it (--resume continues from OUT_DIR/last.pt)")


def resolve_masks(args, kind: str) -> None:
    """Fill unset --mask-bins/--mask-frames: the default masks for spectrograms, none for waveforms."""
    spectrogram = kind == "spectrogram"
    if not spectrogram and (args.mask_bins or args.mask_frames):
        raise TrainError(f"--mask-bins/--mask-frames mask spectrograms, but feature {args.feature!r} is a "
                         f"{kind}; leave them unset or 0 for it")
    if args.mask_bins is None:
        args.mask_bins = DEFAULT_MASK[0] if spectrogram else 0
    if args.mask_frames is None:
        args.mask_frames = DEFAULT_MASK[1] if spectrogram else 0


def check_model_fits_feature(model: str, feature: str, cache: FeatureCache) -> None:
    """Refuse a model that cannot take the feature, naming the features that fit."""
    kind = cache.feature_settings(feature)["kind"]
    wanted = model_input_kind(model)
    if kind != wanted:
        fitting = [name for name in cache.features if cache.feature_settings(name)["kind"] == wanted]
        hint = (f"features in {cache.path} that fit: {', '.join(fitting)}" if fitting else
                f"none of the cached features ({', '.join(cache.features)}) fits; rebuild the cache "
                f"with --features {'wave' if wanted == 'waveform' else 'mel'}")
        raise TrainError(f"model {model!r} takes {wanted} input, but feature {feature!r} is a {kind}; {hint}")


def check_segment_fits_model(model, args, segment_frames: int, frames_per_second: float) -> None:
    """Refuse, before training, a segment shorter than the model's pooling can take."""
    if segment_frames < model.min_frames:
        need = model.min_frames / frames_per_second
        raise TrainError(f"--segment-seconds {args.segment_seconds} gives {segment_frames} frames, but "
                         f"{args.model} needs at least {model.min_frames} ({need:.2f} s); use "
                         f"--segment-seconds {math.ceil(need * 100) / 100} or more, or a shallower model")


def open_cache(path, feature: str, *, expect_labels=None) -> FeatureCache:
    try:
        cache = FeatureCache(path, expect_labels=expect_labels)
        cache.feature_settings(feature)
    except CacheError as exc:
        raise TrainError(str(exc)) from exc
    return cache


def cache_read_lock(path):
    """A shared lock on the cache at ``path``, to hold for as long as it is read.

    A build takes the exclusive lock on the same file to write or replace it, so it
    waits for (is refused by) trainings and evaluations that read it, and they by it.
    A missing cache gets no lock (opening it says what to do), and neither does one in
    a folder where the lock file cannot be made: no build of this user can replace a
    file there either.
    """
    if not Path(path).is_file():
        return nullcontext()
    lock = FileLock(path, shared=True, what="cache", hint="a build is writing or replacing it")
    try:
        return lock.acquire()
    except OSError:
        return nullcontext()


def on_main(ddp: Dist, work):
    """``work()`` on rank 0 only; every rank returns its result, or raises its error.

    Under torchrun, a rank left waiting for a result that rank 0 never sends would hang
    the job: the error travels with the result (as a message) and every rank raises it.
    """
    result = error = None
    if ddp.main:
        try:
            result = work()
        except UserError as exc:
            error = exc
    if ddp.world > 1:
        box = [result, None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        result, message = box
        if message is not None and error is None:
            error = TrainError(message)
    if error is not None:
        raise error
    return result


# -- the run folder ------------------------------------------------------------------------
def present_outputs(out_dir: Path, names=RUN_OUTPUTS) -> list[str]:
    """Which of ``names`` are in ``out_dir``."""
    return [name for name in names if (out_dir / name).exists()]


def describe_run(out_dir: Path) -> str:
    """A few words on the run in ``out_dir`` from its JSON files (never its checkpoints)."""
    try:
        saved = json.loads((out_dir / "args.json").read_text())
        what = f"{saved['model']} on {saved['feature']}"
    except (OSError, ValueError, KeyError, TypeError):
        what = "a run"
    try:
        epochs = sum(1 for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        epochs = 0
    state = "finished" if (out_dir / "results.json").exists() else f"{epochs} epoch(s) done"
    return f"{what}, {state}"


def refuse_existing_run(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a new run in a folder that holds a run's results, unless ``overwrite``."""
    found = present_outputs(out_dir, RUN_RESULTS)
    if found and not overwrite:
        resume = " continue it with --resume (and the flags it was trained with)," if "last.pt" in found else ""
        raise TrainError(f"--out-dir {out_dir} already holds a run ({describe_run(out_dir)}: "
                         f"{', '.join(found)});{resume} replace it with --overwrite (deletes its outputs "
                         f"first), or give another --out-dir")


def clear_outputs(out_dir: Path, names=RUN_OUTPUTS) -> None:
    """Delete ``names`` from ``out_dir``, and temporary files a killed writer left of them."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    remove_temporaries(out_dir, names)


def remove_temporaries(out_dir: Path, names=RUN_OUTPUTS) -> None:
    """Delete the temporary files of ``names`` that a killed writer (kill -9) left behind.

    Only while holding the folder's lock: nobody else is writing them then.
    """
    for name in names:
        for tmp in out_dir.glob(f".{name}.*.tmp"):  # common.atomic's temporary files
            tmp.unlink(missing_ok=True)


def lock_run_folder(out_dir: Path) -> FileLock:
    """The exclusive lock of the run folder ``out_dir`` (which exists), taken."""
    return FileLock(out_dir, what="run folder", hint="or give another --out-dir").acquire()


@contextmanager
def claim_run_folder(out_dir: Path, *, resume: bool, overwrite: bool):
    """Hold ``out_dir`` for one training: usable, locked, and holding no other run.

    Checked before any work: a folder that is a file, lies under a file or cannot be
    written; with ``resume``, a folder without last.pt; without, a folder that holds a
    run (unless ``overwrite``, whose deletion waits until the new run is ready to write).
    """
    if resume and not (out_dir / "last.pt").is_file():
        started = " (the run there stopped before its first epoch finished)" if (out_dir / "args.json").exists() else ""
        raise TrainError(f"--resume: checkpoint {out_dir / 'last.pt'} does not exist, so there is no run to "
                         f"resume in {out_dir}{started}; start the run without --resume")
    check_output_folder(out_dir, flag="--out-dir", error=TrainError)
    with lock_run_folder(out_dir):
        if not resume:
            refuse_existing_run(out_dir, overwrite=overwrite)
        remove_temporaries(out_dir)
        yield


def start_run_outputs(out_dir: Path, *, args, description: dict, fresh: bool) -> None:
    """Write args.json and run.json; a fresh run first removes what an older one left."""
    if fresh:
        clear_outputs(out_dir)
    write_json(out_dir / "args.json", vars(args))
    # What report.py needs to know of the run, readable without unpickling a checkpoint.
    write_json(out_dir / "run.json", description)


def segment_frames_for(cache: FeatureCache, feature: str, seconds: float) -> int:
    fps = cache.feature_settings(feature)["frames_per_second"]
    return max(1, round(seconds * fps))


def make_loader(dataset: SegmentDataset, *, batch_size: int, shuffle: bool, workers: int,
                device: torch.device, seed: int, epoch: int = 0, ddp: Dist = Dist()) -> DataLoader:
    if shuffle and ddp.world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=ddp.world,
                                                                  rank=ddp.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    elif shuffle:
        # The order depends on (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = range(len(dataset))
    return batch_loader(dataset, sampler=sampler, batch_size=batch_size, workers=workers,
                        pin_memory=device.type == "cuda")


def make_optimizer(args, params):
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        kwargs.update(momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0)
    elif args.optimizer == "rmsprop":
        kwargs.update(momentum=args.momentum)
    return OPTIMIZERS[args.optimizer](params, **kwargs)


def cosine_factor(epoch: int, *, epochs: int, warmup: int) -> float:
    """Multiplier of the initial lr in 0-based ``epoch``: linear warm-up to 1 at epoch
    ``warmup``, then a half cosine that would reach zero one epoch after the last.

    >>> [round(cosine_factor(e, epochs=4, warmup=1), 3) for e in range(4)]
    [0.5, 1.0, 0.75, 0.25]
    >>> cosine_factor(1, epochs=1, warmup=1)  # the step after a one-epoch run
    1.0
    """
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    # max(): LambdaLR also asks for the factor after the last epoch, which may be the warm-up's last
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(1, epochs - warmup))))


def make_scheduler(args, optimizer):
    """``--schedule``: stepped once per epoch, plateau with the monitored loss."""
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: cosine_factor(epoch, epochs=args.epochs, warmup=args.warmup_epochs))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=args.lr_factor,
                                                      patience=args.lr_patience)


# -- the loops -------------------------------------------------------------------------------
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel and/or torch.compile wrapper."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def amp_enabled(device: torch.device, flag: bool | None) -> bool:
    """--amp as asked, or by default on for CUDA only."""
    return device.type == "cuda" if flag is None else flag


def autocast(device: torch.device, enabled: bool):
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float):
    """Mixup (Zhang et al. 2018): each segment blended with another of the batch.

    Returns ``(mixed_x, y, y_partner, lam)``: the loss is ``lam * CE(y) + (1 - lam) *
    CE(y_partner)``. Draws from torch's global generator, which checkpoints save, so a
    resumed run mixes as an uninterrupted one would.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(y)).to(y.device)
    return lam * x + (1 - lam) * x[partner], y, y[partner], lam


def mask_batch(x: torch.Tensor, *, max_bins: int, max_frames: int) -> torch.Tensor:
    """SpecAugment-style masking (Park et al. 2019), in place: each segment of
    ``(batch, n_bins, frames)`` gets one band of up to ``max_bins`` bins and one span of
    up to ``max_frames`` frames set to 0, the train mean after normalisation.

    Widths and positions come from torch's global generator, as in :func:`mix_batch`.
    """
    batch, n_bins, frames = x.shape
    for size, limit, axis in ((n_bins, max_bins, 1), (frames, max_frames, 2)):
        if limit <= 0:
            continue
        width = torch.randint(0, min(limit, size) + 1, (batch, 1))
        start = (torch.rand(batch, 1) * (size - width + 1)).long()
        position = torch.arange(size)[None, :]
        masked = ((position >= start) & (position < start + width)).to(x.device)
        x.masked_fill_(masked[:, :, None] if axis == 1 else masked[:, None, :], 0.0)
    return x


def any_rank(flag: bool, ddp: Dist) -> bool:
    """True if ``flag`` is true on any rank (every rank must call it)."""
    if ddp.world == 1:
        return flag
    t = torch.tensor([float(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item() > 0)


def train_one_epoch(model, loader, optimizer, *, device, amp: bool, l1: float, scaler,
                    progress: bool, desc: str, mixup: float = 0.0,
                    mask: tuple[int, int] = (0, 0), epoch: int = 0, ddp: Dist = Dist()) -> dict:
    """One pass over the training segments; returns mean loss, accuracy and throughput.

    With ``mixup`` > 0 segments are mixed (:func:`mix_batch`) and the accuracy counts
    the label with the larger share.

    Raises
    ------
    Diverged
        A batch's loss is not finite (on any rank): raised before that batch's step,
        naming ``epoch``, the batch and the learning rate.
    """
    model.train()
    total_loss = total_correct = total = 0
    start = time.perf_counter()
    batches = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for batch, (x, y) in enumerate(batches, start=1):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if any(mask):
            x = mask_batch(x, max_bins=mask[0], max_frames=mask[1])
        if mixup > 0:
            x, y_a, y_b, lam = mix_batch(x, y, mixup)
            y = y_a if lam >= 0.5 else y_b
        with autocast(device, amp):
            logits = model(x)
            if mixup > 0:
                loss = (lam * F.cross_entropy(logits.float(), y_a)
                        + (1 - lam) * F.cross_entropy(logits.float(), y_b))
            else:
                loss = F.cross_entropy(logits.float(), y)
        if l1:
            loss = loss + l1 * l1_penalty(model)
        value = loss.item()
        # Before the step: the weights stay those of the last finite batch.
        if any_rank(not math.isfinite(value), ddp):
            shown = value if not math.isfinite(value) else "not finite on another process"
            raise Diverged(f"training diverged: the loss is {shown} at epoch {epoch}, batch {batch} "
                           f"(lr {optimizer.param_groups[0]['lr']:.3g})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += value * len(y)
        total_correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    seconds = time.perf_counter() - start
    return {"loss": total_loss / total, "acc": total_correct / total, "segments": total,
            "seconds": seconds}


@torch.no_grad()
def predict_segments(model, loader, *, device, amp: bool, progress: bool = False,
                     desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Segment probabilities ``(segments, n_classes)`` and clip ids ``(segments,)``."""
    model.eval()
    probs, clip_ids = [], []
    for x, _, clip in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        clip_ids.append(clip.numpy())
    return np.concatenate(probs), np.concatenate(clip_ids)


def gather_segments(model, dataset: SegmentDataset, *, batch_size, workers, device, amp, ddp: Dist,
                    progress=False, desc="eval") -> tuple[np.ndarray, np.ndarray]:
    """Predict every segment of ``dataset``; under DDP each rank takes a share and all get all."""
    indices = np.arange(len(dataset))
    loader = batch_loader(dataset, sampler=indices[ddp.rank::ddp.world].tolist(), batch_size=batch_size,
                          workers=workers, pin_memory=device.type == "cuda")
    probs, clip_ids = predict_segments(model, loader, device=device, amp=amp, progress=progress, desc=desc)
    if ddp.world == 1:
        return probs, clip_ids
    gathered = [None] * ddp.world
    dist.all_gather_object(gathered, (indices[ddp.rank::ddp.world], probs, clip_ids))
    order = np.concatenate([g[0] for g in gathered])
    all_probs = np.concatenate([g[1] for g in gathered])[np.argsort(order)]
    all_clips = np.concatenate([g[2] for g in gathered])[np.argsort(order)]
    return all_probs, all_clips


def clip_scores(probs: np.ndarray, clip_ids: np.ndarray, dataset: SegmentDataset, n_classes: int) -> dict:
    """Segment- and clip-level metrics; clip probabilities are the mean over its segments."""
    seg_labels = dataset.clip_labels[clip_ids]
    n_clips = len(dataset.clip_labels)
    clip_probs = np.zeros((n_clips, n_classes))
    np.add.at(clip_probs, clip_ids, probs)
    clip_probs /= np.bincount(clip_ids, minlength=n_clips)[:, None]
    clip_pred = clip_probs.argmax(1)
    eps = 1e-12
    return {
        "loss": float(-np.log(probs[np.arange(len(probs)), seg_labels] + eps).mean()),
        "segment_acc": float(accuracy_score(seg_labels, probs.argmax(1))),
        "clip_acc": float(accuracy_score(dataset.clip_labels, clip_pred)),
        "clip_pred": clip_pred,
        "clip_probs": clip_probs,
    }


def evaluate(model, dataset, *, args, device, amp, ddp, n_classes, desc="eval") -> dict:
    """:func:`clip_scores` of ``model`` on every segment of ``dataset``.

    Raises
    ------
    Diverged
        The model's probabilities are not finite (its weights hold NaN or inf).
    """
    probs, clip_ids = gather_segments(model, dataset, batch_size=args.batch_size, workers=args.workers,
                                      device=device, amp=amp, ddp=ddp,
                                      progress=ddp.main and not args.no_progress, desc=desc)
    if not np.isfinite(probs).all():
        raise Diverged(f"the model's predictions on {desc} are not finite (its weights hold NaN or inf)")
    return clip_scores(probs, clip_ids, dataset, n_classes)


def clip_report(y_true, y_pred, labels) -> dict:
    """Clip accuracy, per-class accuracy (None for a class with no clips), confusion matrix
    and clip count of one split: the fields of results.json that report.py reads.

    >>> clip_report([0, 0, 1], [0, 1, 1], ["a", "b", "c"])["per_class_acc"]
    {'a': 0.5, 'b': 1.0, 'c': None}
    """
    matrix = confusion_matrix(y_true, y_pred, labels=range(len(labels)))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = matrix.diagonal() / matrix.sum(1)
    return {"clip_acc": float(accuracy_score(y_true, y_pred)),
            "per_class_acc": {label: (None if math.isnan(v) else float(v)) for label, v in zip(labels, per_class)},
            "confusion_matrix": matrix.tolist(),
            "clips": int(len(y_true))}


def final_report(scores: dict, dataset: SegmentDataset, labels) -> dict:
    """:func:`clip_report` of one split's clip predictions, with its segment accuracy and loss."""
    return {**clip_report(dataset.clip_labels, scores["clip_pred"], labels),
            "segment_acc": scores["segment_acc"], "loss": scores["loss"]}


# -- outputs -------------------------------------------------------------------------------
# Every output is written through common.atomic (write_json refuses NaN); the figures
# of results (plot_confusion) are report.py's, which needs them without torch.
def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["valid_loss"] for h in history], label="valid")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train (segment)")
    ax_acc.plot(epochs, [h["valid_segment_acc"] for h in history], label="valid (segment)")
    ax_acc.plot(epochs, [h["valid_clip_acc"] for h in history], label="valid (clip)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------
def build_eval_datasets(args, cache: FeatureCache, segment_frames: int, mean, std) -> dict:
    """Every segment of every original valid and test clip."""
    hop = eval_hop_frames(args.eval_hop_seconds, cache.feature_settings(args.feature)["frames_per_second"])
    try:
        return {split: SegmentDataset(cache.path, feature=args.feature, splits=(split,), train=False,
                                      segment_frames=segment_frames, hop_frames=hop, mean=mean, std=std)
                for split in ("valid", "test")}
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def build_train_dataset(args, cache: FeatureCache, segment_frames: int, mean, std) -> SegmentDataset:
    """Random segments of train (and valid with --merge-train-valid), originals and augmented copies."""
    splits = ("train", "valid") if args.merge_train_valid else ("train",)
    try:
        return SegmentDataset(cache.path, feature=args.feature, splits=splits, train=True, seed=args.seed,
                              segment_frames=segment_frames, crops_per_clip=args.crops_per_clip,
                              mean=mean, std=std)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def open_checkpoint_cache(ckpt: dict, path, cache_path) -> FeatureCache:
    """The cache at ``cache_path``, refused unless checkpoint ``ckpt`` (read from ``path``) can use it.

    It must hold the checkpoint's feature with the settings it was trained on and the
    same labels. A cache other than the one it was trained on gets a warning: its
    valid and test clips may have been in the checkpoint's training data.
    """
    cache = open_cache(cache_path, ckpt["feature"], expect_labels=ckpt["labels"])
    if cache.feature_settings(ckpt["feature"]) != ckpt["feature_settings"]:
        raise TrainError(f"{cache.path} computes feature {ckpt['feature']!r} with other settings than "
                         f"{path} was trained on; rebuild the cache with the checkpoint's settings")
    if ckpt.get("cache_fingerprint") != cache.fingerprint:
        print(f"warning: {path} was trained on another cache than {cache.path}; its valid and test "
              f"clips may have been in its training data", file=sys.stderr)
    return cache


def checkpoint_eval_datasets(ckpt: dict, path, cache) -> tuple[FeatureCache, dict]:
    """The cache and valid/test datasets to evaluate checkpoint ``ckpt`` (read from ``path``) on.

    ``cache`` is a path (checked with :func:`open_checkpoint_cache`) or a cache it
    returned. Segments and hop are those training evaluated with.
    """
    if not isinstance(cache, FeatureCache):
        cache = open_checkpoint_cache(ckpt, path, cache)
    saved = argparse.Namespace(**{"feature": ckpt["feature"], "eval_hop_seconds": None, **ckpt_args(ckpt)})
    norm = ckpt["normalization"]
    mean, std = np.asarray(norm["mean"], dtype=np.float32), np.asarray(norm["std"], dtype=np.float32)
    return cache, build_eval_datasets(saved, cache, ckpt["segment_frames"], mean, std)


def ckpt_args(ckpt: dict) -> dict:
    """The training arguments a checkpoint records ({} when it has none)."""
    saved = ckpt.get("args")
    return saved if isinstance(saved, dict) else {}


def run_description(*, args, model, cache: FeatureCache, segment_frames: int) -> dict:
    """What a run is, as plain values: its checkpoints' description and its run.json."""
    return {
        "model": args.model,
        "model_config": unwrap(model).config,
        "feature": args.feature,
        "feature_settings": cache.feature_settings(args.feature),
        "labels": list(cache.labels),
        "sample_rate": cache.sample_rate,
        "cache": str(cache.path),
        "cache_fingerprint": cache.fingerprint,
        "data_fingerprint": cache.data_fingerprint,
        "segment_frames": segment_frames,
        "parameters": count_parameters(unwrap(model)),
    }


def checkpoint_state(*, args, model, cache, segment_frames, mean, std, optimizer=None, scheduler=None,
                     scaler=None, epoch=None, best=None, history=None) -> dict:
    """Everything a checkpoint holds, as tensors and plain values (``torch.load(weights_only=True)``)."""
    raw = unwrap(model)
    state = {
        **run_description(args=args, model=model, cache=cache, segment_frames=segment_frames),
        "normalization": {"mean": np.asarray(mean, dtype=np.float64).tolist(),
                          "std": np.asarray(std, dtype=np.float64).tolist()},
        "args": vars(args),
        "state_dict": raw.state_dict(),
        "epoch": epoch,
        "best": best,
        "history": history or [],
    }
    if optimizer is not None:
        state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     scaler=scaler.state_dict(), torch_rng=torch.get_rng_state())
    return state


def run_facts(model, cache: FeatureCache, history: list[dict]) -> dict:
    """What a report needs beside the accuracies: size, augmentation and training time."""
    return {"parameters": count_parameters(unwrap(model)),
            "augment_versions": cache.settings["augment"]["versions"],
            "cache_fingerprint": cache.fingerprint, "data_fingerprint": cache.data_fingerprint,
            "epochs_trained": len(history),
            "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history)}


def run_final_evaluation(model, evals, *, args, device, amp, ddp, labels, out_dir: Path,
                         trained_on_valid: bool, facts: dict) -> dict:
    results = {}
    for split, dataset in evals.items():
        scores = evaluate(model, dataset, args=args, device=device, amp=amp, ddp=ddp,
                          n_classes=len(labels), desc=split)
        results[split] = final_report(scores, dataset, labels)
    summary = {"valid_acc": results["valid"]["clip_acc"], "test_acc": results["test"]["clip_acc"],
               "valid_segment_acc": results["valid"]["segment_acc"],
               "test_segment_acc": results["test"]["segment_acc"],
               "valid_trained_on": trained_on_valid, "labels": list(labels), **facts, **results}
    if ddp.main:
        write_json(out_dir / "results.json", summary)
        plot_confusion(results["test"]["confusion_matrix"], labels, out_dir / "confusion_test.png",
                       "test (clip level)")
        plot_confusion(results["valid"]["confusion_matrix"], labels, out_dir / "confusion_valid.png",
                       "valid (clip level)" + (" - trained on" if trained_on_valid else ""))
        print_results(summary, labels, trained_on_valid)
    return summary


def print_results(summary: dict, labels, trained_on_valid: bool) -> None:
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


# -- evaluation only -----------------------------------------------------------------------
EVAL_OUTPUTS = ("results.json", "confusion_test.png", "confusion_valid.png")


def eval_out_dir(args, path: Path, ckpt: dict, cache: FeatureCache) -> Path:
    """Where --eval-only writes: --out-dir, else the checkpoint's folder.

    Results on another cache than the checkpoint's never go into the checkpoint's
    folder: they would replace its run's results.json with numbers on other clips.
    """
    own = path.parent
    out = Path(args.out_dir) if args.out_dir else own
    if out.resolve() == own.resolve() and ckpt.get("cache_fingerprint") != cache.fingerprint:
        given = "--out-dir names the checkpoint's folder" if args.out_dir else "no --out-dir is given"
        raise TrainError(f"--eval-only: {path} was trained on another cache than {cache.path}, and "
                         f"{given}: its results would replace {own / 'results.json'} with results on "
                         f"another cache; give --out-dir a folder of their own")
    return out


@contextmanager
def claim_eval_folder(out_dir: Path, *, own: bool, overwrite: bool):
    """Hold ``out_dir`` for an evaluation: usable, locked, and holding no other results.

    The checkpoint's ``own`` folder may be re-evaluated (on its own cache, see
    :func:`eval_out_dir`); any other folder that holds results or a run needs
    ``overwrite``, which clears them first.
    """
    check_output_folder(out_dir, flag="--out-dir", error=TrainError)
    with lock_run_folder(out_dir):
        if not own:
            found = present_outputs(out_dir, RUN_RESULTS)
            if found and not overwrite:
                raise TrainError(f"--eval-only: --out-dir {out_dir} already holds results ({', '.join(found)}); "
                                 f"replace them with --overwrite, or give another --out-dir")
            if found:
                clear_outputs(out_dir)
        yield


def eval_only(args, ddp: Dist, device: torch.device) -> dict:
    """Evaluate ``--checkpoint`` on valid and test; returns the results (also in OUT/results.json).

    The checkpoint is read without unpickling code, the cache under a shared lock and
    the output folder under its lock; see :func:`eval_out_dir` for where results go.
    """
    path = Path(args.checkpoint or Path(args.out_dir or DEFAULT_OUT_DIR) / "best.pt")
    ckpt = load_checkpoint(path)
    cache_path = args.cache or ckpt_args(ckpt).get("cache")
    if not cache_path:
        raise TrainError(f"{path} does not record the cache it was trained on; give --cache")
    with ExitStack() as held:
        held.enter_context(cache_read_lock(cache_path))
        cache = open_checkpoint_cache(ckpt, path, cache_path)
        out_dir = eval_out_dir(args, path, ckpt, cache)
        own = out_dir.resolve() == path.parent.resolve()
        on_main(ddp, lambda: held.enter_context(claim_eval_folder(out_dir, own=own, overwrite=args.overwrite)))
        _, evals = checkpoint_eval_datasets(ckpt, path, cache)
        saved = argparse.Namespace(**{**ckpt_args(ckpt), "workers": args.workers, "no_progress": args.no_progress,
                                      "batch_size": args.batch_size, "cache": str(cache_path)})
        model = model_from_checkpoint(ckpt, device=device, path=path)
        amp = amp_enabled(device, args.amp)
        return run_final_evaluation(model, evals, args=saved, device=device, amp=amp, ddp=ddp,
                                    labels=list(cache.labels), out_dir=out_dir,
                                    trained_on_valid=bool(ckpt_args(ckpt).get("merge_train_valid")),
                                    facts=run_facts(model, cache, ckpt.get("history") or []))


# -- training ------------------------------------------------------------------------------
def main(args) -> dict:
    """Train (or evaluate) as ``args`` say; returns the final results (also in results.json)."""
    check_args(args)
    ddp = setup_distributed(args.device)
    try:
        device = resolve_device(args.device, ddp)
        if args.workers is None:
            args.workers = default_workers(device)
        if args.eval_only:
            return eval_only(args, ddp, device)
        # Plain strings: args go into checkpoints and JSON files, which take no Paths.
        args.cache = str(args.cache or DEFAULT_CACHE)
        args.out_dir = str(args.out_dir or DEFAULT_OUT_DIR)
        return train(args, ddp, device)
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def flags_text(values: dict) -> str:
    """Flags as a command line would give them.

    >>> flags_text({"model": "cnn1d", "merge_train_valid": False, "model_set": ["channels=8"]})
    '--model cnn1d (no --merge-train-valid) --model-set channels=8'
    """
    parts = []
    for name, value in values.items():
        if value is True:
            parts.append(flag(name))
        elif value is False or value is None or value == []:
            parts.append(f"(no {flag(name)})")
        elif isinstance(value, list):
            parts.extend(f"{flag(name)} {item}" for item in value)
        else:
            parts.append(f"{flag(name)} {value}")
    return " ".join(parts)


def check_resume_flags(args, saved: dict, out_dir: Path) -> None:
    """Refuse to resume with other values of the flags that define the run (:data:`RUN_DEFINING`)."""
    differ = [name for name in RUN_DEFINING if name in saved and saved[name] != getattr(args, name)]
    if differ:
        trained = flags_text({name: saved[name] for name in differ})
        given = flags_text({name: getattr(args, name) for name in differ})
        raise TrainError(f"--resume: the run in {out_dir} was trained with {trained}, not {given}; "
                         f"resume with those, or start a new --out-dir")


def check_labels(train_set: SegmentDataset, evals: dict, *, ddp: Dist) -> None:
    """Refuse training clips of fewer than two genres; warn of genres only valid/test have."""
    labels = train_set.labels
    trained = sorted(set(train_set.clip_labels.tolist()))
    if len(trained) < 2:
        raise TrainError(f"every training clip of cache {train_set.cache.path} ({'+'.join(train_set.splits)}) "
                         f"is of genre {', '.join(labels[i] for i in trained)!r}: a classifier needs clips "
                         f"of at least two genres to learn anything; add clips of other genres to the split "
                         f"lists and rebuild the cache")
    unseen: dict[str, list[str]] = {}
    for split, dataset in evals.items():
        for i in sorted(set(dataset.clip_labels.tolist()) - set(trained)):
            unseen.setdefault(labels[i], []).append(split)
    if unseen and ddp.main:
        names = ", ".join(f"{label!r} ({'+'.join(splits)})" for label, splits in unseen.items())
        print(f"warning: genre(s) {names} have clips in cache {train_set.cache.path} but none among the "
              f"training clips: the model cannot learn them, and every such clip will count as wrong. Add "
              f"training clips of them to the train list and rebuild the cache", file=sys.stderr, flush=True)


def kept_checkpoint(out_dir: Path, epochs_done: int) -> str:
    """What the run folder keeps after a failure in epoch ``epochs_done + 1``."""
    if epochs_done >= 1 and (out_dir / "last.pt").is_file():
        return f"{out_dir / 'last.pt'} keeps epoch {epochs_done}, the last good one (best.pt the best)"
    return "no epoch had finished, so no checkpoint was written"


def train(args, ddp: Dist, device: torch.device) -> dict:
    out_dir = Path(args.out_dir)
    with ExitStack() as held:
        on_main(ddp, lambda: held.enter_context(
            claim_run_folder(out_dir, resume=args.resume, overwrite=args.overwrite)))
        resume, resume_best = load_resume(out_dir, ddp) if args.resume else (None, None)
        held.enter_context(cache_read_lock(args.cache))
        return train_in(args, ddp, device, out_dir=out_dir, resume=resume, resume_best=resume_best)


def train_in(args, ddp: Dist, device: torch.device, *, out_dir: Path, resume, resume_best) -> dict:
    """Train in the claimed ``out_dir`` from scratch, or from ``resume`` (last.pt) and ``resume_best``."""
    cache = open_cache(args.cache, args.feature, expect_labels=resume["labels"] if resume else None)
    if resume and resume["cache_fingerprint"] != cache.fingerprint:
        raise TrainError(f"--resume: {out_dir / 'last.pt'} was trained on another cache than {cache.path} "
                         f"(fingerprints differ); resume with the same cache, or start a new --out-dir")
    check_model_fits_feature(args.model, args.feature, cache)
    resolve_masks(args, cache.feature_settings(args.feature)["kind"])
    if resume:
        check_resume_flags(args, ckpt_args(resume), out_dir)
    seed_everything(args.seed)
    segment_frames = segment_frames_for(cache, args.feature, args.segment_seconds)
    if resume:
        mean = np.asarray(resume["normalization"]["mean"], dtype=np.float32)
        std = np.asarray(resume["normalization"]["std"], dtype=np.float32)
    else:
        train_splits = ("train", "valid") if args.merge_train_valid else ("train",)
        try:
            mean, std = compute_normalization(cache, args.feature, splits=train_splits)
        except ValueError as exc:
            raise TrainError(str(exc)) from exc
    train_set = build_train_dataset(args, cache, segment_frames, mean, std)
    if resume:
        # The saved statistics were computed before: the rows were not read since.
        try:
            train_set.check_finite()
        except ValueError as exc:
            raise TrainError(str(exc)) from exc
    evals = build_eval_datasets(args, cache, segment_frames, mean, std)
    check_labels(train_set, evals, ddp=ddp)
    labels = list(cache.labels)

    try:
        model_kwargs = parse_model_settings(args.model_set)
    except ValueError as exc:
        raise TrainError(f"--model-set: {exc}") from exc
    if args.dropout is not None:
        model_kwargs["dropout"] = args.dropout
    try:
        model = build_model(args.model, n_bins=train_set.n_bins, n_classes=len(labels), **model_kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"cannot build {args.model} for feature {args.feature!r} "
                         f"({train_set.n_bins} bins): {exc}") from exc
    check_segment_fits_model(model, args, segment_frames, train_set.frames_per_second)
    if resume:
        model.load_state_dict(resume["state_dict"])
    model.to(device)
    if args.compile:
        model = torch.compile(model)
    net = model
    if ddp.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(args, net.parameters())
    scheduler = make_scheduler(args, optimizer)
    amp = amp_enabled(device, args.amp)
    # float16 needs loss scaling; bfloat16 (CPU, recent GPUs) does not, and the scaler is then a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    start_epoch, best, history, best_weights = 1, {"valid_clip_acc": -1.0, "epoch": 0}, [], None
    if resume:
        best_weights = resume_best
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["torch_rng"])
        start_epoch, best, history = resume["epoch"] + 1, resume["best"], resume["history"]

    if ddp.main:
        start_run_outputs(out_dir, args=args, fresh=not resume,
                          description=run_description(args=args, model=model, cache=cache,
                                                      segment_frames=segment_frames))
        print(f"{args.model} ({count_parameters(model):,} parameters) on {args.feature} segments of "
              f"{segment_frames} frames, "
              f"{train_set.n_clips} training clips x {args.crops_per_clip} crop(s) per epoch, device {device}"
              + (f" x {ddp.world} processes" if ddp.world > 1 else "")
              + (f", resuming after epoch {start_epoch - 1}" if resume else ""), flush=True)
    state_args = dict(args=args, cache=cache, segment_frames=segment_frames, mean=mean, std=std)
    metrics_path = out_dir / "metrics.jsonl"
    for epoch in range(start_epoch, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        if args.schedule == "plateau" and lr < args.min_lr:
            if ddp.main:
                print(f"learning rate {lr:.2e} fell below --min-lr {args.min_lr:.0e}; stopping")
            break
        epoch_start = time.perf_counter()
        train_set.set_epoch(epoch)
        loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, workers=args.workers,
                             device=device, seed=args.seed, epoch=epoch, ddp=ddp)
        try:
            stats = train_one_epoch(net, loader, optimizer, device=device, amp=amp, l1=args.l1, scaler=scaler,
                                    progress=ddp.main and not args.no_progress, desc=f"epoch {epoch}",
                                    mixup=args.mixup, mask=(args.mask_bins, args.mask_frames),
                                    epoch=epoch, ddp=ddp)
            stats = reduce_stats(stats, ddp)
            sync_buffers(model, ddp)
            # Evaluate the plain module: each rank predicts a different share, which DDP's
            # forward (it syncs buffers across ranks) must not see.
            try:
                valid = evaluate(model, evals["valid"], args=args, device=device, amp=amp, ddp=ddp,
                                 n_classes=len(labels), desc="valid")
            except Diverged as exc:
                raise Diverged(f"training diverged: {exc} after epoch {epoch} (lr {lr:.3g})") from None
        except Diverged as exc:
            raise Diverged(f"{exc}; stopped there. {kept_checkpoint(out_dir, epoch - 1)}. Lower --lr "
                           f"(it was {args.lr}) or check the data, and start again with --overwrite") from None
        if args.schedule == "plateau":
            # Valid that was trained on says nothing about generalisation: watch the training loss then.
            scheduler.step(stats["loss"] if args.merge_train_valid else valid["loss"])
        else:
            scheduler.step()
        record = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"],
                  "valid_loss": valid["loss"], "valid_segment_acc": valid["segment_acc"],
                  "valid_clip_acc": valid["clip_acc"], "lr": lr,
                  "segments_per_s": stats["segments"] / max(stats["seconds"], 1e-9),
                  "epoch_seconds": time.perf_counter() - epoch_start}
        history.append(record)
        # Merged with train, valid cannot pick an epoch: the final model is the last one.
        improved = args.merge_train_valid or valid["clip_acc"] > best["valid_clip_acc"]
        if improved:
            best = {"valid_clip_acc": valid["clip_acc"], "epoch": epoch}
            # Every rank keeps the best weights in memory: no rank has to read rank 0's files.
            best_weights = {k: v.detach().cpu().clone()
                            for k, v in unwrap(model).state_dict().items()}
        if ddp.main:
            print(f"epoch {epoch:3d}  train loss {stats['loss']:.4f}  valid loss {valid['loss']:.4f}  "
                  f"valid acc segment {valid['segment_acc']:.4f} clip {valid['clip_acc']:.4f}  "
                  f"lr {lr:.2e}  {record['segments_per_s']:.0f} seg/s" + ("  *best" if improved else ""),
                  flush=True)
            # Rewritten whole from the history, so a resumed run never repeats an epoch's line.
            write_text(metrics_path, "".join(json.dumps(h, allow_nan=False) + "\n" for h in history))
            state = checkpoint_state(model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                     epoch=epoch, best=best, history=history, **state_args)
            if improved:
                save_checkpoint(state, out_dir / "best.pt")
            # last.pt last: a run killed before it resumes from the previous epoch and
            # redoes this one (rewriting metrics.jsonl and best.pt from its history).
            save_checkpoint(state, out_dir / "last.pt")
            plot_curves(history, out_dir / "curves.png")
        if ddp.world > 1:
            dist.barrier()

    if best_weights is None:
        raise TrainError(f"no epoch was trained, so there are no best weights to evaluate "
                         f"(--epochs {args.epochs}, lr {optimizer.param_groups[0]['lr']:.1e} vs --min-lr {args.min_lr})")
    unwrap(model).load_state_dict(best_weights)
    if ddp.main:
        kept = "last epoch (--merge-train-valid)" if args.merge_train_valid else "best epoch"
        print(f"{kept} {best['epoch']} (valid clip accuracy {best['valid_clip_acc']:.4f})")
    return run_final_evaluation(model, evals, args=args, device=device, amp=amp, ddp=ddp, labels=labels,
                                out_dir=out_dir, trained_on_valid=args.merge_train_valid,
                                facts=run_facts(model, cache, history))


def read_resume(out_dir: Path) -> tuple[dict, dict | None]:
    """``last.pt`` and the weights of ``best.pt`` (None if absent) of the run in ``out_dir``."""
    try:
        last = load_checkpoint(out_dir / "last.pt")
        best_path = out_dir / "best.pt"
        return last, load_checkpoint(best_path)["state_dict"] if best_path.exists() else None
    except UserError as exc:
        raise TrainError(f"--resume: {exc}") from exc


def load_resume(out_dir: Path, ddp: Dist) -> tuple[dict, dict | None]:
    """:func:`read_resume` on rank 0, sent to the others: they need not see --out-dir."""
    return on_main(ddp, lambda: read_resume(out_dir))


def sync_buffers(model: torch.nn.Module, ddp: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each forward, but each rank's last training
    batch then updates its own copy: without this, ranks would evaluate their shares
    with different statistics than the checkpoint rank 0 saves.
    """
    if ddp.world == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def reduce_stats(stats: dict, ddp: Dist) -> dict:
    """Sum loss, correct and count over processes so every rank logs the global figures."""
    if ddp.world == 1:
        return stats
    t = torch.tensor([stats["loss"] * stats["segments"], stats["acc"] * stats["segments"],
                      stats["segments"], stats["seconds"]], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = t.cpu()
    n = t[2].item()
    return {"loss": t[0].item() / n, "acc": t[1].item() / n, "segments": int(n),
            "seconds": t[3].item() / ddp.world}


def interrupted_hint(argv=None) -> str:
    """What the line after Ctrl-C or SIGTERM tells the user to do."""
    args, _ = get_args_parser().parse_known_args(argv)
    if args.eval_only:
        return "nothing was written; run the same command again"
    return (f"the last finished epoch is kept in {args.out_dir or DEFAULT_OUT_DIR}/last.pt; continue "
            f"with --resume --out-dir {args.out_dir or DEFAULT_OUT_DIR} (and the same other flags)")


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted=interrupted_hint())
