"""A training run: set-up, the epochs, resume, and the final evaluation of the kept weights.

:func:`fit` is ``train.py`` without ``--eval-only``. The run folder is claimed
(:mod:`training.folders`), the cache is read under a shared lock; every epoch ends
with metrics.jsonl, best.pt (when it improved) and last.pt written atomically, so a
killed run continues with ``--resume`` exactly where it stopped; a loss that stops
being finite stops the run there.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cache.reader import FeatureCache
from common.errors import UserError
from common.kinds import WAVEFORM
from models import build_model, count_parameters, model_input_kind
from training.artifacts import start_run_outputs, write_metrics
from training.augment import mask_batch, mix_batch, resolve_masks
from training.checkpoint import (checkpoint_state, load_checkpoint, normalization_of, recorded_args,
                                 run_description, save_checkpoint)
from training.config import RUN_DEFINING, TrainConfig, flag
from training.data import (SegmentDataset, cache_read_lock, eval_datasets, feature_frames_per_second, make_loader,
                           normalization, open_cache, train_dataset)
from training.errors import Diverged, TrainError
from training.evaluation import final_evaluation, run_facts, score_dataset
from training.folders import claim_run_folder
from training.optim import l1_penalty, make_optimizer, make_scheduler
from training.plots import plot_curves
from training.runtime import (Dist, amp_enabled, any_rank, autocast, barrier, make_scaler, on_main, reduce_stats,
                              seed_everything, sync_buffers, unwrap)
from training.segments import eval_hop_frames, segment_frames_for


# -- one epoch -------------------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer, *, device, amp: bool, l1: float, scaler,
                    progress: bool, desc: str, mixup: float = 0.0,
                    mask: tuple[int, int] = (0, 0), epoch: int = 0, ddp: Dist = Dist()) -> dict:
    """One pass over the training segments; returns mean loss, accuracy and throughput.

    With ``mixup`` > 0 segments are mixed (:func:`training.augment.mix_batch`) and the
    accuracy counts the label with the larger share.

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


# -- checks before the work ------------------------------------------------------------------------
def check_model_fits_feature(model: str, feature: str, cache: FeatureCache) -> None:
    """Refuse a model that cannot take the feature, naming the features that fit."""
    kind = cache.feature_settings(feature)["kind"]
    wanted = model_input_kind(model)
    if kind != wanted:
        fitting = [name for name in cache.features if cache.feature_settings(name)["kind"] == wanted]
        hint = (f"features in {cache.path} that fit: {', '.join(fitting)}" if fitting else
                f"none of the cached features ({', '.join(cache.features)}) fits; rebuild the cache "
                f"with --features {'wave' if wanted == WAVEFORM else 'mel'}")
        raise TrainError(f"model {model!r} takes {wanted} input, but feature {feature!r} is a {kind}; {hint}")


def check_segment_fits_model(model, *, config: TrainConfig, segment_frames: int, frames_per_second: float) -> None:
    """Refuse, before training, a segment shorter than the model's pooling can take."""
    if segment_frames < model.min_frames:
        need = model.min_frames / frames_per_second
        raise TrainError(f"--segment-seconds {config.segment_seconds} gives {segment_frames} frames, but "
                         f"{config.model} needs at least {model.min_frames} ({need:.2f} s); use "
                         f"--segment-seconds {math.ceil(need * 100) / 100} or more, or a shallower model")


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


def check_resume_flags(config: TrainConfig, saved: dict, out_dir: Path) -> None:
    """Refuse to resume with other values of the flags that define the run (``RUN_DEFINING``).

    ``saved`` is the config the run recorded (a checkpoint's ``"args"``); flags it
    does not record (a run older than them) are not compared.
    """
    given = config.to_dict()
    differ = [name for name in RUN_DEFINING if name in saved and saved[name] != given[name]]
    if differ:
        trained = flags_text({name: saved[name] for name in differ})
        asked = flags_text({name: given[name] for name in differ})
        raise TrainError(f"--resume: the run in {out_dir} was trained with {trained}, not {asked}; "
                         f"resume with those, or start a new --out-dir")


def kept_checkpoint(out_dir: Path, epochs_done: int) -> str:
    """What the run folder keeps after a failure in epoch ``epochs_done + 1``."""
    if epochs_done >= 1 and (out_dir / "last.pt").is_file():
        return f"{out_dir / 'last.pt'} keeps epoch {epochs_done}, the last good one (best.pt the best)"
    return "no epoch had finished, so no checkpoint was written"


