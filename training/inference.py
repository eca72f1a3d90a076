"""Audio files to genre predictions, with the checkpoints of an ensemble (``predict.py``).

Each file is decoded once (per sample rate) and turned into every member's feature (every part of a
stacked one, concatenated along the bins) by the cache build's own code
(:func:`pipeline.clip.process_clip`), then cut into the evaluation segments
training used, by the same functions the evaluation datasets use
(:func:`training.segments.segment_starts`, :func:`training.segments.cut_segments`).
The segment probabilities are averaged per file, then over the members.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cache.format import feature_arguments, feature_base
from pipeline.audio import AudioLoadError
from pipeline.clip import ClipTask, process_clip
from pipeline.features import Feature, build_feature
from training.checkpoint import Member
from training.data import part_settings
from training.errors import ClipError, PredictError
from training.segments import cut_segments, inverse_std, segment_starts

AUDIO_SUFFIXES = (".wav", ".au", ".flac", ".ogg", ".mp3")

__all__ = ["AUDIO_SUFFIXES", "rebuild_feature", "member_parts", "member_features", "stack_arrays",
           "compute_features", "segment_probabilities",
           "classify_file", "find_audio_files", "file_record", "format_record", "AudioLoadError"]


# -- each member's input ---------------------------------------------------------------------------
def rebuild_feature(member: Member, name: str, stored: dict) -> Feature:
    """The feature ``name`` of ``member``'s input, rebuilt from its ``stored`` settings.

    Raises
    ------
    PredictError
        The settings do not rebuild a feature, the rebuilt one computes another kind or
        frame rate than was cached, or the checkpoint's sample rate is not the feature's.
    """
    path = member.path
    settings = feature_arguments(stored)
    try:
        feature = build_feature(feature_base(name, stored), **settings)
    except (TypeError, ValueError) as exc:
        raise PredictError(f"checkpoint {path}: cannot rebuild its feature {name!r} "
                           f"from the stored settings {settings}: {exc}") from exc
    # The stored description must match what the rebuilt feature computes.
    fps = stored.get("frames_per_second", feature.frames_per_second)
    if stored.get("kind", feature.kind) != feature.kind or not math.isclose(fps, feature.frames_per_second):
        raise PredictError(f"checkpoint {path}: feature {name!r} was cached as a "
                           f"{stored.get('kind')} at {fps} frames/s, but this code computes a "
                           f"{feature.kind} at {feature.frames_per_second} frames/s; use the code "
                           f"version the checkpoint was trained with")
    sample_rate = member.ckpt.get("sample_rate", feature.sr)
    if sample_rate != feature.sr:
        raise PredictError(f"checkpoint {path}: audio was decoded at {sample_rate!r} Hz but its "
                           f"feature expects {feature.sr} Hz (corrupt checkpoint); retrain it")
    return feature


def member_parts(member: Member) -> tuple[Feature, ...]:
    """The features ``member``'s input is made of, rebuilt (one, or the stacked parts in order).

    Raises
    ------
    PredictError
        A part cannot be rebuilt (see :func:`rebuild_feature`), or stacked parts would
        compute other frame rates.
    """
    stored = part_settings(member.feature, member.ckpt["feature_settings"])
    parts = tuple(rebuild_feature(member, name, settings) for name, settings in stored.items())
    if len({(f.sr, f.frames_per_second) for f in parts}) > 1:
        raise PredictError(f"checkpoint {member.path}: the parts of feature {member.feature!r} compute other "
                           f"frame rates ({', '.join(f'{f.frames_per_second:.2f}' for f in parts)} frames/s), "
                           f"so they cannot be stacked; the checkpoint was damaged or edited")
    return parts


def member_features(members: list[Member]) -> list[tuple[Feature, ...]]:
    """:func:`member_parts` of every member, in order."""
    return [member_parts(member) for member in members]


def stack_arrays(path, member: Member, arrays: list[np.ndarray]) -> np.ndarray:
    """One member's input from its parts' arrays: the array itself, or the parts stacked along bins.

    Raises
    ------
    ClipError
        The parts came out with different frame counts for this file.
    """
    if len(arrays) == 1:
        return arrays[0]
    frames = [a.shape[-1] for a in arrays]
    if len(set(frames)) > 1:
        raise ClipError(f"{path}: the parts of feature {member.feature!r} of {member.path} have "
                        f"{', '.join(map(str, frames))} frames, which cannot be stacked")
    return np.concatenate(arrays, axis=0)


# -- one file --------------------------------------------------------------------------------------
def compute_features(path, features: list[Feature]) -> tuple[list[np.ndarray], float, tuple[str, ...]]:
    """Each feature of the whole file, computed by the cache build's code.

    The file is decoded once per sample rate; ``process_clip`` is what the cache-build
    workers run, so prediction sees exactly what training saw (keep the whole file:
    ``duration=None``).

    Returns
    -------
    arrays : list of np.ndarray
        One per feature: ``(n_bins, frames)``, or ``(samples,)`` for waveform features.
    seconds : float
        Length of the decoded audio.
    flags : tuple of str
        ``load_audio``'s flags (e.g. ``"silent"``).

    Raises
    ------
    AudioLoadError, ClipError
        The file cannot be decoded, or a feature refuses it.
    """
    arrays: list[np.ndarray | None] = [None] * len(features)
    seconds, flags = 0.0, ()
    for sr in sorted({f.sr for f in features}):
        wanted = {str(i): f for i, f in enumerate(features) if f.sr == sr}
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
            arrays[int(key)] = value
    return arrays, seconds, flags


def segment_probabilities(member: Member, array: np.ndarray, *, hop_frames: int, batch_size: int = 32,
                          device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of every evaluation segment of one file's feature.

    Parameters
    ----------
    array : np.ndarray
        ``(n_bins, frames)`` or ``(samples,)``, not yet normalised.

    Returns
    -------
    starts : np.ndarray
        ``(n_segments,)`` segment starts in frames.
    probs : np.ndarray
        ``(n_segments, n_classes)`` softmax probabilities.
    """
    starts = segment_starts(array.shape[-1], member.segment_frames, hop_frames).tolist()
    mean, std = member.normalization()
    inv_std = inverse_std(std)

    def crop(_row, start, stop):
        return array[..., start:stop]

    probs = []
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i:i + batch_size]
            x = cut_segments(crop, [0] * len(chunk), chunk, shape=array.shape[:-1],
                             segment_frames=member.segment_frames, mean=mean, inv_std=inv_std)
            probs.append(torch.softmax(member.model(torch.from_numpy(x).to(device)).float(), dim=1).cpu().numpy())
    return np.asarray(starts, dtype=np.int64), np.concatenate(probs)


