"""The one writer of a cache file: creates the layout, stores rows, resumes, finishes.

Workers never touch the file; the main process receives their results and calls
:meth:`CacheWriter.write_clip`. The file is built as ``<out>.partial`` and renamed to
``<out>`` only when every row is done or skipped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cache.format import (FORMAT_VERSION, ROW_FIELDS, STATUS_DONE, STATUS_PENDING, STATUS_SKIPPED,
                          canonical_json, create_feature_dataset, feature_path, fingerprint)

# A string attribute must stay under HDF5's 64 KiB limit for the default libver.
MAX_SKIPPED_IN_ATTRS = 200


@dataclass(frozen=True)
class SplitRows:
    """What a split's rows are before anything is computed.

    ``paths``/``labels`` are per source clip; every clip gets ``versions + 1`` rows.
    """
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    versions: int

    @property
    def n_rows(self) -> int:
        return len(self.paths) * (self.versions + 1)

    def row(self, clip: int, version: int) -> int:
        return clip * (self.versions + 1) + version


@dataclass
class RowResult:
    """One computed row: the features of one version of one clip."""
    version: int
    features: dict[str, np.ndarray]
    augment: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass
class ClipResult:
    """What a worker sends back for one source clip: its rows, or why it failed."""
    split: str
    clip: int
    rows: list[RowResult] = field(default_factory=list)
    error: str | None = None


class SettingsMismatch(ValueError):
    """An existing cache was built with other settings than the ones asked for now."""


def describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human lines naming every setting that differs between two nested dicts.

    >>> describe_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: file has 2, now asked for 3']
    """
    lines = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key not in old:
            lines.append(f"{name}: not in file, now asked for {new[key]!r}")
        elif key not in new:
            lines.append(f"{name}: file has {old[key]!r}, not asked for now")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            lines.extend(describe_differences(old[key], new[key], prefix=f"{name}."))
        elif old[key] != new[key]:
            lines.append(f"{name}: file has {old[key]!r}, now asked for {new[key]!r}")
    return lines


