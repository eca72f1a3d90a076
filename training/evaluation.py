"""Scoring a model on every evaluation segment of a cache: after training, and ``--eval-only``.

Each clip's probabilities are the mean of its segments' (:mod:`training.scoring`);
under torchrun each rank predicts a share of the segments and every rank gets all.
:func:`evaluate_checkpoint` is ``train.py --eval-only``: a checkpoint on the cache it
was trained on (or another one holding its feature and labels), results into its run
folder (or one of their own).
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cache.reader import FeatureCache
from models import count_parameters
from training.artifacts import print_results, results_summary, write_results
from training.checkpoint import Member, model_from_checkpoint, read_checkpoints, recorded_config
from training.config import DEFAULT_OUT_DIR, TrainConfig
from training.data import (SegmentDataset, batch_loader, cache_read_lock, eval_datasets, feature_frames_per_second,
                           open_cache, part_settings, stored_feature_settings)
from training.errors import CheckpointError, Diverged, TrainError
from training.folders import claim_eval_folder
from training.plots import plot_confusion
from training.runtime import Dist, amp_enabled, autocast, gather_objects, on_main, unwrap
from training.scoring import clip_scores, split_report


# -- predicting segments ---------------------------------------------------------------------------
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


def gather_segments(model, dataset: SegmentDataset, *, batch_size: int, workers: int, device, amp: bool,
                    ddp: Dist = Dist(), progress: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Predict every segment of ``dataset``; under DDP each rank takes a share and all get all."""
    indices = np.arange(len(dataset))
    loader = batch_loader(dataset, sampler=indices[ddp.rank::ddp.world].tolist(), batch_size=batch_size,
                          workers=workers, pin_memory=torch.device(device).type == "cuda")
    probs, clip_ids = predict_segments(model, loader, device=torch.device(device), amp=amp, progress=progress,
                                       desc=desc)
    if ddp.world == 1:
        return probs, clip_ids
    gathered = gather_objects((indices[ddp.rank::ddp.world], probs, clip_ids), ddp)
    order = np.argsort(np.concatenate([g[0] for g in gathered]))
    return np.concatenate([g[1] for g in gathered])[order], np.concatenate([g[2] for g in gathered])[order]


def score_dataset(model, dataset: SegmentDataset, *, batch_size: int, workers: int, device, amp: bool,
                  ddp: Dist, progress: bool, n_classes: int, desc: str = "eval") -> dict:
    """:func:`training.scoring.clip_scores` of ``model`` on every segment of ``dataset``.

    Raises
    ------
    Diverged
        The model's probabilities are not finite (its weights hold NaN or inf).
    """
    probs, clip_ids = gather_segments(model, dataset, batch_size=batch_size, workers=workers, device=device,
                                      amp=amp, ddp=ddp, progress=progress, desc=desc)
    if not np.isfinite(probs).all():
        raise Diverged(f"the model's predictions on {desc} are not finite (its weights hold NaN or inf)")
    return clip_scores(probs, clip_ids, clip_labels=dataset.clip_labels, n_classes=n_classes)