# -- resume ----------------------------------------------------------------------------------------
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


# -- set-up ----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What a run trains and evaluates with, ready for its first (or next) epoch."""
    config: TrainConfig          # with the run's paths, workers and masks filled in
    cache: FeatureCache
    segment_frames: int
    mean: np.ndarray
    std: np.ndarray
    train_set: SegmentDataset
    evals: dict[str, SegmentDataset]
    model: torch.nn.Module       # what evaluates: the module, compiled with --compile
    net: torch.nn.Module         # what trains: ``model``, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    amp: bool
    start_epoch: int = 1
    best: dict = field(default_factory=lambda: {"valid_clip_acc": -1.0, "epoch": 0})
    history: list = field(default_factory=list)
    best_weights: dict | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.cache.labels)

    def description(self) -> dict:
        return run_description(config=self.config, model=self.model, cache=self.cache,
                               segment_frames=self.segment_frames)


def build_run_model(config: TrainConfig, train_set: SegmentDataset, n_classes: int) -> torch.nn.Module:
    """The model of ``--model``, ``--model-set`` and ``--dropout`` for the training feature."""
    kwargs = config.model_settings()
    try:
        return build_model(config.model, n_bins=train_set.n_bins, n_classes=n_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainError(f"cannot build {config.model} for feature {config.feature!r} "
                         f"({train_set.n_bins} bins): {exc}") from exc


def prepare_data(config: TrainConfig, cache: FeatureCache, resume: dict | None, *, ddp: Dist):
    """``(segment_frames, mean, std, train_set, evals)`` of a run; checks its labels."""
    fps = feature_frames_per_second(cache, config.feature)
    segment_frames = segment_frames_for(fps, config.segment_seconds)
    if resume:
        mean, std = normalization_of(resume)
    else:
        mean, std = normalization(cache, config.feature, splits=config.train_splits)
    train_set = train_dataset(cache, feature=config.feature, splits=config.train_splits,
                              segment_frames=segment_frames, crops_per_clip=config.crops_per_clip,
                              seed=config.seed, mean=mean, std=std)
    if resume:
        # The saved statistics were computed before: the rows were not read since.
        try:
            train_set.check_finite()
        except ValueError as exc:
            raise TrainError(str(exc)) from exc
    evals = eval_datasets(cache, feature=config.feature, segment_frames=segment_frames,
                          hop_frames=eval_hop_frames(config.eval_hop_seconds, fps), mean=mean, std=std)
    check_labels(train_set, evals, ddp=ddp)
    return segment_frames, mean, std, train_set, evals


def prepare(config: TrainConfig, *, out_dir: Path, resume: dict | None, resume_best: dict | None,
            ddp: Dist, device: torch.device) -> Setup:
    """Open and check the cache, the data and the model, from scratch or from ``resume`` (last.pt)."""
    cache = open_cache(config.cache, config.feature, expect_labels=resume["labels"] if resume else None)
    if resume and resume["cache_fingerprint"] != cache.fingerprint:
        raise TrainError(f"--resume: {out_dir / 'last.pt'} was trained on another cache than {cache.path} "
                         f"(fingerprints differ); resume with the same cache, or start a new --out-dir")
    check_model_fits_feature(config.model, config.feature, cache)
    mask_bins, mask_frames = resolve_masks(cache.feature_settings(config.feature)["kind"], feature=config.feature,
                                           mask_bins=config.mask_bins, mask_frames=config.mask_frames)
    config = dataclasses.replace(config, mask_bins=mask_bins, mask_frames=mask_frames)
    if resume:
        check_resume_flags(config, recorded_args(resume), out_dir)
    seed_everything(config.seed)
    segment_frames, mean, std, train_set, evals = prepare_data(config, cache, resume, ddp=ddp)
    model = build_run_model(config, train_set, len(cache.labels))
    check_segment_fits_model(model, config=config, segment_frames=segment_frames,
                             frames_per_second=train_set.frames_per_second)
    if resume:
        model.load_state_dict(resume["state_dict"])
    model.to(device)
    if config.compile:
        model = torch.compile(model)
    net = model
    if ddp.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(net.parameters(), optimizer=config.optimizer, lr=config.lr,
                               weight_decay=config.weight_decay, momentum=config.momentum, nesterov=config.nesterov)
    scheduler = make_scheduler(optimizer, schedule=config.schedule, epochs=config.epochs,
                               warmup_epochs=config.warmup_epochs, lr_factor=config.lr_factor,
                               lr_patience=config.lr_patience)
    amp = amp_enabled(device, config.amp)
    setup = Setup(config=config, cache=cache, segment_frames=segment_frames, mean=mean, std=std,
                  train_set=train_set, evals=evals, model=model, net=net, optimizer=optimizer,
                  scheduler=scheduler, scaler=make_scaler(device, amp), amp=amp)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        setup.scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["torch_rng"])
        setup.start_epoch, setup.best, setup.history = resume["epoch"] + 1, resume["best"], resume["history"]
        setup.best_weights = resume_best
    return setup


