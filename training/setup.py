"""What a training run checks and builds before its first epoch (or the next one, resumed).

Every check that can be made before the work is made here: the model against the
feature, the segment against the model, the labels of the training clips, and on
``--resume`` the run's defining flags and cache. :func:`prepare` returns a
:class:`Setup` that :mod:`training.loop` trains.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cache.reader import FeatureCache
from common.errors import UserError
from common.kinds import WAVEFORM
from models import build_model, model_input_kind
from training.augment import resolve_masks
from training.checkpoint import load_checkpoint, normalization_of, recorded_args, run_description
from training.config import RUN_DEFINING, TrainConfig, flag
from training.data import (SegmentDataset, eval_datasets, feature_frames_per_second, feature_kind, normalization,
                           open_cache, train_dataset)
from training.errors import TrainError
from training.optim import make_optimizer, make_scheduler
from training.runtime import Dist, amp_enabled, make_scaler, on_main, seed_everything
from training.segments import eval_hop_frames, segment_frames_for


# -- checks before the work ------------------------------------------------------------------------
def check_model_fits_feature(model: str, feature: str, cache: FeatureCache) -> None:
    """Refuse a model that cannot take the feature, naming the features that fit."""
    kind = feature_kind(cache, feature)
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
    mask_bins, mask_frames = resolve_masks(feature_kind(cache, config.feature), feature=config.feature,
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
