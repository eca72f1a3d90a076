"""Classify audio files with a trained checkpoint, or an ensemble of them.

    python predict.py --checkpoint runs/demo/best.pt song.mp3 more_songs/
    python predict.py --checkpoint a/best.pt --checkpoint b/best.pt --json --segments clips/

Each file (wav, au, flac, ogg, mp3; any sample rate, mono or stereo, any length of at
least one segment) is decoded and turned into the checkpoint's feature by the cache
build's own code (``pipeline.clip.process_clip``), normalised with the checkpoint's
statistics and cut into the evaluation segments training used. The segment
probabilities are averaged per file, then over the checkpoints of an ensemble.
Folders are walked for audio files. A file that cannot be classified gets an error
line and the others are still classified; the exit status is 1 if any failed.
Checkpoints are read without unpickling anything but tensors and plain values, so a
``.pt`` file from elsewhere cannot run code here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.clip import ClipTask, process_clip
from cache.dataset import eval_hop_frames, segment_starts
from cache.format import feature_arguments
from common.cli import run
from common.errors import UserError
from models.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from pipeline.audio import AudioLoadError
from pipeline.features import Feature, build_feature

AUDIO_SUFFIXES = (".wav", ".au", ".flac", ".ogg", ".mp3")
DEVICES = ("auto", "cpu", "cuda", "mps")


class PredictError(UserError):
    """Unusable checkpoints or arguments: nothing can be classified."""


class ClipError(UserError):
    """One file cannot be classified (too short, ...); the others still are."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help=f"audio files, or folders searched for {', '.join(AUDIO_SUFFIXES)} files")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint written by train.py (RUN_DIR/best.pt); give it several times "
                        "for an ensemble, whose probabilities are averaged")
    p.add_argument("--top", type=int, default=3, help=f"genres shown per file {fmt}")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--segments", action="store_true", help="also show the prediction of every segment")
    p.add_argument("--batch-size", type=int, default=32, help=f"segments per forward pass {fmt}")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help=f"where the models run; auto picks cuda, then mps, then cpu {fmt}")
    return p


# -- checkpoints ---------------------------------------------------------------------------------
@dataclass
class Member:
    """One checkpoint, ready to classify: its model and how to make its input.

    ``feature`` maps a mono waveform at ``sample_rate`` to ``(n_bins, frames)`` (or
    ``(samples,)``); ``mean``/``std`` (``(n_bins, 1)`` or ``(1,)``) normalise it, and
    segments of ``segment_frames`` start every ``hop_frames``.
    """
    path: Path
    model: torch.nn.Module
    feature: Feature
    sample_rate: int
    labels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    segment_frames: int
    hop_frames: int

    @property
    def frames_per_second(self) -> float:
        return float(self.feature.frames_per_second)

    @property
    def segment_seconds(self) -> float:
        return self.segment_frames / self.frames_per_second


def feature_from_checkpoint(ckpt: dict, path) -> Feature:
    """Rebuild the feature a checkpoint was trained on from its stored settings."""
    stored = ckpt["feature_settings"]
    settings = feature_arguments(stored)
    try:
        feature = build_feature(ckpt["feature"], **settings)
    except (TypeError, ValueError) as exc:
        raise PredictError(f"checkpoint {path}: cannot rebuild its feature {ckpt['feature']!r} "
                           f"from the stored settings {settings}: {exc}") from exc
    # The stored description must match what the rebuilt feature computes.
    fps = stored.get("frames_per_second", feature.frames_per_second)
    if stored.get("kind", feature.kind) != feature.kind or not math.isclose(fps, feature.frames_per_second):
        raise PredictError(f"checkpoint {path}: feature {ckpt['feature']!r} was cached as a "
                           f"{stored.get('kind')} at {fps} frames/s, but this code computes a "
                           f"{feature.kind} at {feature.frames_per_second} frames/s; use the code "
                           f"version the checkpoint was trained with")
    return feature