def classify_file(path, members: list[Member], features: list[tuple[Feature, ...]], *, batch_size: int = 32,
                  device="cpu") -> dict:
    """Classify one file with every member (each with its :func:`member_parts`) and average.

    The file is decoded once (per sample rate) for the parts of every member; a member
    whose input stacks several parts gets their arrays concatenated along the bins.

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
    >>> members = load_members(["runs/demo/best.pt"])                      # doctest: +SKIP
    >>> prediction = classify_file("song.mp3", members, member_features(members))  # doctest: +SKIP
    >>> members[0].labels[prediction["probs"].argmax()]                      # doctest: +SKIP
    'rock'
    """
    flat, seconds, flags = compute_features(path, [part for parts in features for part in parts])
    per_member, used = [], 0
    for member, parts in zip(members, features):
        array = stack_arrays(path, member, flat[used:used + len(parts)])
        used += len(parts)
        fps = float(parts[0].frames_per_second)
        if array.shape[-1] < member.segment_frames:
            raise ClipError(f"{path}: {seconds:.2f} s of audio is shorter than one segment "
                            f"({member.segment_frames / fps:.2f} s) of {member.path}; give a longer file")
        starts, probs = segment_probabilities(member, array, hop_frames=member.hop_frames(fps),
                                              batch_size=batch_size, device=device)
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


# -- inputs and outputs ----------------------------------------------------------------------------
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
