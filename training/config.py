"""The settings of each mode as one dataclass, validated in one place.

:class:`TrainConfig` holds every ``train.py`` flag (the same names and defaults: the
parser takes its defaults from here), :class:`EvalConfig` those of ``evaluate.py`` and
:class:`PredictConfig` those of ``predict.py``. Configs are frozen: a value derived
during a run (the masks of the feature's kind, the workers of the device, the default
paths) makes a new config (:func:`dataclasses.replace`), never a changed one.

A run records its config as a plain dict (:meth:`TrainConfig.to_dict`): ``args.json``
and every checkpoint's ``"args"``, with the same keys and values ``vars(args)`` gave
before the configs existed. :meth:`TrainConfig.from_dict` reads such a record back,
also one written by another version (see there).

>>> config = TrainConfig(model="resnet", lr=3e-4)
>>> config.validate()
>>> TrainConfig.from_dict(config.to_dict()) == config
True
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from common.errors import UserError
from common.settings import parse_assignment
from models import MODELS
from training.errors import EvaluateError, PredictError, TrainError

DEFAULT_CACHE = "cache.h5"
DEFAULT_OUT_DIR = "runs/latest"
SCHEDULES = ("plateau", "cosine")
# The names of training.optim.OPTIMIZERS (which needs torch.optim), in its order.
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop")
DEVICES = ("auto", "cpu", "cuda", "mps")
# The defaults are the recipe chosen by track-grouped cross-validation on two real sets
# (README, "Choosing the defaults"): crnn on log-mel, 10 epochs of 2 crops per clip, no
# SpecAugment masks (they did not help crnn or cnn1d on mel there). --mask-* defaults apply
# to spectrogram features only.
DEFAULT_MASK = (0, 0)
# Joins the cached features of one input: --feature mel+cqt stacks mel's and cqt's bins.
# (Cache feature names, variants included, never contain it.)
PART_SEPARATOR = "+"

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
OPTIONAL_FLOATS = ("dropout", "eval_hop_seconds")  # None: the model's default / the segment length
# Int flags: (lowest, highest or None, what the value means at the lowest).
INT_FLAGS = {
    "epochs": (1, None, ""), "batch_size": (1, None, ""), "crops_per_clip": (1, None, ""),
    "warmup_epochs": (0, None, " (0: no warm-up)"), "lr_patience": (0, None, ""),
    "seed": (0, 2 ** 32 - 1, ""),  # numpy's global seed takes 32 bits
    "workers": (0, None, " (0: load in the main process)"),
    "mask_bins": (0, None, " (0: off)"), "mask_frames": (0, None, " (0: off)"),
}
OPTIONAL_INTS = ("workers", "mask_bins", "mask_frames")  # None: chosen for the device / feature


def flag(name: str) -> str:
    """The command-line spelling of setting ``name``.

    >>> flag("segment_seconds")
    '--segment-seconds'
    """
    return "--" + name.replace("_", "-")


def feature_parts(feature: str) -> tuple[str, ...]:
    """The cached features a ``--feature`` value names, in order: one, or several joined by ``+``.

    Raises
    ------
    TrainError
        An empty part (``mel+``, ``+cqt``, ``mel++cqt``, ``""``) or the same part twice.

    >>> feature_parts("mel"), feature_parts("mel+cqt")
    (('mel',), ('mel', 'cqt'))
    """
    if not isinstance(feature, str):
        raise TrainError(f"--feature {feature!r}: must be the name of a cached feature, e.g. mel, or "
                         f"several joined by {PART_SEPARATOR!r}, e.g. mel{PART_SEPARATOR}cqt")
    parts = tuple(feature.split(PART_SEPARATOR))
    if not all(parts):
        raise TrainError(f"--feature {feature!r} has an empty part; give a cached feature name, e.g. mel, or "
                         f"several joined by {PART_SEPARATOR!r} with nothing else between them, e.g. "
                         f"mel{PART_SEPARATOR}cqt")
    twice = sorted({part for part in parts if parts.count(part) > 1})
    if twice:
        raise TrainError(f"--feature {feature}: {', '.join(map(repr, twice))} "
                         f"{'is' if len(twice) == 1 else 'are'} given more than once; each "
                         f"cached feature can be stacked once, e.g. --feature "
                         f"{PART_SEPARATOR.join(dict.fromkeys(parts))}")
    return parts


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int)


def _from_namespace(cls, args, **changes):
    """``cls`` from the attributes of an argparse namespace that are its fields."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **changes})