def checkpoint_hop_frames(ckpt: dict, frames_per_second: float) -> int:
    """The hop between segments that training evaluated with."""
    saved = ckpt.get("args")
    hop = eval_hop_frames((saved if isinstance(saved, dict) else {}).get("eval_hop_seconds"), frames_per_second)
    return ckpt["segment_frames"] if hop is None else hop


def load_member(path, *, device="cpu") -> Member:
    """Read a checkpoint and rebuild its model, feature and normalisation."""
    path = Path(path)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise PredictError(str(exc)) from exc
    feature = feature_from_checkpoint(ckpt, path)
    sample_rate = ckpt.get("sample_rate", feature.sr)
    if sample_rate != feature.sr:
        raise PredictError(f"checkpoint {path}: audio was decoded at {sample_rate!r} Hz but its "
                           f"feature expects {feature.sr} Hz (corrupt checkpoint); retrain it")
    norm = ckpt["normalization"]
    try:
        model = model_from_checkpoint(ckpt, device=device, path=path)
    except CheckpointError as exc:
        raise PredictError(str(exc)) from exc
    return Member(path=path, model=model,
                  feature=feature, sample_rate=sample_rate,
                  labels=tuple(ckpt["labels"]),
                  mean=np.asarray(norm["mean"], dtype=np.float32),
                  std=np.asarray(norm["std"], dtype=np.float32),
                  segment_frames=int(ckpt["segment_frames"]),
                  hop_frames=checkpoint_hop_frames(ckpt, feature.frames_per_second))


def load_ensemble(paths, *, device="cpu") -> list[Member]:
    """Load every checkpoint; refuse an ensemble whose members predict different labels.

    Members may differ in model, feature and segment length: each computes its own input.

    >>> members = load_ensemble(["runs/a/best.pt", "runs/b/best.pt"])  # doctest: +SKIP
    """
    if not paths:
        raise PredictError("no checkpoint given; pass --checkpoint RUN_DIR/best.pt")
    members = [load_member(path, device=device) for path in paths]
    first = members[0]
    for other in members[1:]:
        if other.labels != first.labels:
            raise PredictError(f"checkpoints {first.path} and {other.path} predict different labels "
                               f"({list(first.labels)} vs {list(other.labels)}); an ensemble averages "
                               f"probabilities, so its members need the same labels in the same order")
    return members


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device; ``auto`` picks cuda, then mps, then cpu."""
    if name == "cpu":
        return torch.device("cpu")
    import train  # train.py's rules, so that both scripts pick the same device (slow to import)

    try:
        return train.resolve_device(name, train.Dist())
    except train.TrainError as exc:
        raise PredictError(str(exc)) from exc


# -- one file -----------------------------------------------------------------------------------
def compute_features(path, members: list[Member]) -> tuple[list[np.ndarray], float, tuple[str, ...]]:
    """Each member's feature of the whole file, computed by the cache build's code.

    The file is decoded once per sample rate; ``process_clip`` is what the cache-build
    workers run, so prediction sees exactly what training saw (keep the whole file:
    ``duration=None``).

    Returns
    -------
    features : list of np.ndarray
        One per member: ``(n_bins, frames)``, or ``(samples,)`` for waveform features.
    seconds : float
        Length of the decoded audio.
    flags : tuple of str
        ``load_audio``'s flags (e.g. ``"silent"``).
    """
    features: list[np.ndarray | None] = [None] * len(members)
    seconds, flags = 0.0, ()
    for sr in sorted({m.sample_rate for m in members}):
        wanted = {str(i): m.feature for i, m in enumerate(members) if m.sample_rate == sr}
        wanted["samples"] = build_feature("wave", sr=sr)  # the waveform itself: the exact length
        task = ClipTask(split="predict", clip=0, listed=str(path), path=str(path), versions=(0,), seed=0)
        try:
            result = process_clip(task, features=wanted, augmenter=None, sr=sr, duration=None)
        except ValueError as exc:  # a feature refusing the clip (e.g. too few frames for deltas)
            raise ClipError(f"{path}: {exc}") from exc
        if result.error is not None:
            raise AudioLoadError(result.error)
        row = result.rows[0]
        seconds, flags = row.features.pop("samples").size / sr, row.flags
        for key, value in row.features.items():
            features[int(key)] = value
    return features, seconds, flags


def segment_probabilities(member: Member, feature: np.ndarray, *, batch_size: int = 32,
                          device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of every evaluation segment of one file's feature.

    Parameters
    ----------
    feature : np.ndarray
        ``(n_bins, frames)`` or ``(samples,)``, not yet normalised.

    Returns
    -------
    starts : np.ndarray
        ``(n_segments,)`` segment starts in frames.
    probs : np.ndarray
        ``(n_segments, n_classes)`` softmax probabilities.
    """
    starts = segment_starts(feature.shape[-1], member.segment_frames, member.hop_frames)
    x = (feature - member.mean) / member.std
    # (n_segments, n_bins, segment_frames), or (n_segments, segment_samples)
    windows = np.lib.stride_tricks.sliding_window_view(x, member.segment_frames, axis=-1)
    segments = np.moveaxis(windows[..., starts, :], -2, 0)
    probs = []
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(segments[i:i + batch_size])).to(device)
            probs.append(torch.softmax(member.model(batch).float(), dim=1).cpu().numpy())
    return starts, np.concatenate(probs)


