"""Finished run folders as they are on disk: what train.py (or evaluate.py, bench/mfcc_svm.py) left.

Only JSON is read (args.json, metrics.jsonl, results.json, run.json): never a
checkpoint, whose unpickling could run code, and never torch, which this module does
not import.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from training.errors import ReportError

RUN_FILES = ("args.json", "metrics.jsonl", "results.json")
RUN_DESCRIPTION = "run.json"  # written by train.py; older runs lack it


@dataclass
class Run:
    """What a finished run left in its folder.

    ``meta`` holds the run's description from its run.json (model, model_config,
    feature, feature_settings, labels, cache_fingerprint, ...); None for runs older
    than run.json.
    """
    path: Path
    name: str
    args: dict
    history: list[dict]
    results: dict
    meta: dict | None

    @property
    def valid_acc(self) -> float:
        return float(self.results["valid_acc"])

    @property
    def test_acc(self) -> float:
        return float(self.results["test_acc"])

    @property
    def trained_on_valid(self) -> bool:
        """Valid was in the training data (--merge-train-valid): its accuracy chooses nothing."""
        return bool(self.results.get("valid_trained_on", self.args.get("merge_train_valid", False)))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.results.get("labels") or (self.meta or {}).get("labels") or ())

    @property
    def fingerprint(self) -> str | None:
        """The cache the run was trained on."""
        return self.results.get("cache_fingerprint") or (self.meta or {}).get("cache_fingerprint")

    @property
    def data_fingerprint(self) -> str | None:
        """The clips and labels the run was scored on (its cache's, for runs that predate it)."""
        return self.results.get("data_fingerprint") or self.fingerprint

    @property
    def recipe(self) -> str:
        """The run's name without a trailing ``_s<seed>``."""
        return re.sub(r"_s\d+$", "", self.name)


def _refuse_constant(name: str):
    raise ValueError(f"it holds {name}, which is not a number")


def _read_json(path: Path):
    try:
        # NaN and Infinity are not JSON: a file holding them comes from a run that diverged.
        return json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; re-run the evaluation "
                          f"(train.py --eval-only --out-dir {path.parent}) or leave the run out") from None


def _read_history(path: Path) -> list[dict]:
    history = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line, parse_constant=_refuse_constant))
        except ValueError as exc:
            raise ReportError(f"{path}, line {number} is not JSON ({exc}); the run's log is damaged") from exc
    return history


def _read_meta(folder: Path) -> dict | None:
    """The run's run.json, or None for a run older than it (its columns then show "?")."""
    path = folder / RUN_DESCRIPTION
    if not path.is_file():
        return None
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise ReportError(f"{path} is not a JSON object; the run folder is damaged (re-run the training "
                          f"or leave the run out)")
    return meta


def read_run(folder, *, name: str | None = None) -> Run:
    """Read a finished run folder (``train.py --out-dir``).

    Raises
    ------
    ReportError
        The folder is missing, unfinished (no results.json) or damaged.

    >>> run = read_run("runs/demo")  # doctest: +SKIP
    >>> run.valid_acc, run.test_acc  # doctest: +SKIP
    (0.71, 0.69)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"run folder {folder} does not exist; give train.py --out-dir folders")
    missing = [f for f in RUN_FILES if not (folder / f).is_file()]
    if missing:
        raise ReportError(f"run {folder} is not finished (missing {', '.join(missing)}); let it finish, "
                          f"resume it (train.py --resume --out-dir {folder}) or leave it out")
    results = _read_json(folder / "results.json")
    lacking = [k for k in ("valid_acc", "test_acc", "valid", "test") if k not in results]
    if lacking:
        raise ReportError(f"{folder / 'results.json'} lacks {', '.join(lacking)}; re-run the evaluation "
                          f"(train.py --eval-only --out-dir {folder})")
    return Run(path=folder, name=name or folder.name, args=_read_json(folder / "args.json"),
               history=_read_history(folder / "metrics.jsonl"), results=results, meta=_read_meta(folder))


def read_runs(folders) -> list[Run]:
    """Read every run; runs whose folder names clash are named by their full path."""
    folders = [Path(f) for f in folders]
    names = [f.resolve().name for f in folders]
    return [read_run(f, name=f.resolve().name if names.count(f.resolve().name) == 1 else str(f))
            for f in folders]
