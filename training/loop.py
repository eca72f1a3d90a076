"""A training run: the epochs, what each saves, and the final evaluation of the kept weights.

:func:`fit` is ``train.py`` without ``--eval-only``. The run folder is claimed
(:mod:`training.folders`), the cache is read under a shared lock; every epoch ends
with metrics.jsonl, best.pt (when it improved) and last.pt written atomically, so a
killed run continues with ``--resume`` exactly where it stopped; a loss that stops
being finite stops the run there.
"""
from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import count_parameters
from training.artifacts import start_run_outputs, write_metrics
from training.augment import mask_batch, mix_batch
from training.checkpoint import checkpoint_state, save_checkpoint
from training.config import TrainConfig
from training.data import cache_read_lock, make_loader
from training.errors import Diverged, TrainError
from training.evaluation import final_evaluation, run_facts, score_dataset
from training.folders import claim_run_folder
from training.optim import l1_penalty
from training.plots import plot_curves
from training.runtime import Dist, any_rank, autocast, barrier, on_main, reduce_stats, sync_buffers, unwrap
from training.setup import Setup, kept_checkpoint, load_resume, prepare


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