def read_settings(path: Path) -> dict:
    """The settings stored in a cache file (finished or partial)."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["settings"])


class CacheWriter:
    """Writes one cache file; use as a context manager.

    Parameters
    ----------
    out : final path of the cache (``cache.h5``); work goes to ``cache.h5.partial``.
    settings : everything that determines the content (recorded and fingerprinted).
    layout : split name -> :class:`SplitRows`.
    shapes : feature name -> shape of one row, e.g. ``(128, 1292)``.
    compression : "none" (memory-mappable) or "gzip".
    """

    def __init__(self, out, *, settings: dict, layout: dict[str, SplitRows],
                 shapes: dict[str, tuple[int, ...]], compression: str = "none"):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.layout = layout
        self.shapes = shapes
        self.compression = compression
        self._file: h5py.File | None = None
        self._unflushed: list[tuple[str, int, int]] = []
        self.resumed = False

    # -- opening ---------------------------------------------------------------------
    def open(self) -> "CacheWriter":
        """Open ``.partial`` to resume it if it matches, or create it anew."""
        if self.partial.exists():
            try:
                self._file = self._open_existing_partial()
                self.resumed = True
            except SettingsMismatch:
                raise
            except Exception as exc:  # a build killed mid-write can leave an unreadable file
                print(f"warning: cannot resume {self.partial} ({exc}); starting it again",
                      flush=True)
                self.partial.unlink()
        if self._file is None:
            self._file = self._create()
        return self

    def _open_existing_partial(self) -> h5py.File:
        f = h5py.File(self.partial, "r+")
        try:
            old = json.loads(f.attrs["settings"])
            if f.attrs["fingerprint"] != self.fingerprint:
                diff = "\n  ".join(describe_differences(old, self.settings))
                raise SettingsMismatch(
                    f"{self.partial} is an unfinished build with other settings:\n  {diff}\n"
                    f"Re-run with the settings it was started with to resume it, "
                    f"or pass --overwrite to start again.")
            for split, rows in self.layout.items():
                status = f[split]["status"]
                if status.shape != (rows.n_rows,):
                    raise ValueError(f"split {split!r} has {status.shape[0]} rows, expected {rows.n_rows}")
        except BaseException:
            f.close()
            raise
        return f

    def _create(self) -> h5py.File:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(self.partial, "w")  # default libver: readable by HDF5 1.10 tools
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = 0
        f.attrs["fingerprint"] = self.fingerprint
        f.attrs["settings"] = canonical_json(self.settings)
        # Convenience copies for h5ls -v / h5dump -A readers.
        f.attrs["labels"] = json.dumps(self.settings["labels"])
        f.attrs["sample_rate"] = self.settings["sample_rate"]
        f.attrs["duration"] = self.settings["duration"]
        f.attrs["features"] = json.dumps(sorted(self.shapes))
        f.attrs["augment"] = canonical_json(self.settings["augment"])
        f.attrs["skipped"] = "[]"
        f.attrs["n_skipped"] = 0
        for split, rows in self.layout.items():
            self._create_split(f.create_group(split), rows)
        f.flush()
        return f

    def _create_split(self, group: h5py.Group, rows: SplitRows) -> None:
        n_clips, n_versions = len(rows.paths), rows.versions + 1
        static = {
            "path": np.repeat(np.array(rows.paths, dtype=object), n_versions),
            "label": np.repeat(np.asarray(rows.labels, dtype=ROW_FIELDS["label"]), n_versions),
            "clip": np.repeat(np.arange(n_clips, dtype=ROW_FIELDS["clip"]), n_versions),
            "version": np.tile(np.arange(n_versions, dtype=ROW_FIELDS["version"]), n_clips),
            "augment": np.full(rows.n_rows, "", dtype=object),
            "flags": np.full(rows.n_rows, "", dtype=object),
            "status": np.full(rows.n_rows, STATUS_PENDING, dtype=ROW_FIELDS["status"]),
        }
        for name, dtype in ROW_FIELDS.items():
            group.create_dataset(name, data=static[name], dtype=dtype)
        features = group.create_group("features")
        for name, shape in self.shapes.items():
            create_feature_dataset(features, name, rows=rows.n_rows, shape=shape,
                                   compression=self.compression)

    # -- progress ----------------------------------------------------------------------
    def pending(self) -> dict[str, dict[int, list[int]]]:
        """split -> clip -> versions still to compute (resume point)."""
        todo: dict[str, dict[int, list[int]]] = {}
        for split, rows in self.layout.items():
            status = self._file[split]["status"][...].reshape(len(rows.paths), rows.versions + 1)
            clips, versions = np.nonzero(status == STATUS_PENDING)
            per_clip: dict[int, list[int]] = {}
            for clip, version in zip(clips.tolist(), versions.tolist()):
                per_clip.setdefault(clip, []).append(version)
            todo[split] = per_clip
        return todo

    def write_clip(self, result: ClipResult) -> None:
        """Store a worker's result; a failed clip has all its rows marked skipped."""
        group = self._file[result.split]
        rows = self.layout[result.split]
        if result.error is not None:
            self._mark_skipped(group, rows, result)
        else:
            for row in result.rows:
                index = rows.row(result.clip, row.version)
                for name, values in row.features.items():
                    group["features"][name][index] = values
                group["augment"][index] = canonical_json(row.augment) if row.augment else ""
                group["flags"][index] = ",".join(row.flags)
                self._unflushed.append((result.split, index, STATUS_DONE))
        # Flushed per clip: cheap next to decoding one, and a kill then costs one clip at most.
        self.flush()

    def _mark_skipped(self, group: h5py.Group, rows: SplitRows, result: ClipResult) -> None:
        for version in range(rows.versions + 1):
            index = rows.row(result.clip, version)
            # Chunks are allocated but never filled; zero them so the file holds no stray bytes.
            for name in self.shapes:
                group["features"][name][index] = 0.0
            group["flags"][index] = f"skipped: {result.error}"
            self._unflushed.append((result.split, index, STATUS_SKIPPED))

    def flush(self) -> None:
        """Make written rows durable, then mark them done.

        The data goes out first, so a status of done always means its data is on disk;
        a kill between the two flushes only means those rows are computed again.
        """
        self._file.flush()
        for split, index, status in self._unflushed:
            self._file[split]["status"][index] = status
        self._file.flush()
        self._unflushed.clear()

    def skipped(self) -> list[dict]:
        """Every skipped source clip: split, path and reason (sorted, one per clip)."""
        found = []
        for split in self.layout:
            group = self._file[split]
            status = group["status"][...]
            versions = group["version"][...]
            for index in np.nonzero((status == STATUS_SKIPPED) & (versions == 0))[0]:
                reason = group["flags"][index].decode().removeprefix("skipped: ")
                found.append({"split": split, "path": group["path"][index].decode(), "reason": reason})
        return found

    def finish(self) -> Path:
        """Record the skipped files, mark complete and rename ``.partial`` to the cache."""
        self.flush()
        for split in self.layout:
            if (self._file[split]["status"][...] == STATUS_PENDING).any():
                raise RuntimeError(f"cannot finish {self.partial}: split {split!r} has pending rows")
        skipped = self.skipped()
        self._file.attrs["n_skipped"] = len(skipped)
        self._file.attrs["skipped"] = canonical_json(skipped[:MAX_SKIPPED_IN_ATTRS])
        self._file.attrs["complete"] = 1
        self.close()
        os.replace(self.partial, self.out)
        return self.out

    def close(self) -> None:
        if self._file is not None:
            if self._file.id.valid:
                self.flush()
                self._file.close()
            self._file = None

    def __enter__(self) -> "CacheWriter":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