# -- the run ---------------------------------------------------------------------------------------
def fit(config: TrainConfig, *, ddp: Dist, device: torch.device) -> dict:
    """Train as ``config`` says (``workers`` resolved); returns the final results (also in results.json)."""
    config = config.with_paths()
    out_dir = Path(config.out_dir)
    with ExitStack() as held:
        on_main(ddp, lambda: held.enter_context(
            claim_run_folder(out_dir, resume=config.resume, overwrite=config.overwrite)))
        resume, resume_best = load_resume(out_dir, ddp) if config.resume else (None, None)
        held.enter_context(cache_read_lock(config.cache))
        setup = prepare(config, out_dir=out_dir, resume=resume, resume_best=resume_best, ddp=ddp, device=device)
        if ddp.main:
            start_run_outputs(out_dir, args=setup.config.to_dict(), fresh=not resume,
                              description=setup.description())
            announce(setup, device=device, ddp=ddp, resumed=bool(resume))
        run_epochs(setup, out_dir=out_dir, ddp=ddp, device=device)
        return finish(setup, out_dir=out_dir, ddp=ddp, device=device)


def announce(setup: Setup, *, device, ddp: Dist, resumed: bool) -> None:
    config = setup.config
    print(f"{config.model} ({count_parameters(setup.model):,} parameters) on {config.feature} segments of "
          f"{setup.segment_frames} frames, "
          f"{setup.train_set.n_clips} training clips x {config.crops_per_clip} crop(s) per epoch, device {device}"
          + (f" x {ddp.world} processes" if ddp.world > 1 else "")
          + (f", resuming after epoch {setup.start_epoch - 1}" if resumed else ""), flush=True)


def run_epochs(setup: Setup, *, out_dir: Path, ddp: Dist, device: torch.device) -> None:
    """Train from ``setup.start_epoch`` to ``--epochs`` (or until the plateau lr falls below
    ``--min-lr``), saving every epoch; ``setup`` holds the history and the best weights."""
    config = setup.config
    for epoch in range(setup.start_epoch, config.epochs + 1):
        lr = setup.optimizer.param_groups[0]["lr"]
        if config.schedule == "plateau" and lr < config.min_lr:
            if ddp.main:
                print(f"learning rate {lr:.2e} fell below --min-lr {config.min_lr:.0e}; stopping")
            break
        epoch_start = time.perf_counter()
        stats, valid = train_and_validate(setup, epoch=epoch, lr=lr, out_dir=out_dir, ddp=ddp, device=device)
        if config.schedule == "plateau":
            # Valid that was trained on says nothing about generalisation: watch the training loss then.
            setup.scheduler.step(stats["loss"] if config.merge_train_valid else valid["loss"])
        else:
            setup.scheduler.step()
        record = {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"],
                  "valid_loss": valid["loss"], "valid_segment_acc": valid["segment_acc"],
                  "valid_clip_acc": valid["clip_acc"], "lr": lr,
                  "segments_per_s": stats["segments"] / max(stats["seconds"], 1e-9),
                  "epoch_seconds": time.perf_counter() - epoch_start}
        setup.history.append(record)
        # Merged with train, valid cannot pick an epoch: the final model is the last one.
        improved = config.merge_train_valid or valid["clip_acc"] > setup.best["valid_clip_acc"]
        if improved:
            setup.best = {"valid_clip_acc": valid["clip_acc"], "epoch": epoch}
            # Every rank keeps the best weights in memory: no rank has to read rank 0's files.
            setup.best_weights = {k: v.detach().cpu().clone()
                                  for k, v in unwrap(setup.model).state_dict().items()}
        if ddp.main:
            print(f"epoch {epoch:3d}  train loss {stats['loss']:.4f}  valid loss {valid['loss']:.4f}  "
                  f"valid acc segment {valid['segment_acc']:.4f} clip {valid['clip_acc']:.4f}  "
                  f"lr {lr:.2e}  {record['segments_per_s']:.0f} seg/s" + ("  *best" if improved else ""),
                  flush=True)
            save_epoch(setup, epoch=epoch, improved=improved, out_dir=out_dir)
        barrier(ddp)


