"""The one writer of a cache file: creates the layout, stores rows, resumes, finishes.

Workers never touch the file: the process that runs the build hands the writer plain
arrays, one source clip at a time (:meth:`CacheWriter.write_rows`, or
:meth:`CacheWriter.skip_clip` for a clip that could not be computed). The writer knows
nothing of audio or features; it stores arrays of the shapes it was opened with. The
file is built as ``<out>.partial`` and renamed to
``<out>`` only when every row is done or skipped. The caller holds the cache's
exclusive lock (``common.locks.FileLock(out)``) while a writer is open.

What a full disk, a kill or a damaged file can do, and what the writer does about it:

- The file's blocks are reserved (``posix_fallocate``) when it is created or resumed,
  after checking there is room for all of it, so feature data never meets a full disk.
- Before each clip it checks that :data:`RESERVE_BYTES` stay free for the little
  metadata still to come (string heaps, attributes) and stops cleanly otherwise.
- Anything HDF5 fails to write becomes a :class:`~common.atomic.StorageError` naming
  the file and its folder; the ``.partial`` stays, and the same command resumes it.
- A row is marked done only after its data was flushed, with a CRC-32 of its bytes; a
  resume recomputes every done row whose bytes do not match.
- A non-finite feature row is never stored as done: its clip is skipped, naming it.
"""
from __future__ import annotations

import errno
import gc
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from cache.format import (CHECKSUM_DTYPE, CHECKSUM_FIELD, FEATURE_DTYPE, FIXED_TEXT_BYTES, FORMAT_VERSION,
                          OPTIONAL_ROW_FIELDS, PARTIAL_SUFFIX, ROW_FIELDS, STATUS_DONE, STATUS_PENDING,  # noqa: F401
                          STATUS_SKIPPED, CacheError, canonical_json, create_feature_dataset, fingerprint,
                          partial_path, read_root_attrs, row_checksum)
from common.atomic import STORAGE_ERRNOS, StorageError

# A string attribute must stay under HDF5's 64 KiB limit for the default libver.
MAX_SKIPPED_IN_ATTRS = 200
# Free space kept for what the file still grows by after its blocks are reserved: the
# final attributes (up to 64 KiB), and the string heap of a file written before rows
# had fixed-length text. A write that meets a full disk can leave HDF5's metadata
# half-written, so the build stops before that instead.
RESERVE_BYTES = 2 ** 20
# File-system errors that only mean "cannot reserve blocks here" (the data is then
# written without a reservation).
NO_FALLOCATE_ERRNOS = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
RESUME_HINT = "run the same command again to resume: the rows finished so far are kept"

# One computed row as :meth:`CacheWriter.write_rows` takes it: ``(version, features,
# augment, flags)`` -- the version (0 the original, 1..K augmented copies), feature name ->
# array of the row's shape, the augmentation record (JSON-serialisable, empty for the
# original) and the loader's flags (e.g. ``("padded", "short")``).
Row = tuple[int, dict[str, np.ndarray], dict, Sequence[str]]


@dataclass(frozen=True)
class SplitRows:
    """What a split's rows are before anything is computed.

    ``paths``/``labels``/``groups`` are per source clip (``groups`` empty when no clip
    has one); every clip gets ``versions + 1`` rows.
    """
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    versions: int
    groups: tuple[str, ...] = ()

    @property
    def n_rows(self) -> int:
        return len(self.paths) * (self.versions + 1)

    def row(self, clip: int, version: int) -> int:
        return clip * (self.versions + 1) + version


class SettingsMismatch(CacheError):
    """An existing cache was built with other settings than the ones asked for now."""


class NothingUsable(CacheError):
    """A split would have no usable clip: the build is left unfinished, to be retried."""


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
    with h5py.File(path, "r", locking=False) as f:
        return read_root_attrs(f.attrs, path=path).settings


