"""The checkpoint file: weights plus everything needed to use them, in one schema.

A checkpoint records the model name and constructor arguments, the feature and its
settings, the labels, the normalisation and the training config (``"args"``, see
:meth:`training.config.TrainConfig.to_dict`), so evaluation and prediction need no
flags repeated::

    ckpt = load_checkpoint("runs/x/best.pt")
    model = model_from_checkpoint(ckpt)      # weights loaded, eval mode
    members = load_members(["runs/x/best.pt", "runs/y/best.pt"], error=EvaluateError)

What a run is (:func:`run_description`) is also written as plain JSON beside its
checkpoints (run.json), for readers that must not load torch (report.py).

A checkpoint holds tensors and plain Python values only (dicts, lists, tuples, str,
int, float, bool, None). It is read with ``torch.load(..., weights_only=True)``, which
refuses anything else instead of unpickling it: a ``.pt`` file from elsewhere can carry
a pickle payload, and unpickling that runs its code. :func:`save_checkpoint` refuses to
write anything that would not load that way, and writes the file whole or not at all.
"""
from __future__ import annotations

import io
import math
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.atomic import write_bytes
from common.errors import UserError
from common.kinds import KIND_DIMS, SPECTROGRAM
from models import build_model, count_parameters
from training.config import TrainConfig, feature_parts
from training.data import stats_shape, stored_feature_settings
from training.errors import CheckpointError
from training.runtime import unwrap
from training.segments import eval_hop_frames

# Format 1: every checkpoint written since checkpoints had a format; this code writes and reads it.
CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "model", "model_config", "feature", "feature_settings", "labels",
                 "normalization", "segment_frames", "state_dict")
# What a checkpoint may hold besides tensors and containers: values that
# torch.load(weights_only=True) rebuilds without unpickling arbitrary classes.
PLAIN_TYPES = (str, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)
MAPPINGS = (dict, OrderedDict)  # state_dict() gives OrderedDicts


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically: a kill or a full disk never leaves half a checkpoint.

    The previous file at ``path`` stays as it was unless the new one is complete.

    Raises
    ------
    TypeError
        ``state`` holds a value that ``torch.load(weights_only=True)`` would refuse
        (a numpy scalar, a Path, an object): a bug of the caller.
    common.atomic.StorageError
        The disk is full, read-only or not writable; the message names ``path``.
    """
    state = {"format": CHECKPOINT_FORMAT, **state}
    check_plain(state)
    # Serialised in memory and written with plain file writes: torch's own file writer
    # reports a full disk as a RuntimeError without errno, which could not be told apart
    # from a bug. Checkpoints are megabytes.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def check_plain(value, where: str = "checkpoint") -> None:
    """Refuse (``TypeError``) anything but tensors and plain values, naming where it is.

    >>> check_plain({"lr": 0.1, "sizes": [1, 2], "w": torch.zeros(2)})
    >>> import pathlib
    >>> check_plain({"args": {"cache": pathlib.Path("c.h5")}})
    Traceback (most recent call last):
    ...
    TypeError: checkpoint['args']['cache'] is a PosixPath; a checkpoint holds tensors and plain values only
    """
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_TYPES:
        return
    if type(value) in MAPPINGS:
        for key, item in value.items():
            if type(key) not in PLAIN_TYPES:
                raise TypeError(f"{where} has a key of type {type(key).__name__}; "
                                f"a checkpoint holds tensors and plain values only")
            check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds tensors and plain values only")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The gist of an exception in one short line (torch's messages span paragraphs).

    For a refused pickle global only its name is kept: torch's own advice (to allow
    that global) is exactly what must not be done with a file from elsewhere.

    >>> _one_line(RuntimeError("WeightsUnpickler error: Unsupported global: GLOBAL posix.system was not "
    ...                        "an allowed global by default. Please use ..."))
    'it refers to posix.system'
    """
    text = str(exc)
    refused = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
    if refused:
        return f"it refers to {refused.group(1)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    gist = lines[0] if lines else type(exc).__name__
    return gist if len(gist) <= limit else gist[:limit - 3] + "..."


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that it is complete and sane.

    Never runs code from the file: it is read with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        Missing, unreadable, holding objects other than tensors and plain values, not
        a checkpoint of this project, of another format, or inconsistent (e.g. a
        normalisation that does not fit its feature). The message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; train one with train.py "
                              f"(it writes best.pt and last.pt in --out-dir)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} was not loaded: it holds Python objects other than tensors and plain "
            f"values ({_one_line(exc)}), and unpickling them could run code. Use a checkpoint written by "
            f"train.py; if this file is your own and you trust it, re-save it holding only tensors and "
            f"plain values") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch reports a damaged zip as RuntimeError, a truncated file as EOFError
        raise CheckpointError(f"cannot read checkpoint {path}: {_one_line(exc)}; the file is damaged or "
                              f"not a checkpoint (train.py writes best.pt and last.pt)") from None
    missing = [key for key in REQUIRED_KEYS if key not in ckpt] if isinstance(ckpt, dict) else REQUIRED_KEYS
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format']}, this code reads "
                              f"{CHECKPOINT_FORMAT}; retrain or use a matching version")
    check_description(ckpt, path)
    return ckpt