def classify_file(path, members: list[Member], *, batch_size: int = 32, device="cpu") -> dict:
    """Classify one file with every member and average.

    Returns
    -------
    dict
        ``probs`` ``(n_classes,)`` (mean over members of the mean over segments),
        ``seconds`` (length of the audio), ``flags``, and ``segments``: a list of
        ``(member indices, start seconds (n,), end seconds (n,), probs (n, n_classes))``,
        one entry for all members when they cut the same segments (their probabilities
        averaged), else one entry per member.

    Raises
    ------
    AudioLoadError, ClipError
        The file cannot be decoded, or is too short for some member.

    Examples
    --------
    >>> members = load_ensemble(["runs/demo/best.pt"])                # doctest: +SKIP
    >>> prediction = classify_file("song.mp3", members)                # doctest: +SKIP
    >>> members[0].labels[prediction["probs"].argmax()]                # doctest: +SKIP
    'rock'
    """
    features, seconds, flags = compute_features(path, members)
    per_member = []
    for member, feature in zip(members, features):
        if feature.shape[-1] < member.segment_frames:
            raise ClipError(f"{path}: {seconds:.2f} s of audio is shorter than one segment "
                            f"({member.segment_seconds:.2f} s) of {member.path}; give a longer file")
        starts, probs = segment_probabilities(member, feature, batch_size=batch_size, device=device)
        fps = member.frames_per_second
        per_member.append((starts / fps, (starts + member.segment_frames) / fps, probs))
    first = per_member[0]
    same_grid = all(len(m[0]) == len(first[0]) and np.allclose(m[0], first[0]) and np.allclose(m[1], first[1])
                    for m in per_member)
    if same_grid:
        segments = [(list(range(len(members))), first[0], first[1],
                     np.mean([m[2] for m in per_member], axis=0))]
    else:
        segments = [([i], *m) for i, m in enumerate(per_member)]
    return {"probs": np.mean([m[2].mean(axis=0) for m in per_member], axis=0), "seconds": seconds,
            "flags": flags, "segments": segments}