def train_and_validate(setup: Setup, *, epoch: int, lr: float, out_dir: Path, ddp: Dist,
                       device: torch.device) -> tuple[dict, dict]:
    """One epoch's training statistics and valid scores; :class:`Diverged` says what is kept."""
    config = setup.config
    setup.train_set.set_epoch(epoch)
    loader = make_loader(setup.train_set, batch_size=config.batch_size, shuffle=True, workers=config.workers,
                         device=device, seed=config.seed, epoch=epoch, ddp=ddp)
    try:
        stats = train_one_epoch(setup.net, loader, setup.optimizer, device=device, amp=setup.amp, l1=config.l1,
                                scaler=setup.scaler, progress=ddp.main and not config.no_progress,
                                desc=f"epoch {epoch}", mixup=config.mixup,
                                mask=(config.mask_bins, config.mask_frames), epoch=epoch, ddp=ddp)
        stats = reduce_stats(stats, ddp)
        sync_buffers(setup.model, ddp)
        # Evaluate the plain module: each rank predicts a different share, which DDP's
        # forward (it syncs buffers across ranks) must not see.
        try:
            valid = score_dataset(setup.model, setup.evals["valid"], batch_size=config.batch_size,
                                  workers=config.workers, device=device, amp=setup.amp, ddp=ddp,
                                  progress=ddp.main and not config.no_progress, n_classes=len(setup.labels),
                                  desc="valid")
        except Diverged as exc:
            raise Diverged(f"training diverged: {exc} after epoch {epoch} (lr {lr:.3g})") from None
    except Diverged as exc:
        raise Diverged(f"{exc}; stopped there. {kept_checkpoint(out_dir, epoch - 1)}. Lower --lr "
                       f"(it was {config.lr}) or check the data, and start again with --overwrite") from None
    return stats, valid


def save_epoch(setup: Setup, *, epoch: int, improved: bool, out_dir: Path) -> None:
    """metrics.jsonl, best.pt (if ``improved``), last.pt and the curves after ``epoch`` (rank 0)."""
    write_metrics(out_dir / "metrics.jsonl", setup.history)
    state = checkpoint_state(description=setup.description(), config=setup.config, model=setup.net,
                             mean=setup.mean, std=setup.std, optimizer=setup.optimizer, scheduler=setup.scheduler,
                             scaler=setup.scaler, epoch=epoch, best=setup.best, history=setup.history)
    if improved:
        save_checkpoint(state, out_dir / "best.pt")
    # last.pt last: a run killed before it resumes from the previous epoch and
    # redoes this one (rewriting metrics.jsonl and best.pt from its history).
    save_checkpoint(state, out_dir / "last.pt")
    plot_curves(setup.history, out_dir / "curves.png")


def finish(setup: Setup, *, out_dir: Path, ddp: Dist, device: torch.device) -> dict:
    """Load the kept weights (best epoch, or last with --merge-train-valid) and evaluate them."""
    config = setup.config
    if setup.best_weights is None:
        raise TrainError(f"no epoch was trained, so there are no best weights to evaluate "
                         f"(--epochs {config.epochs}, lr {setup.optimizer.param_groups[0]['lr']:.1e} vs "
                         f"--min-lr {config.min_lr})")
    unwrap(setup.model).load_state_dict(setup.best_weights)
    if ddp.main:
        kept = "last epoch (--merge-train-valid)" if config.merge_train_valid else "best epoch"
        print(f"{kept} {setup.best['epoch']} (valid clip accuracy {setup.best['valid_clip_acc']:.4f})")
    return final_evaluation(setup.model, setup.evals, batch_size=config.batch_size, workers=config.workers,
                            progress=ddp.main and not config.no_progress, device=device, amp=setup.amp, ddp=ddp,
                            labels=setup.labels, out_dir=out_dir, trained_on_valid=config.merge_train_valid,
                            facts=run_facts(setup.model, setup.cache, setup.history))