@dataclass(frozen=True)
class TrainConfig:
    """Every ``train.py`` flag, as a field of the same name and default (``--batch-size``:
    ``batch_size``). ``None`` means "chosen for the run": see the flags' help."""

    cache: str | None = None
    feature: str = "mel"
    model: str = "crnn"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-2
    l1: float = 0.0
    mixup: float = 0.0
    mask_bins: int | None = None
    mask_frames: int | None = None
    dropout: float | None = None
    model_set: tuple[str, ...] = ()
    schedule: str = "cosine"
    warmup_epochs: int = 1
    lr_patience: int = 3
    lr_factor: float = 0.2
    min_lr: float = 1e-5
    segment_seconds: float = 3.0
    crops_per_clip: int = 2
    eval_hop_seconds: float | None = None
    merge_train_valid: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    compile: bool = False
    workers: int | None = None
    out_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    eval_only: bool = False
    checkpoint: str | None = None
    no_progress: bool = False

    def __post_init__(self):
        # A list (argparse's append, a JSON record) would make the config unhashable and mutable.
        object.__setattr__(self, "model_set", tuple(self.model_set or ()))

    # -- conversions --------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args) -> "TrainConfig":
        """The config of parsed ``train.py`` arguments, validated (:class:`TrainError`)."""
        config = _from_namespace(cls, args)
        config.validate()
        return config

    def to_dict(self) -> dict:
        """The config as plain values: what args.json and a checkpoint's ``"args"`` hold."""
        values = dataclasses.asdict(self)
        values["model_set"] = list(self.model_set)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config a run recorded (:meth:`to_dict`), also from another version of train.py.

        A key this version lacks takes its default (a record older than that flag ran
        with the default); a key it does not know is left out (a flag of a newer
        version, which it cannot act on). Not validated: it describes a run that was.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse, before any work, every value (or combination) training cannot use.

        The one place where the flags are checked: names, every number's type,
        finiteness and range, and flags that contradict each other.

        Raises
        ------
        TrainError
            Naming the flag as the command line spells it, and what it must be.
        """
        if self.model not in MODELS:
            raise TrainError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        feature_parts(self.feature)
        if self.optimizer not in OPTIMIZER_NAMES:
            raise TrainError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"unknown --schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name, (test, wanted) in FLOAT_FLAGS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FLOATS:
                continue
            if not _is_number(value) or not math.isfinite(value) or not test(value):
                raise TrainError(f"{flag(name)} {value}: must be a finite number {wanted}")
        for name, (low, high, note) in INT_FLAGS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_INTS:
                continue
            if not _is_int(value) or value < low or (high is not None and value > high):
                limits = f"between {low} and {high}" if high is not None else f"at least {low}{note}"
                raise TrainError(f"{flag(name)} {value}: must be an integer {limits}")
        if self.schedule == "plateau" and self.lr < self.min_lr:
            raise TrainError(f"--lr {self.lr} is below --min-lr {self.min_lr}: the plateau schedule would stop "
                             f"before the first epoch; raise --lr or lower --min-lr")
        for a, b in (("resume", "overwrite"), ("resume", "eval_only")):
            if getattr(self, a) and getattr(self, b):
                raise TrainError(f"{flag(a)} and {flag(b)} contradict each other; give one of them")
        if self.checkpoint is not None and not self.eval_only:
            raise TrainError(f"--checkpoint {self.checkpoint} is read by --eval-only only; add --eval-only to "
                             f"evaluate it (--resume continues from OUT_DIR/last.pt)")

    def model_settings(self) -> dict:
        """The model's keyword arguments from ``--model-set`` and ``--dropout``.

        Values follow :func:`common.settings.parse_value` (JSON, ``none`` -> None,
        commas -> a list, else text).

        >>> TrainConfig(model_set=("channels=64", "kernel_sizes=8,8,4"), dropout=0.3).model_settings()
        {'channels': 64, 'kernel_sizes': [8, 8, 4], 'dropout': 0.3}
        """
        settings = {}
        for item in self.model_set:
            try:
                key, value = parse_assignment(item, flag="--model-set", example="channels=64")
            except UserError:
                raise TrainError(f"--model-set: model setting {item!r}: expected KEY=VALUE, "
                                 f"e.g. channels=64") from None
            settings[key] = value
        if self.dropout is not None:
            settings["dropout"] = self.dropout
        return settings

    def with_paths(self) -> "TrainConfig":
        """The config with ``--cache`` and ``--out-dir`` defaults filled in, as plain strings
        (a config goes into checkpoints and JSON files, which take no Paths)."""
        return dataclasses.replace(self, cache=str(self.cache or DEFAULT_CACHE),
                                   out_dir=str(self.out_dir or DEFAULT_OUT_DIR))

    @property
    def train_splits(self) -> tuple[str, ...]:
        """The splits trained on: train, and valid with ``--merge-train-valid``."""
        return ("train", "valid") if self.merge_train_valid else ("train",)


@dataclass(frozen=True)
class EvalConfig:
    """The flags of ``evaluate.py``: an ensemble of checkpoints on one cache."""

    cache: str = DEFAULT_CACHE
    checkpoint: tuple[str, ...] = ()
    out: str | None = None
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    amp: bool | None = None
    no_progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "checkpoint", tuple(self.checkpoint or ()))

    @classmethod
    def from_args(cls, args) -> "EvalConfig":
        config = _from_namespace(cls, args)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse values evaluation cannot use (:class:`EvaluateError`, naming the flag)."""
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise EvaluateError(f"--batch-size {self.batch_size}: must be at least 1")
        if not _is_int(self.workers) or self.workers < 0:
            raise EvaluateError(f"--workers {self.workers}: must be 0 or more")
        if self.device not in DEVICES:
            raise EvaluateError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")


@dataclass(frozen=True)
class PredictConfig:
    """The flags of ``predict.py``: audio files classified by an ensemble of checkpoints."""

    inputs: tuple[str, ...] = ()
    checkpoint: tuple[str, ...] = ()
    top: int = 3
    json: bool = False
    segments: bool = False
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs or ()))
        object.__setattr__(self, "checkpoint", tuple(self.checkpoint or ()))

    @classmethod
    def from_args(cls, args) -> "PredictConfig":
        config = _from_namespace(cls, args)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse values prediction cannot use (:class:`PredictError`, naming the flag)."""
        if not _is_int(self.top) or self.top < 1:
            raise PredictError(f"--top {self.top}: must be at least 1")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise PredictError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.device not in DEVICES:
            raise PredictError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")


__all__ = ["TrainConfig", "EvalConfig", "PredictConfig", "flag", "feature_parts", "PART_SEPARATOR", "DEFAULT_CACHE",
           "DEFAULT_OUT_DIR", "DEFAULT_MASK", "DEVICES", "OPTIMIZER_NAMES", "RUN_DEFINING", "SCHEDULES"]