# -- inputs and outputs -------------------------------------------------------------------------
def find_audio_files(inputs) -> list[tuple[Path, str | None]]:
    """``(path, error)`` for every file to classify, in order; folders are walked (sorted).

    A file named explicitly is always tried, whatever its suffix; in folders only
    :data:`AUDIO_SUFFIXES` count. A folder with none gives an error entry.

    >>> find_audio_files(["music/"])  # doctest: +SKIP
    [(PosixPath('music/a.mp3'), None), (PosixPath('music/b/c.wav'), None)]
    """
    found = []
    for item in map(Path, inputs):
        if not item.is_dir():
            found.append((item, None))
            continue
        files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            found.append((item, f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in folder {item}"))
        found.extend((p, None) for p in files)
    return found


def ranked(probs: np.ndarray, labels, top: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:top]
    return [{"label": labels[i], "probability": float(probs[i])} for i in order]


def file_record(path, prediction: dict, members: list[Member], *, top: int, segments: bool) -> dict:
    """The JSON-ready description of one classified file."""
    labels = members[0].labels
    record = {"path": str(path), "ok": True, "seconds": round(float(prediction["seconds"]), 3),
              "flags": list(prediction["flags"]), "top": ranked(prediction["probs"], labels, top),
              "probabilities": {label: float(p) for label, p in zip(labels, prediction["probs"])}}
    if segments:
        record["segments"] = []
        for member_ids, starts, ends, probs in prediction["segments"]:
            for start, end, p in zip(starts, ends, probs):
                entry = {"start": round(float(start), 3), "end": round(float(end), 3),
                         "top": ranked(p, labels, 1)[0]["label"],
                         "probabilities": {label: float(v) for label, v in zip(labels, p)}}
                if len(member_ids) < len(members):
                    entry["checkpoint"] = str(members[member_ids[0]].path)
                record["segments"].append(entry)
    return record


def format_record(record: dict) -> str:
    """Human-readable lines for one file's record."""
    if not record["ok"]:
        return f"{record['path']}: error: {record['error']}"
    note = f", {', '.join(record['flags'])}" if record["flags"] else ""
    lines = [f"{record['path']}  ({record['seconds']:.1f} s{note})"]
    width = max(len(t["label"]) for t in record["top"])
    lines += [f"  {t['label']:<{width}}  {t['probability']:.3f}" for t in record["top"]]
    current = object()  # no segment belongs to this: the first one opens a heading
    for seg in record.get("segments", []):
        owner = seg.get("checkpoint")  # set only when the members cut different segments
        if owner != current:
            current = owner
            lines.append("  segments" + (f" of {owner}" if owner else "") + ":")
        best = seg["top"]
        lines.append(f"    {seg['start']:7.2f}-{seg['end']:7.2f} s  {best:<{width}}  "
                     f"{seg['probabilities'][best]:.3f}")
    return "\n".join(lines)


def main(args) -> dict:
    """Classify ``args.inputs``; print the results and return them (the ``--json`` document).

    Returns
    -------
    dict
        ``{"checkpoints": [str], "labels": [str], "files": [record], "failed": int}``;
        a record is ``{"path", "ok": True, "seconds", "flags", "top": [{"label",
        "probability"}], "probabilities": {label: p}}`` (plus ``"segments"`` with
        ``--segments``), or ``{"path", "ok": False, "error"}``.
    """
    if args.top < 1:
        raise PredictError(f"--top {args.top}: must be at least 1")
    if args.batch_size < 1:
        raise PredictError(f"--batch-size {args.batch_size}: must be at least 1")
    device = resolve_device(args.device)
    members = load_ensemble(args.checkpoint, device=device)
    labels = members[0].labels
    records = []
    for path, error in find_audio_files(args.inputs):
        if error is None:
            try:
                prediction = classify_file(path, members, batch_size=args.batch_size, device=device)
                record = file_record(path, prediction, members, top=min(args.top, len(labels)),
                                     segments=args.segments)
            except (AudioLoadError, ClipError) as exc:
                error = str(exc)
        if error is not None:
            record = {"path": str(path), "ok": False, "error": error}
            print(f"error: {error}", file=sys.stderr, flush=True)
        elif not args.json:
            print(format_record(record), flush=True)
        records.append(record)
    output = {"checkpoints": [str(m.path) for m in members], "labels": list(labels), "files": records,
              "failed": sum(not r["ok"] for r in records)}
    if args.json:
        print(json.dumps(output, indent=2))
    return output


def exit_status(output: dict) -> int:
    """1 when some file could not be classified, else 0."""
    return 1 if output["failed"] else 0


if __name__ == "__main__":
    sys.exit(exit_status(run(main, get_args_parser(), interrupted="run the same command again")))