def non_finite_reason(rows: Sequence[Row]) -> str | None:
    """Why rows cannot be stored as done (a NaN or infinite value), or None.

    A storage check: whatever computed them, a non-finite row marked done would
    poison every training that reads the cache.

    >>> non_finite_reason([(1, {"mel": np.array([np.inf, 0.0])}, {}, ())])
    'feature mel of augmented copy 1 has infinite values (1 of 2)'
    """
    for version, features, _, _ in rows:
        for name, values in features.items():
            values = np.asarray(values)
            finite = np.isfinite(values)
            if not finite.all():
                kind = "NaN" if np.isnan(values).any() else "infinite"
                what = "the original" if version == 0 else f"augmented copy {version}"
                return f"feature {name} of {what} has {kind} values ({int((~finite).sum())} of {values.size})"
    return None


# -- storage ---------------------------------------------------------------------------------
def size_text(n_bytes: float) -> str:
    """Bytes as a short human figure.

    >>> size_text(3.5e9), size_text(12e6), size_text(900)
    ('3.50 GB', '12.0 MB', '0.0 MB')
    """
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def free_bytes(folder) -> int | None:
    """Bytes an unprivileged process may still write in ``folder``, None if unknown."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_blocks == 0:  # a file system that reports no sizes (some FUSE mounts)
        return None
    return stat.f_bavail * stat.f_frsize


def estimate_bytes(layout: dict[str, SplitRows], shapes: dict[str, tuple[int, ...]]) -> int:
    """Upper estimate of an uncompressed cache's size: its features plus metadata."""
    rows = sum(r.n_rows for r in layout.values())
    row_bytes = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()) * FEATURE_DTYPE.itemsize
    # Per row: its fixed-length text, plus chunk index entries and fixed fields (well under 512 B).
    return rows * (row_bytes + sum(FIXED_TEXT_BYTES.values()) + 512) + 2 ** 20


def error_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one HDF5 puts in its message (``errno = 28``)."""
    if getattr(exc, "errno", None):
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found else None


def is_storage_failure(exc: BaseException) -> bool:
    """True for what h5py raises when the file system refused a read or write."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RuntimeError) and (error_errno(exc) is not None or "write failed" in str(exc))


def _no_room(path: Path, *, needed: int, free: int, doing: str) -> StorageError:
    folder = path.parent
    return StorageError(f"not enough free space for {doing} {path}: needs {size_text(needed)}, "
                        f"{size_text(free)} free in {folder}; free some space there or choose another --out")