# -- the final evaluation of a run -----------------------------------------------------------------
def run_facts(model, cache: FeatureCache, history: list[dict]) -> dict:
    """What a report needs beside the accuracies: size, augmentation and training time."""
    return {"parameters": count_parameters(unwrap(model)),
            "augment_versions": cache.settings["augment"]["versions"],
            "cache_fingerprint": cache.fingerprint, "data_fingerprint": cache.data_fingerprint,
            "epochs_trained": len(history),
            "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history)}


def final_evaluation(model, evals: dict[str, SegmentDataset], *, batch_size: int, workers: int, progress: bool,
                     device, amp: bool, ddp: Dist, labels, out_dir: Path, trained_on_valid: bool,
                     facts: dict) -> dict:
    """Score valid and test; rank 0 writes results.json and the confusion matrices, and prints them."""
    reports = {}
    for split, dataset in evals.items():
        scores = score_dataset(model, dataset, batch_size=batch_size, workers=workers, device=device, amp=amp,
                               ddp=ddp, progress=progress, n_classes=len(labels), desc=split)
        reports[split] = split_report(scores, clip_labels=dataset.clip_labels, labels=labels)
    summary = results_summary(reports, labels=labels, trained_on_valid=trained_on_valid, facts=facts)
    if ddp.main:
        write_results(out_dir / "results.json", summary)
        plot_confusion(reports["test"]["confusion_matrix"], labels, out_dir / "confusion_test.png",
                       "test (clip level)")
        plot_confusion(reports["valid"]["confusion_matrix"], labels, out_dir / "confusion_valid.png",
                       "valid (clip level)" + (" - trained on" if trained_on_valid else ""))
        print_results(summary, labels, trained_on_valid)
    return summary


# -- a checkpoint on a cache -----------------------------------------------------------------------
def open_member_cache(member: Member, cache_path) -> FeatureCache:
    """The cache at ``cache_path``, refused (:class:`TrainError`) unless ``member`` can use it.

    It must hold the checkpoint's feature with the settings it was trained on and the
    same labels. A cache other than the one it was trained on gets a warning: its
    valid and test clips may have been in the checkpoint's training data.
    """
    ckpt = member.ckpt
    cache = open_cache(cache_path, member.feature, expect_labels=ckpt["labels"])
    cached = stored_feature_settings(cache, member.feature)
    if cached != ckpt["feature_settings"]:
        raise TrainError(f"{cache.path} computes feature {member.feature!r} with other settings than "
                         f"{member.path} was trained on{differing_parts(member, cached)}; rebuild the cache "
                         f"with the checkpoint's settings")
    if ckpt.get("cache_fingerprint") != cache.fingerprint:
        print(f"warning: {member.path} was trained on another cache than {cache.path}; its valid and test "
              f"clips may have been in its training data", file=sys.stderr)
    return cache


def differing_parts(member: Member, cached: dict) -> str:
    """Which parts of a stacked feature the cache computes otherwise, as words ("" for one feature)."""
    if len(member.parts) == 1:
        return ""
    theirs, ours = (part_settings(member.feature, s) for s in (cached, member.ckpt["feature_settings"]))
    differ = [part for part in member.parts if theirs[part] != ours[part]]
    return f" (parts {', '.join(differ)})" if differ else ""


def member_datasets(member: Member, cache) -> dict[str, SegmentDataset]:
    """The valid/test datasets of ``member`` on ``cache`` (a path, checked with
    :func:`open_member_cache`, or a cache it returned): the segments, hop and
    normalisation its training evaluated with."""
    if not isinstance(cache, FeatureCache):
        cache = open_member_cache(member, cache)
    mean, std = member.normalization()
    hop = member.hop_frames(feature_frames_per_second(cache, member.feature))
    return eval_datasets(cache, feature=member.feature, segment_frames=member.segment_frames, hop_frames=hop,
                         mean=mean, std=std)


def eval_out_dir(config: TrainConfig, member: Member, cache: FeatureCache) -> Path:
    """Where --eval-only writes: --out-dir, else the checkpoint's folder.

    Results on another cache than the checkpoint's never go into the checkpoint's
    folder: they would replace its run's results.json with numbers on other clips.
    """
    own = member.path.parent
    out = Path(config.out_dir) if config.out_dir else own
    if out.resolve() == own.resolve() and member.ckpt.get("cache_fingerprint") != cache.fingerprint:
        given = "--out-dir names the checkpoint's folder" if config.out_dir else "no --out-dir is given"
        raise TrainError(f"--eval-only: {member.path} was trained on another cache than {cache.path}, and "
                         f"{given}: its results would replace {own / 'results.json'} with results on "
                         f"another cache; give --out-dir a folder of their own")
    return out


def evaluate_checkpoint(config: TrainConfig, *, ddp: Dist, device: torch.device) -> dict:
    """``train.py --eval-only``: ``--checkpoint`` on valid and test; returns the results
    (also in OUT/results.json).

    The checkpoint is read without unpickling code, the cache under a shared lock and
    the output folder under its lock; see :func:`eval_out_dir` for where results go.
    ``config.workers`` must be resolved (not None).
    """
    path = Path(config.checkpoint or Path(config.out_dir or DEFAULT_OUT_DIR) / "best.pt")
    ((path, ckpt),) = read_checkpoints([path], error=CheckpointError)
    trained = recorded_config(ckpt)
    cache_path = config.cache or trained.cache
    if not cache_path:
        raise TrainError(f"{path} does not record the cache it was trained on; give --cache")
    with ExitStack() as held:
        held.enter_context(cache_read_lock(cache_path))
        member = Member(path=path, ckpt=ckpt, model=None)
        cache = open_member_cache(member, cache_path)
        out_dir = eval_out_dir(config, member, cache)
        own = out_dir.resolve() == path.parent.resolve()
        on_main(ddp, lambda: held.enter_context(claim_eval_folder(out_dir, own=own, overwrite=config.overwrite)))
        evals = member_datasets(member, cache)
        model = model_from_checkpoint(ckpt, device=device, path=path)
        return final_evaluation(model, evals, batch_size=config.batch_size, workers=config.workers,
                                progress=ddp.main and not config.no_progress, device=device,
                                amp=amp_enabled(device, config.amp), ddp=ddp, labels=list(cache.labels),
                                out_dir=out_dir, trained_on_valid=bool(trained.merge_train_valid),
                                facts=run_facts(model, cache, ckpt.get("history") or []))