def check_description(ckpt: dict, path) -> None:
    """Refuse a checkpoint whose description is malformed or does not fit together.

    The normalisation must have the shape its feature's rows need: ``(n_bins, 1)``
    for spectrograms, ``(1,)`` for waveforms (see :func:`training.data.stats_shape`).
    """
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is inconsistent: {what}; it was damaged or edited, "
                               f"use another checkpoint or retrain")

    for key, kind in (("model", str), ("feature", str), ("model_config", dict), ("feature_settings", dict),
                      ("normalization", dict), ("state_dict", dict), ("labels", list)):
        if not isinstance(ckpt[key], kind):
            raise bad(f"{key} is a {type(ckpt[key]).__name__}, not a {kind.__name__}")
    if not all(isinstance(label, str) for label in ckpt["labels"]) or len(ckpt["labels"]) < 2:
        raise bad(f"labels {ckpt['labels']!r} are not two or more genre names")
    saved = ckpt.get("args", {})
    if not isinstance(saved, dict) or not all(isinstance(key, str) for key in saved):
        raise bad("args is not a mapping of flag names to values")
    hop = saved.get("eval_hop_seconds")
    if hop is not None and not (type(hop) in (int, float) and math.isfinite(hop) and hop > 0):
        raise bad(f"args eval_hop_seconds {hop!r} is not a positive number")
    rate = ckpt.get("sample_rate", 1)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise bad(f"sample_rate {rate!r} is not a positive integer")
    segment = ckpt["segment_frames"]
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise bad(f"segment_frames {segment!r} is not a positive integer")
    settings = ckpt["feature_settings"]
    kind = settings.get("kind")
    if kind not in KIND_DIMS:
        raise bad(f"feature {ckpt['feature']!r} has kind {kind!r}, not one of {', '.join(KIND_DIMS)}")
    try:
        parts = feature_parts(ckpt["feature"])
    except UserError as exc:
        raise bad(str(exc)) from None
    if len(parts) > 1:
        check_stacked_settings(ckpt["feature"], parts, settings, bad)
    shape = settings.get("shape")
    n_bins = shape[0] if kind == SPECTROGRAM and isinstance(shape, list) and shape else \
        ckpt["model_config"].get("n_bins", 1)
    wanted = stats_shape(kind, n_bins)
    norm = ckpt["normalization"]
    for name in ("mean", "std"):
        try:
            value = torch.as_tensor(norm.get(name), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise bad(f"normalization {name} is not an array of numbers") from None
        if tuple(value.shape) != wanted:
            raise bad(f"normalization {name} has shape {tuple(value.shape)}, but feature {ckpt['feature']!r} "
                      f"({kind}{f' of {n_bins} bins' if kind == SPECTROGRAM else ''}) needs {wanted}")
        if not bool(torch.isfinite(value).all()):
            raise bad(f"normalization {name} holds non-finite values")
        if name == "std" and not bool((value > 0).all()):
            raise bad("normalization std holds values <= 0")
    for key, tensor in ckpt["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise bad(f"state_dict[{key!r}] is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise bad(f"weight {key!r} holds NaN or infinite values (a run that diverged)")


def check_stacked_settings(feature: str, parts: tuple[str, ...], settings: dict, bad) -> None:
    """Refuse (``bad(what)``) the recorded settings of stacked parts that do not add up.

    They must describe a spectrogram whose bins are the sum of its parts' (see
    :func:`training.data.stored_feature_settings`), every part a spectrogram.
    """
    recorded = settings.get("parts")
    if not isinstance(recorded, dict) or set(recorded) != set(parts):
        found = sorted(recorded) if isinstance(recorded, dict) else recorded
        raise bad(f"feature {feature!r} stacks {', '.join(parts)}, but its settings record the parts {found!r}")
    shapes = [recorded[part].get("shape") if isinstance(recorded[part], dict) else None for part in parts]
    if settings.get("kind") != SPECTROGRAM or not all(isinstance(shape, list) and shape for shape in shapes) \
            or any(recorded[part].get("kind") != SPECTROGRAM for part in parts):
        raise bad(f"feature {feature!r} stacks parts that are not all spectrograms")
    shape = settings.get("shape")
    if not isinstance(shape, list) or not shape or shape[0] != sum(s[0] for s in shapes):
        raise bad(f"feature {feature!r} has shape {shape!r}, but its parts have {sum(s[0] for s in shapes)} bins")


def model_from_checkpoint(ckpt: dict, *, device="cpu", path=None) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes, load its weights, and set eval mode.

    Raises
    ------
    CheckpointError
        The model cannot be rebuilt from its stored settings, or the weights do not
        fit it; the message names ``path`` (the file ``ckpt`` was read from) if given.
    """
    name = f"checkpoint {path}" if path is not None else "the checkpoint"
    try:
        model = build_model(ckpt["model"], **ckpt["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: cannot rebuild its model {ckpt['model']!r} from the stored "
                              f"settings ({exc}); use the code version it was trained with") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{name}: its weights do not fit model {ckpt['model']!r} "
                              f"({_one_line(exc)}); the file was damaged or edited") from None
    return model.to(device).eval()



# -- what a checkpoint holds -----------------------------------------------------------------------
def run_description(*, config: TrainConfig, model, cache, segment_frames: int) -> dict:
    """What a run is, as plain values: its checkpoints' description and its run.json."""
    return {
        "model": config.model,
        "model_config": unwrap(model).config,
        "feature": config.feature,
        "feature_settings": stored_feature_settings(cache, config.feature),
        "labels": list(cache.labels),
        "sample_rate": cache.sample_rate,
        "cache": str(cache.path),
        "cache_fingerprint": cache.fingerprint,
        "data_fingerprint": cache.data_fingerprint,
        "segment_frames": segment_frames,
        "parameters": count_parameters(unwrap(model)),
    }


def checkpoint_state(*, description: dict, config: TrainConfig, model, mean, std, optimizer=None,
                     scheduler=None, scaler=None, epoch=None, best=None, history=None) -> dict:
    """Everything a checkpoint holds, as tensors and plain values (``torch.load(weights_only=True)``).

    ``description`` is :func:`run_description`'s; with ``optimizer`` (and its
    ``scheduler`` and ``scaler``) the state also resumes the run.
    """
    state = {
        **description,
        "normalization": {"mean": np.asarray(mean, dtype=np.float64).tolist(),
                          "std": np.asarray(std, dtype=np.float64).tolist()},
        "args": config.to_dict(),
        "state_dict": unwrap(model).state_dict(),
        "epoch": epoch,
        "best": best,
        "history": history or [],
    }
    if optimizer is not None:
        state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     scaler=scaler.state_dict(), torch_rng=torch.get_rng_state())
    return state


def recorded_args(ckpt: dict) -> dict:
    """The training config a checkpoint records, as the dict it was saved as ({} when none)."""
    saved = ckpt.get("args")
    return saved if isinstance(saved, dict) else {}


def recorded_config(ckpt: dict) -> TrainConfig:
    """The training config a checkpoint records (:meth:`TrainConfig.from_dict`)."""
    return TrainConfig.from_dict(recorded_args(ckpt))


def normalization_of(ckpt: dict) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's normalisation ``(mean, std)`` as float32 arrays (see ``stats_shape``)."""
    norm = ckpt["normalization"]
    return np.asarray(norm["mean"], dtype=np.float32), np.asarray(norm["std"], dtype=np.float32)


# -- members of an ensemble ------------------------------------------------------------------------
@dataclass
class Member:
    """One checkpoint of an ensemble (one alone is an ensemble of one) and its model.

    ``model`` is None for a member whose description is used before (or without) its
    weights, e.g. to check a cache before the model is built.
    """
    path: Path
    ckpt: dict
    model: torch.nn.Module | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.ckpt["labels"])

    @property
    def feature(self) -> str:
        return self.ckpt["feature"]

    @property
    def parts(self) -> tuple[str, ...]:
        """The cached features the member's input stacks (one for a plain feature)."""
        return feature_parts(self.feature)

    @property
    def config(self) -> TrainConfig:
        return recorded_config(self.ckpt)

    @property
    def trained_on_valid(self) -> bool:
        return bool(self.config.merge_train_valid)

    @property
    def segment_frames(self) -> int:
        return int(self.ckpt["segment_frames"])

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        return normalization_of(self.ckpt)

    def hop_frames(self, frames_per_second: float) -> int:
        """The hop between evaluation segments training used (``--eval-hop-seconds``)."""
        hop = eval_hop_frames(self.config.eval_hop_seconds, frames_per_second)
        return self.segment_frames if hop is None else hop