class CacheWriter:
    """Writes one cache file; use as a context manager.

    Parameters
    ----------
    out : final path of the cache (``cache.h5``); work goes to ``cache.h5.partial``.
    settings : everything that determines the content (recorded and fingerprinted).
    layout : split name -> :class:`SplitRows`.
    shapes : feature name -> shape of one row, e.g. ``(128, 1292)``.
    compression : "none" (memory-mappable) or "gzip".

    Opening resumes ``.partial`` when it exists (its skipped clips are computed again,
    and its done rows checked against their checksums), or creates it.

    Raises
    ------
    SettingsMismatch
        ``.partial`` was started with other settings.
    CacheError
        ``.partial`` cannot be opened or has another layout; it is left as it is.
    StorageError
        Not enough room, or a write the file system refused; ``.partial`` is kept.
    """

    def __init__(self, out, *, settings: dict, layout: dict[str, SplitRows],
                 shapes: dict[str, tuple[int, ...]], compression: str = "none"):
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.settings = settings
        self.fingerprint = fingerprint(settings)
        self.layout = layout
        self.shapes = shapes
        self.compression = compression
        self._file: h5py.File | None = None
        self._unflushed: list[tuple[str, int, int]] = []
        self._broken = False
        self.resumed = False
        self.recomputed: list[tuple[str, int]] = []  # done rows whose checksum failed on resume

    # -- opening ---------------------------------------------------------------------
    def open(self) -> "CacheWriter":
        """Resume ``.partial`` if it exists and matches, or create it."""
        self._remove_stale_temporaries()
        if self.partial.exists():
            self._file = self._open_existing_partial()
            self.resumed = True
        else:
            self._create()
            self._file = self._open_for_writing()
        return self

    def _remove_stale_temporaries(self) -> None:
        # A build killed while creating its file leaves a temporary beside it (blocks
        # reserved, so possibly large); the caller's exclusive lock says none is in use.
        for stale in self.partial.parent.glob(f".{self.partial.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    def _open_for_writing(self) -> h5py.File:
        try:
            return h5py.File(self.partial, "r+")
        except (OSError, RuntimeError) as exc:
            if "unable to lock file" in str(exc).lower():
                why, fix = ("another program has it open (HDF5's file lock)",
                            "wait for that program to end or stop it, then run the same command again")
            else:
                why, fix = (f"it is not a readable HDF5 file ({exc})",
                            "pass --overwrite to start again (what it holds is then lost)")
            raise CacheError(f"cannot resume the unfinished build {self.partial}: {why}. It is left as it is: "
                             f"{fix}") from exc

    def _open_existing_partial(self) -> h5py.File:
        f = self._open_for_writing()
        try:
            old = read_root_attrs(f.attrs, path=self.partial)  # its message says to --overwrite
            if old.fingerprint != self.fingerprint:
                diff = "\n  ".join(describe_differences(old.settings, self.settings))
                raise SettingsMismatch(
                    f"{self.partial} is an unfinished build with other settings:\n  {diff}\n"
                    f"Re-run with the settings it was started with to resume it, "
                    f"or pass --overwrite to start again.")
            self._check_layout(f)
            with self._storage("resuming the build"):
                self._reserve_blocks(self.partial, doing="resuming")
                # From now on the file may change; a reader must not take it for finished.
                f.attrs["complete"] = 0
                self._add_missing_fields(f)
                self._verify_done_rows(f)
                f.flush()
        except BaseException:
            if self._broken:
                _abandon(f)
            else:
                f.close()
            raise
        return f

    def _check_layout(self, f: h5py.File) -> None:
        for split, rows in self.layout.items():
            problem = None
            if split not in f:
                problem = f"it has no split {split!r}"
            elif any(name not in f[split] for name in ROW_FIELDS):
                problem = f"its split {split!r} lacks some of the row fields {', '.join(ROW_FIELDS)}"
            elif f[split]["status"].shape != (rows.n_rows,):
                problem = f"split {split!r} has {f[split]['status'].shape[0]} rows, expected {rows.n_rows}"
            else:
                for name, shape in self.shapes.items():
                    dset = f[split].get(f"features/{name}")
                    if dset is None or dset.shape != (rows.n_rows, *shape):
                        problem = f"its {split}/features/{name} is missing or of another shape"
                        break
            if problem:
                raise CacheError(f"cannot resume {self.partial}: {problem} (a damaged file); it is left "
                                 f"as it is: pass --overwrite to start again")

    def _add_missing_fields(self, f: h5py.File) -> None:
        """Give a file written before ``group``/``checksum`` existed those fields."""
        for split, rows in self.layout.items():
            group = f[split]
            if "group" not in group:
                group.create_dataset("group", data=self._static_fields(rows)["group"],
                                     dtype=OPTIONAL_ROW_FIELDS["group"][0])
            if CHECKSUM_FIELD not in group:
                # Nothing to check the old rows against: trust them, as the old writer did.
                status = group["status"][...]
                sums = np.zeros(rows.n_rows, dtype=CHECKSUM_DTYPE)
                for index in np.flatnonzero(status == STATUS_DONE):
                    sums[index] = row_checksum(self._stored_row(group, index))
                group.create_dataset(CHECKSUM_FIELD, data=sums)

    def _stored_row(self, group: h5py.Group, index: int) -> dict[str, np.ndarray]:
        return {name: group["features"][name][index] for name in self.shapes}

    def _verify_done_rows(self, f: h5py.File) -> None:
        """Mark pending again every done row whose bytes do not match its checksum."""
        for split in self.layout:
            group = f[split]
            status, sums = group["status"][...], group[CHECKSUM_FIELD][...]
            bad = [int(index) for index in np.flatnonzero(status == STATUS_DONE)
                   if row_checksum(self._stored_row(group, index)) != sums[index]]
            for index in bad:
                group["status"][index] = STATUS_PENDING
            self.recomputed.extend((split, index) for index in bad)
        if self.recomputed:
            split, index = self.recomputed[0]
            example = f[split]["path"][index].decode()
            print(f"warning: {self.partial}: {len(self.recomputed)} rows marked done do not match their "
                  f"checksum (e.g. {split} row {index}, {example}): they were not fully written, and are "
                  f"computed again", file=sys.stderr, flush=True)

    def _create(self) -> None:
        """Create ``.partial`` whole: the layout is written to a temporary file, its blocks
        reserved, and only then renamed, so a kill during creation leaves no half a layout."""
        folder = self.partial.parent
        free = free_bytes(folder)
        needed = RESERVE_BYTES + (estimate_bytes(self.layout, self.shapes) if self.compression == "none" else 0)
        if free is not None and free < needed:
            raise _no_room(self.partial, needed=needed, free=free, doing="the cache")
        # Named for _remove_stale_temporaries; h5py creates it with the umask's mode, as
        # the cache then has.
        tmp = self.partial.with_name(f".{self.partial.name}.{os.getpid()}.tmp")
        try:
            with self._storage("creating the file"):
                with h5py.File(tmp, "w") as f:  # default libver: readable by HDF5 1.10 tools
                    self._write_layout(f)
                self._reserve_blocks(tmp, doing="the cache", shown=self.partial)
                os.replace(tmp, self.partial)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_layout(self, f: h5py.File) -> None:
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

    def _static_fields(self, rows: SplitRows) -> dict[str, np.ndarray]:
        n_clips, n_versions = len(rows.paths), rows.versions + 1
        groups = rows.groups or ("",) * n_clips
        return {
            "path": np.repeat(np.array(rows.paths, dtype=object), n_versions),
            "label": np.repeat(np.asarray(rows.labels, dtype=ROW_FIELDS["label"]), n_versions),
            "clip": np.repeat(np.arange(n_clips, dtype=ROW_FIELDS["clip"]), n_versions),
            "version": np.tile(np.arange(n_versions, dtype=ROW_FIELDS["version"]), n_clips),
            "status": np.full(rows.n_rows, STATUS_PENDING, dtype=ROW_FIELDS["status"]),
            "group": np.repeat(np.array(groups, dtype=object), n_versions),
        }

    def _create_split(self, group: h5py.Group, rows: SplitRows) -> None:
        static = self._static_fields(rows)
        for name, dtype in ROW_FIELDS.items():
            if name in FIXED_TEXT_BYTES:
                # Written whole now, so its storage is allocated (and later reserved) up front.
                fixed = h5py.string_dtype("utf-8", FIXED_TEXT_BYTES[name])
                group.create_dataset(name, data=np.zeros(rows.n_rows, dtype=fixed), dtype=fixed)
            else:
                group.create_dataset(name, data=static[name], dtype=dtype)
        for name, (dtype, _) in OPTIONAL_ROW_FIELDS.items():
            group.create_dataset(name, data=static[name], dtype=dtype)
        group.create_dataset(CHECKSUM_FIELD, data=np.zeros(rows.n_rows, dtype=CHECKSUM_DTYPE))
        features = group.create_group("features")
        for name, shape in self.shapes.items():
            create_feature_dataset(features, name, rows=rows.n_rows, shape=shape,
                                   compression=self.compression)

    def _reserve_blocks(self, path: Path, *, doing: str, shown: Path | None = None) -> None:
        """Reserve disk blocks for the whole file as it is now (every uncompressed chunk is
        allocated in it), so that later data writes cannot meet a full disk."""
        size = path.stat().st_size
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in NO_FALLOCATE_ERRNOS:
                return
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                already = os.fstat(fd).st_blocks * 512
                raise _no_room(shown or path, needed=max(size - already, 0) + RESERVE_BYTES,
                               free=free_bytes(path.parent) or 0, doing=doing) from None
            raise
        finally:
            os.close(fd)

    # -- storage errors ----------------------------------------------------------------
    @contextmanager
    def _storage(self, doing: str):
        """Turn what h5py raises for a refused write into a StorageError naming the file."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            if not is_storage_failure(exc):
                raise
            self._broken = True
            code = error_errno(exc)
            why = STORAGE_ERRNOS.get(code, f"HDF5 could not write it ({str(exc).splitlines()[0][:300]})")
            folder = self.partial.parent
            fix = ("Free some space there" if code in (errno.ENOSPC, errno.EDQUOT)
                   else "Check the disk and the folder")
            raise StorageError(f"cannot write {self.partial} ({doing}): {why}, in {folder}. {fix}, "
                               f"then {RESUME_HINT} (or choose another --out)") from exc

    def check_room(self, extra: int = 0) -> None:
        """Stop, before writing, when fewer than :data:`RESERVE_BYTES` (+ ``extra``) are free."""
        folder = self.partial.parent
        free = free_bytes(folder)
        if free is not None and free < RESERVE_BYTES + extra:
            raise StorageError(
                f"the disk holding {folder} is full: {size_text(free)} free, and the build keeps "
                f"{size_text(RESERVE_BYTES + extra)} for writing {self.partial}, so it stopped before "
                f"writing more. Free some space there, then {RESUME_HINT}")

    # -- progress ----------------------------------------------------------------------
    def pending(self) -> dict[str, dict[int, list[int]]]:
        """split -> clip -> versions still to compute: rows not done (pending, or
        skipped: a file fixed since is computed again)."""
        todo: dict[str, dict[int, list[int]]] = {}
        for split, rows in self.layout.items():
            status = self._file[split]["status"][...].reshape(len(rows.paths), rows.versions + 1)
            clips, versions = np.nonzero(status != STATUS_DONE)
            per_clip: dict[int, list[int]] = {}
            for clip, version in zip(clips.tolist(), versions.tolist()):
                per_clip.setdefault(clip, []).append(version)
            todo[split] = per_clip
        return todo

    def write_rows(self, split: str, clip: int, rows: Sequence[Row]) -> str | None:
        """Store computed rows of source clip ``clip`` of ``split`` and mark them done.

        Parameters
        ----------
        split, clip : the clip's split and its index in that split's ``paths``.
        rows : :data:`Row` tuples ``(version, features, augment, flags)``, one per
            version to store; each feature array has the shape of :attr:`shapes`.

        Returns
        -------
        None, or why the clip was stored as skipped instead: rows holding a NaN or
        infinite value are never stored as done (:func:`non_finite_reason`).
        """
        reason = non_finite_reason(rows)
        if reason is not None:
            self.skip_clip(split, clip, reason)
            return reason
        layout = self._split_rows(split, clip)
        with self._writing(split) as group:
            for version, features, augment, flags in rows:
                index = layout.row(clip, version)
                self._write_row(group, index, features=features, augment=augment, flags=flags)
                self._unflushed.append((split, index, STATUS_DONE))
        return None

    def skip_clip(self, split: str, clip: int, reason: str) -> None:
        """Mark every row of source clip ``clip`` of ``split`` skipped, recording ``reason``.

        A skipped clip is computed again by a resumed build (or ``--retry-skipped``);
        :meth:`skipped` lists it with its reason.
        """
        layout = self._split_rows(split, clip)
        with self._writing(split) as group:
            self._mark_skipped(group, layout, split=split, clip=clip, reason=reason)

    def _split_rows(self, split: str, clip: int) -> SplitRows:
        if split not in self.layout:
            raise ValueError(f"{self.partial} has no split {split!r} (it has {', '.join(self.layout)})")
        layout = self.layout[split]
        if not 0 <= clip < len(layout.paths):
            raise ValueError(f"split {split!r} of {self.partial} has {len(layout.paths)} clips, not a clip {clip}")
        return layout

    @contextmanager
    def _writing(self, split: str):
        """The split's group, for writing one clip; flushed after it."""
        self.check_room(0 if self.compression == "none" else self._clip_bytes(self.layout[split]))
        with self._storage("writing rows"):
            yield self._file[split]
            # Flushed per clip: cheap next to decoding one, and a kill then costs one clip at most.
            self._flush()

    def _clip_bytes(self, rows: SplitRows) -> int:
        per_row = sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes.values())
        return (rows.versions + 1) * per_row * FEATURE_DTYPE.itemsize

    def _write_row(self, group: h5py.Group, index: int, *, features: dict[str, np.ndarray], augment: dict,
                   flags: Sequence[str]) -> None:
        for name, values in features.items():
            if tuple(np.shape(values)) != tuple(self.shapes[name]):
                raise ValueError(f"feature {name} of row {index} has shape {np.shape(values)}, "
                                 f"the file holds {self.shapes[name]}")
            group["features"][name][index] = values
        set_text(group["augment"], index, canonical_json(augment) if augment else "", cut=False)
        set_text(group["flags"], index, ",".join(flags))
        group[CHECKSUM_FIELD][index] = row_checksum(features)

    def _mark_skipped(self, group: h5py.Group, rows: SplitRows, *, split: str, clip: int, reason: str) -> None:
        for version in range(rows.versions + 1):
            index = rows.row(clip, version)
            # Chunks are allocated but never filled; zero them so the file holds no stray bytes.
            for name in self.shapes:
                group["features"][name][index] = 0.0
            set_text(group["augment"], index, "")
            set_text(group["flags"], index, f"skipped: {reason}")
            group[CHECKSUM_FIELD][index] = 0
            self._unflushed.append((split, index, STATUS_SKIPPED))

    def flush(self) -> None:
        """Make written rows durable, then mark them done.

        The data goes out first, so a status of done always means its data is on disk;
        a kill between the two flushes only means those rows are computed again.
        """
        with self._storage("writing rows"):
            self._flush()

    def _flush(self) -> None:
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

    def unusable_splits(self) -> list[str]:
        """Splits in which no row is done (every clip skipped)."""
        return [split for split in self.layout
                if not (self._file[split]["status"][...] == STATUS_DONE).any()]

    def finish(self) -> Path:
        """Record the skipped files, mark complete and rename ``.partial`` to the cache.

        Raises
        ------
        NothingUsable
            A split has no usable clip; the file stays ``.partial``, and a re-run
            computes its skipped clips again.
        """
        self.flush()
        for split in self.layout:
            if (self._file[split]["status"][...] == STATUS_PENDING).any():
                raise RuntimeError(f"cannot finish {self.partial}: split {split!r} has pending rows")
        skipped = self.skipped()
        empty = self.unusable_splits()
        if empty:
            examples = [f"{s['split']}: {s['path']}: {s['reason']}" for s in skipped if s["split"] in empty][:3]
            raise NothingUsable(
                f"no clip of the {', '.join(empty)} split(s) could be decoded, so there is no cache to "
                f"finish; e.g.\n  " + "\n  ".join(examples) + f"\nFix those files (or the split lists), "
                f"then run the same command again: {self.partial} is kept and its skipped clips are "
                f"computed again")
        self.check_room()
        with self._storage("finishing the build"):
            self._file.attrs["n_skipped"] = len(skipped)
            self._file.attrs["skipped"] = canonical_json(skipped[:MAX_SKIPPED_IN_ATTRS])
            self._file.attrs["complete"] = 1
            self._file.close()
        self._file = None
        os.replace(self.partial, self.out)
        return self.out

    def close(self) -> None:
        """Flush what is written and close; after a refused write, just let go of the file."""
        file = self._file
        if file is None:
            return
        try:
            if file.id.valid and not self._broken:
                self.flush()
                file.close()
        finally:
            self._file = None
            if self._broken and file.id.valid:
                _abandon(file)

    def __enter__(self) -> "CacheWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: a second error from closing would only hide the first.
        try:
            self.close()
        except StorageError:
            pass


def _abandon(file: h5py.File) -> None:
    """Close a file whose writes failed without the noise of its half-dead handles.

    After a refused write HDF5 cannot flush that file again; its handles then report
    "Exception ignored" while they are released, which says nothing the StorageError
    did not. What was flushed before the failure stays on disk.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        try:
            file.close()
        except Exception:  # noqa: BLE001 - the write error was already raised
            pass
        del file
        gc.collect()
    finally:
        sys.unraisablehook = previous


def set_text(dset: h5py.Dataset, index: int, text: str, *, cut: bool = True) -> None:
    """Store ``text`` in row ``index`` of a string dataset, fixed-length or not.

    Text longer than a fixed-length field is cut with "..." when ``cut`` (a long reason
    of a skip), and refused otherwise (a record that would no longer parse).
    """
    size = h5py.check_string_dtype(dset.dtype).length
    if size is None:  # a file written before fixed-length fields
        dset[index] = text
        return
    data = text.encode("utf-8")
    if len(data) > size:
        if not cut:
            raise ValueError(f"{dset.name}: {len(data)} bytes do not fit the file's {size}-byte field: {text[:80]}...")
        data = data[:size - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    dset[index] = data
