"""The HDF5 cache format: names, layout and the settings fingerprint.

One file holds every feature of every split::

    /                         attrs: format_version, complete, fingerprint, settings (JSON),
                              labels (JSON), sample_rate, duration, skipped (JSON), ...
    /<split>/                 one group per split ("train", "valid", "test")
        path     (rows,)      str    listed path of the source clip ("blues/blues.00029.wav")
        label    (rows,)      int16  index into the labels attribute
        clip     (rows,)      int32  index of the source clip in the split list
        version  (rows,)      int16  0 = original audio, 1..K = augmented copy
        augment  (rows,)      str    JSON of the effects applied ("" for version 0)
        flags    (rows,)      str    loader flags, e.g. "padded,short" ("" when none)
        status   (rows,)      int8   0 pending, 1 done, -1 skipped (undecodable source)
        features/<name>  (rows, *shape)  float32 little-endian, one row per chunk

Row ``clip * (versions + 1) + version`` belongs to that clip and version, so where a
row lands does not depend on which worker finished first: a resumed or parallel
build gives the same file as a serial one.

Feature datasets are allocated at creation (``H5D_ALLOC_TIME_EARLY``): every chunk
has a file offset from the start, so a reader can memory-map rows of a file whose
skipped rows were never written, and writing data never changes file metadata
(which is what makes a SIGKILL mid-build survivable).

Only plain numeric types and variable-length UTF-8 strings are used, with the
default libver, so Debian's HDF5 1.10 tools (``h5ls -r``, ``h5dump -A``) read it all.
"""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np

FORMAT_VERSION = 1
FEATURE_GROUP = "features"
FEATURE_DTYPE = np.dtype("<f4")

STATUS_PENDING = 0
STATUS_DONE = 1
STATUS_SKIPPED = -1

# name -> dtype of the per-row metadata datasets of a split group
ROW_FIELDS = {
    "path": h5py.string_dtype(),
    "label": np.dtype("<i2"),
    "clip": np.dtype("<i4"),
    "version": np.dtype("<i2"),
    "augment": h5py.string_dtype(),
    "flags": h5py.string_dtype(),
    "status": np.dtype("i1"),
}

COMPRESSIONS = ("none", "gzip")


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint(settings: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a cache's settings.

    >>> fingerprint({"a": 1}) == fingerprint({"a": 1})
    True
    """
    return hashlib.sha256(canonical_json(settings).encode("utf-8")).hexdigest()


def data_fingerprint(settings: dict) -> str:
    """SHA-256 (hex) of what a cache's clips are: labels, sample rate, duration and split lists.

    Caches that differ only in features or augmentation share it, so runs trained on
    them are scored on the same valid and test clips and can be compared.
    """
    keys = ("labels", "sample_rate", "duration", "sources")
    return fingerprint({key: settings.get(key) for key in keys})


def feature_path(split: str, feature: str) -> str:
    """Path of a feature dataset inside the file, e.g. ``train/features/mel``."""
    return f"{split}/{FEATURE_GROUP}/{feature}"


def create_feature_dataset(group: h5py.Group, name: str, *, rows: int, shape: tuple[int, ...],
                           compression: str = "none") -> h5py.Dataset:
    """Create a ``(rows, *shape)`` float32 dataset with one row per chunk.

    Uncompressed datasets get every chunk allocated up front (see module doc).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression={compression!r} is not one of {COMPRESSIONS}")
    chunks = (1, *shape)
    if compression == "gzip":
        return group.create_dataset(name, shape=(rows, *shape), dtype=FEATURE_DTYPE, chunks=chunks,
                                    compression="gzip", compression_opts=4, shuffle=True)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    # Skipped rows are overwritten with zeros explicitly, so no fill pass is needed.
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=(rows, *shape), dtype=FEATURE_DTYPE, chunks=chunks,
                                dcpl=dcpl)