def read_checkpoints(paths, *, error: type[UserError] = CheckpointError) -> list[tuple[Path, dict]]:
    """Load every checkpoint; refuse (``error``) a missing one, or members of other labels.

    An ensemble averages probabilities, so its members need the same labels in the
    same order; they may differ in model, feature and segment length.
    """
    if not paths:
        raise error("no checkpoint given; pass --checkpoint RUN_DIR/best.pt")
    loaded = []
    for path in map(Path, paths):
        try:
            loaded.append((path, load_checkpoint(path)))
        except CheckpointError as exc:
            raise error(str(exc)) from exc
    first, ckpt = loaded[0]
    for other, other_ckpt in loaded[1:]:
        if other_ckpt["labels"] != ckpt["labels"]:
            raise error(f"checkpoints {first} and {other} predict different labels "
                        f"({ckpt['labels']} vs {other_ckpt['labels']}); an ensemble averages "
                        f"probabilities, so its members need the same labels in the same order")
    return loaded


def load_members(paths, *, device="cpu", error: type[UserError] = CheckpointError) -> list[Member]:
    """:func:`read_checkpoints`, then every member's model on ``device`` (in eval mode).

    >>> members = load_members(["runs/a/best.pt", "runs/b/best.pt"])  # doctest: +SKIP
    """
    members = []
    for path, ckpt in read_checkpoints(paths, error=error):
        try:
            members.append(Member(path=path, ckpt=ckpt, model=model_from_checkpoint(ckpt, device=device, path=path)))
        except CheckpointError as exc:
            raise error(str(exc)) from exc
    return members
