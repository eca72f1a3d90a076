"""Read a feature cache written in the layout of :mod:`cache.format`.

:class:`FeatureCache` checks that a file is a finished cache of the expected format and
settings, and hands out per-split metadata and feature arrays. Feature arrays come from
one of two backends:

``"memmap"``
    A read-only ``np.memmap`` over the HDF5 file's own chunk offsets. Crops are slices
    of it: no HDF5 call, no copy. Needs uncompressed ``<f4`` data with every chunk
    allocated, which is what the writer produces with ``compression="none"``.
``"h5py"``
    Reads through h5py (works for gzip files too, but is much slower per crop).

Both are opened lazily and pickle without their handles, so they can be handed to
DataLoader workers under the fork, spawn and forkserver start methods; each process
maps or opens the file itself on first use.
"""
from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from cache.format import (FEATURE_DTYPE, FORMAT_VERSION, OPTIONAL_ROW_FIELDS, PARTIAL_SUFFIX,  # noqa: F401
                          REQUIRED_ATTRS, ROW_FIELDS, STATUS_DONE, CacheError, data_fingerprint, feature_path,
                          fingerprint, partial_path, read_root_attrs)

SPLIT_ORDER = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------
# feature arrays


class MemmapArray:
    """Read-only memory map of a ``(rows, *shape)`` float32 feature dataset.

    Parameters
    ----------
    path : str or Path
        The HDF5 file.
    offsets : sequence of int, length ``rows``
        Byte offset in the file of each row (one chunk per row).
    shape : tuple of int
        Shape of one row, e.g. ``(n_mels, frames)``.

    When the offsets are evenly spaced by exactly one row's bytes the rows form one
    block and a single ``(rows, *shape)`` map serves every index; otherwise each row is
    a zero-copy view at its own offset. The map is built on first use in each process.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> f = tempfile.NamedTemporaryFile(suffix=".bin", delete=False)
    >>> np.arange(6, dtype="<f4").tofile(f.name)
    >>> a = MemmapArray(f.name, offsets=[12, 0], shape=(3,))
    >>> a[0].tolist(), a.shape
    ([3.0, 4.0, 5.0], (2, 3))
    """

    backend = "memmap"

    def __init__(self, path, *, offsets: Sequence[int], shape: tuple[int, ...]):
        self.path = str(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.row_shape = tuple(int(n) for n in shape)
        self.dtype = FEATURE_DTYPE
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        steps = np.diff(self.offsets)
        self.contiguous = bool(np.all(steps == self.row_bytes))
        self._block = None  # (rows, *shape) view, contiguous case
        self._raw = None  # uint8 map of the whole file, scattered case

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.offsets), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return len(self.offsets)

    def _map(self):
        if self.contiguous:
            if len(self.offsets) == 0:
                self._block = np.empty(self.shape, dtype=self.dtype)
            else:
                mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=int(self.offsets[0]),
                               shape=self.shape)
                # A plain ndarray view slices faster than the np.memmap subclass and keeps
                # the mapping alive through its base.
                self._block = mm.view(np.ndarray)
        else:
            self._raw = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)

    def row(self, index: int) -> np.ndarray:
        """Zero-copy read-only view of one row, shape ``shape[1:]``."""
        if self._block is None and self._raw is None:
            self._map()
        if self._block is not None:
            return self._block[index]
        offset = int(self.offsets[index])  # IndexError for a bad index, as numpy would
        return self._raw[offset:offset + self.row_bytes].view(self.dtype).reshape(self.row_shape)

    def crop(self, index: int, start: int, stop: int) -> np.ndarray:
        """Zero-copy view of ``row(index)[..., start:stop]`` (last axis is time)."""
        if self._block is not None:  # the per-item hot path: one indexing operation
            return self._block[index, ..., start:stop]
        return self.row(index)[..., start:stop]

    def __getitem__(self, key):
        if self._block is None and self._raw is None:
            self._map()
        if self._block is not None:
            return self._block[key]
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self.row(int(first))[rest]
        rows = [self.row(int(i))[rest] for i in np.arange(len(self))[first]]
        if rows:
            return np.stack(rows)
        return np.empty((0, *np.empty(self.row_shape, self.dtype)[rest].shape), self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Drop this process's mapping; the next read maps the file again."""
        self._block = self._raw = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_block"] = state["_raw"] = None  # a map would pickle as a full copy
        return state

    def __repr__(self) -> str:
        layout = "contiguous" if self.contiguous else "per-row"
        return f"MemmapArray({self.path!r}, shape={self.shape}, {layout})"


class H5Array:
    """Lazily opened h5py reader of one feature dataset, safe to pass to other processes.

    The file is opened on first read in each process (a handle inherited through fork
    is never used) and the handle is dropped when pickled.

    Examples
    --------
    >>> import tempfile, h5py, numpy as np
    >>> name = tempfile.NamedTemporaryFile(suffix=".h5", delete=False).name
    >>> with h5py.File(name, "w") as f:
    ...     _ = f.create_dataset("x", data=np.ones((2, 3), "<f4"))
    >>> H5Array(name, name="x", shape=(2, 3))[1].tolist()
    [1.0, 1.0, 1.0]
    """

    backend = "h5py"

    def __init__(self, path, *, name: str, shape: tuple[int, ...]):
        self.path = str(path)
        self.name = name
        self.shape = tuple(int(n) for n in shape)
        self.row_shape = self.shape[1:]
        self.dtype = FEATURE_DTYPE
        self._file = self._dset = None
        self._pid = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _dataset(self) -> h5py.Dataset:
        if self._pid != os.getpid():
            # Opened in another process (we were forked): that handle is not ours to use.
            self._file = self._dset = None
            self._file = h5py.File(self.path, "r")
            self._dset = self._file[self.name]
            self._pid = os.getpid()
        return self._dset

    def row(self, index: int) -> np.ndarray:
        """One row read into a new array, shape ``shape[1:]``."""
        return self._dataset()[index]

    def crop(self, index: int, start: int, stop: int) -> np.ndarray:
        """``row(index)[..., start:stop]``, reading only that part."""
        return self._dataset()[index, ..., start:stop]

    def __getitem__(self, key):
        return self._dataset()[key]

    def __array__(self, dtype=None, copy=None):
        out = self._dataset()[()]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Close this process's handle; the next read opens the file again."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._dset = self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = state["_dset"] = state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"H5Array({self.path!r}, {self.name!r}, shape={self.shape})"


def memmap_offsets(dset: h5py.Dataset) -> tuple[list[int] | None, str]:
    """Byte offset of each row of a feature dataset, or ``(None, why not)``.

    Memory mapping is only sound when the bytes on disk are the float32 values
    themselves: no filter, little-endian ``<f4``, one row per chunk (or contiguous
    storage), every chunk allocated.
    """
    if dset.dtype.str != FEATURE_DTYPE.str:
        return None, f"dtype is {dset.dtype.str!r}, not {FEATURE_DTYPE.str!r}"
    dcpl = dset.id.get_create_plist()
    if dcpl.get_nfilters():
        return None, f"the data is compressed/filtered ({dset.compression or 'filter'})"
    rows, row_shape = dset.shape[0], dset.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * FEATURE_DTYPE.itemsize
    if dset.chunks is None:
        start = dset.id.get_offset()
        if start is None:
            return None, "its storage is not allocated"
        return [start + i * row_bytes for i in range(rows)], ""
    if tuple(dset.chunks) != (1, *row_shape):
        return None, f"chunks are {dset.chunks}, not one row per chunk {(1, *row_shape)}"
    offsets: list[int | None] = [None] * rows

    def visit(info):
        if info.filter_mask == 0 and info.size == row_bytes and info.byte_offset is not None:
            offsets[info.chunk_offset[0]] = info.byte_offset

    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(visit)
    else:  # HDF5 builds without H5Dchunk_iter
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))
    missing = sum(o is None for o in offsets)
    if missing:
        return None, f"{missing} of {rows} chunks are not allocated"
    return offsets, ""


ARRAY_BACKENDS = {
    "memmap": MemmapArray,
    "h5py": H5Array,
}
BACKEND_CHOICES = ("auto", *ARRAY_BACKENDS)


# ---------------------------------------------------------------------------------------
# the cache


def _read_field(dset: h5py.Dataset, dtype) -> np.ndarray:
    if h5py.check_string_dtype(dtype) is not None:
        return np.asarray(dset.asstr()[()], dtype=str)
    return dset[()]


class FeatureCache:
    """A finished feature cache file, checked on opening.

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file written by ``build_cache.py``.
    expect_fingerprint : str, optional
        Refuse the file unless it was built with settings of this fingerprint.
    expect_labels : sequence of str, optional
        Refuse the file unless its labels are exactly these, in this order.

    Raises
    ------
    CacheError
        Missing file, unfinished build, other format version, settings that do not
        match their fingerprint, or a fingerprint/labels mismatch with the expectations.

    Attributes
    ----------
    path : Path
    settings : dict
        The build settings (parsed from the ``settings`` attribute).
    fingerprint : str
        ``cache.format.fingerprint(settings)``.
    data_fingerprint : str
        ``cache.format.data_fingerprint(settings)``: equal for caches of the same clips
        and labels, whatever their features or augmentation.
    labels : tuple of str
        Class names; the ``label`` row field indexes this.
    sample_rate : int
    features : tuple of str
        Feature names, e.g. ``("mel",)``.
    splits : tuple of str
        Split groups present, ``train``/``valid``/``test`` first.
    attrs : dict
        Every root attribute as stored.

    No HDF5 handle is held between calls, so the object pickles cheaply and can be
    sent to other processes.

    Examples
    --------
    >>> cache = FeatureCache("cache.h5")                      # doctest: +SKIP
    >>> mel = cache.array("train", "mel")  # (rows, n_mels, frames)  # doctest: +SKIP
    >>> crop = mel[cache.done_rows("train")[0], :, 0:128]     # doctest: +SKIP
    """

    def __init__(self, path, *, expect_fingerprint: str | None = None,
                 expect_labels: Sequence[str] | None = None):
        self.path = Path(path)
        self._check_exists()
        attrs, splits = self._read_root()
        root = self._check_attrs(attrs)
        self.settings: dict = root.settings
        self.fingerprint: str = root.fingerprint
        if fingerprint(self.settings) != self.fingerprint:
            raise CacheError(
                f"cache {self.path}: its settings do not match its stored fingerprint, so the "
                f"file was edited or is corrupt; rebuild it with build_cache.py --overwrite")
        self.data_fingerprint: str = data_fingerprint(self.settings)
        self.labels: tuple[str, ...] = tuple(root.labels)
        if "labels" in self.settings and tuple(self.settings["labels"]) != self.labels:
            raise CacheError(f"cache {self.path}: the labels attribute {list(self.labels)} "
                             f"differs from the settings' labels {self.settings['labels']} "
                             f"(corrupt file); rebuild it with build_cache.py --overwrite")
        self.sample_rate: int = root.sample_rate
        self.features: tuple[str, ...] = tuple(self.settings.get("features", {}))
        self.splits: tuple[str, ...] = splits
        self.attrs: dict = {key: attrs[key] for key in attrs}
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self._arrays = weakref.WeakSet()  # arrays handed out, for close()
        self._check_expectations(expect_fingerprint, expect_labels)

    # -- checks done on opening ---------------------------------------------------------

    def _check_exists(self) -> None:
        if self.path.name.endswith(PARTIAL_SUFFIX):
            raise CacheError(
                f"cache {self.path} is an unfinished build; re-run the same build_cache.py "
                f"command to resume it (it is renamed without {PARTIAL_SUFFIX!r} when done)")
        if self.path.exists():
            return
        partial = partial_path(self.path)
        if partial.exists():
            raise CacheError(
                f"cache {self.path} is not finished ({partial} exists); re-run the same "
                f"build_cache.py command to resume the build")
        raise CacheError(f"cache file {self.path} does not exist; build it with build_cache.py "
                         f"(see python build_cache.py --help) or fix the path")

    def _read_root(self) -> tuple[dict, tuple[str, ...]]:
        try:
            with h5py.File(self.path, "r") as f:
                attrs = {key: f.attrs[key] for key in f.attrs}
                groups = [name for name, item in f.items() if isinstance(item, h5py.Group)]
        except OSError as err:
            raise CacheError(f"cache {self.path} is not a readable HDF5 file ({err}); "
                             f"rebuild it with build_cache.py --overwrite") from err
        known = [s for s in SPLIT_ORDER if s in groups]
        return attrs, tuple(known + sorted(set(groups) - set(known)))

    def _check_attrs(self, attrs: dict):
        root = read_root_attrs(attrs, path=self.path)
        version = root.format_version
        if version != FORMAT_VERSION:
            age = "an older" if version < FORMAT_VERSION else "a newer"
            raise CacheError(
                f"cache {self.path} uses {age} format (version {version}; this code reads "
                f"version {FORMAT_VERSION}); rebuild it with build_cache.py --overwrite"
                + ("" if version < FORMAT_VERSION else " or update this code"))
        if not root.complete:
            # build_cache.py resumes an unfinished file at the final path as it does a .partial.
            raise CacheError(
                f"cache {self.path} is an unfinished build (complete=0); re-run the same "
                f"build_cache.py command to resume it, or add --overwrite to start it again")
        return root

    def _check_expectations(self, expect_fingerprint, expect_labels) -> None:
        if expect_fingerprint is not None and expect_fingerprint != self.fingerprint:
            raise CacheError(
                f"cache {self.path} was built with other settings (fingerprint "
                f"{self.fingerprint[:12]}…, expected {expect_fingerprint[:12]}…); rebuild it "
                f"with the current settings (build_cache.py --overwrite) or use a matching cache")
        if expect_labels is not None and tuple(expect_labels) != self.labels:
            raise CacheError(f"cache {self.path} has other labels than expected: "
                             f"{_label_difference(self.labels, tuple(expect_labels))}; rebuild "
                             f"it with these labels (build_cache.py --overwrite)")

    # -- metadata -----------------------------------------------------------------------

    def feature_settings(self, feature: str) -> dict:
        """The settings the feature was computed with (``kind``, ``frames_per_second``, ...)."""
        if feature not in self.features:
            raise CacheError(
                f"cache {self.path} has no feature {feature!r} (available: "
                f"{', '.join(self.features) or 'none'}); rebuild it with build_cache.py "
                f"--features including {feature!r}, or pick an available one")
        return dict(self.settings["features"][feature])

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise CacheError(f"cache {self.path} has no split {split!r} (available: "
                             f"{', '.join(self.splits) or 'none'})")

    def rows(self, split: str) -> dict[str, np.ndarray]:
        """Row metadata of a split: ``{field: (rows,) array}`` for every field of
        ``cache.format.ROW_FIELDS`` and ``OPTIONAL_ROW_FIELDS``; strings come back as
        ``str`` arrays. A file written before an optional field existed gives its
        default for every row (``group``: "").

        The arrays are read once and cached; do not modify them.
        """
        self._check_split(split)
        if split not in self._rows:
            self._rows[split] = self._read_rows(split)
        return self._rows[split]

    def _read_rows(self, split: str) -> dict[str, np.ndarray]:
        out = {}
        with h5py.File(self.path, "r") as f:
            group = f[split]
            for name, dtype in ROW_FIELDS.items():
                if name not in group:
                    raise CacheError(f"cache {self.path}: split {split!r} lacks the {name!r} "
                                     f"dataset (corrupt file); rebuild with build_cache.py "
                                     f"--overwrite")
                out[name] = _read_field(group[name], dtype)
            n_rows = len(out["status"])
            for name, (dtype, default) in OPTIONAL_ROW_FIELDS.items():
                out[name] = _read_field(group[name], dtype) if name in group else \
                    np.full(n_rows, default, dtype=str if isinstance(default, str) else dtype)
        return out

    def done_rows(self, split: str) -> np.ndarray:
        """Indices (int64, ascending) of the rows of ``split`` whose status is done."""
        return np.flatnonzero(self.rows(split)["status"] == STATUS_DONE)

    # -- feature data -------------------------------------------------------------------

    def array(self, split: str, feature: str, *, backend: str = "auto"):
        """The ``(rows, *shape)`` feature array of a split.

        Parameters
        ----------
        backend : {"auto", "memmap", "h5py"}
            ``"auto"`` memory-maps when the dataset allows it (uncompressed) and falls
            back to h5py otherwise.

        Returns
        -------
        MemmapArray or H5Array
            Lazily opened, picklable; index it like a numpy array, or use
            ``.row(i)`` / ``.crop(i, start, stop)``.
        """
        if backend not in BACKEND_CHOICES:
            raise CacheError(f"backend={backend!r} is not one of {BACKEND_CHOICES}")
        self.feature_settings(feature)
        self._check_split(split)
        name = feature_path(split, feature)
        with h5py.File(self.path, "r") as f:
            if name not in f:
                raise CacheError(f"cache {self.path} lists feature {feature!r} but has no "
                                 f"{name!r} dataset (corrupt file); rebuild with build_cache.py "
                                 f"--overwrite")
            dset = f[name]
            shape = dset.shape
            offsets, why_not = (None, "h5py backend asked for") if backend == "h5py" \
                else memmap_offsets(dset)
        if offsets is None and backend == "memmap":
            raise CacheError(f"cache {self.path}: {name} cannot be memory-mapped because "
                             f"{why_not}; use backend='h5py' or 'auto', or rebuild with "
                             f"build_cache.py --compression none")
        if offsets is None:
            array = build_array("h5py", self.path, name=name, shape=shape)
        else:
            array = build_array("memmap", self.path, offsets=offsets, shape=shape[1:])
        self._arrays.add(array)
        return array

    def close(self) -> None:
        """Release maps/handles of the arrays handed out (they reopen if read again)."""
        for array in list(self._arrays):
            array.close()
        self._arrays = weakref.WeakSet()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_arrays"]  # those arrays pickle themselves where they are referenced
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arrays = weakref.WeakSet()

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, features={self.features}, "
                f"splits={self.splits}, labels={len(self.labels)})")


def build_array(backend: str, path, **kwargs):
    """Build a feature array reader by backend name (``"memmap"`` or ``"h5py"``).

    ``memmap`` takes ``offsets=`` and ``shape=`` (of one row); ``h5py`` takes ``name=``
    (dataset path) and ``shape=`` (of the whole dataset).
    """
    if backend not in ARRAY_BACKENDS:
        raise CacheError(f"array backend {backend!r} is not one of {tuple(ARRAY_BACKENDS)}")
    return ARRAY_BACKENDS[backend](path, **kwargs)


def _label_difference(found: tuple[str, ...], expected: tuple[str, ...]) -> str:
    missing = [x for x in expected if x not in found]
    extra = [x for x in found if x not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        parts.append(f"same labels in another order ({list(found)} vs expected {list(expected)})")
    return ", ".join(parts)
