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
        flags    (rows,)      str    loader flags, e.g. "padded,short" ("" when none), or
                                     "skipped: <why>"
        status   (rows,)      int8   0 pending, 1 done, -1 skipped (undecodable source)
        group    (rows,)      str    the clip's group (e.g. its track) from tracks.tsv, "" if none
        checksum (rows,)      uint32 CRC-32 of the row's feature bytes (features by name), 0 if not done
        features/<name>  (rows, *shape)  float32 little-endian, one row per chunk

``augment`` and ``flags`` are the only fields written row by row with text; the
writer stores them as fixed-length UTF-8 (:data:`FIXED_TEXT_BYTES`), so that writing a
row never grows HDF5's string heap: once the file's blocks are reserved, nothing the
build writes needs more disk. Files written before hold them as variable-length
strings; readers take both.

``group`` and ``checksum`` came later in format 1: files written before lack them, a
reader sees every ``group`` as "" (:data:`OPTIONAL_ROW_FIELDS`), and the writer adds
both when it resumes such a file. A resumed build recomputes every row marked done
whose bytes no longer match its checksum (a disk that filled up, a damaged copy).

Row ``clip * (versions + 1) + version`` belongs to that clip and version, so where a
row lands does not depend on which worker finished first: a resumed or parallel
build gives the same file as a serial one.

Feature datasets are allocated at creation (``H5D_ALLOC_TIME_EARLY``): every chunk
has a file offset from the start, so a reader can memory-map rows of a file whose
skipped rows were never written, and writing data never changes file metadata
(which is what makes a SIGKILL mid-build survivable). The writer then reserves the
file's blocks (``posix_fallocate``), so a disk that fills up later cannot fail a data
write half-way.

Only plain numeric types and variable-length UTF-8 strings are used, with the
default libver, so Debian's HDF5 1.10 tools (``h5ls -r``, ``h5dump -A``) read it all.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.errors import UserError

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

# Bytes of the row fields the writer fills in row by row (stored as fixed-length UTF-8).
# The longest augmentation record of all five effects is about 900 bytes.
FIXED_TEXT_BYTES = {"augment": 2048, "flags": 1024}

# Row fields added after the first files of format 1 -> (dtype, value of a file without them).
OPTIONAL_ROW_FIELDS = {
    "group": (h5py.string_dtype(), ""),
}
# The writer's own per-row field; readers do not need it.
CHECKSUM_FIELD = "checksum"
CHECKSUM_DTYPE = np.dtype("<u4")

COMPRESSIONS = ("none", "gzip")

# Root attributes the writer always sets; a file without them is not a cache.
REQUIRED_ATTRS = ("format_version", "complete", "fingerprint", "settings", "labels", "sample_rate")
REBUILD_HINT = "rebuild it with build_cache.py --overwrite"
# A build writes ``<out>.partial`` and renames it to ``<out>`` once every row is done or skipped.
PARTIAL_SUFFIX = ".partial"


class CacheError(UserError):
    """A cache file that cannot be used as asked; the message says how to fix it."""


@dataclass(frozen=True)
class RootAttrs:
    """The root attributes every cache has, checked for type.

    Attributes
    ----------
    format_version : int
    complete : bool
        True once every row is done or skipped and the file has its final name.
    fingerprint : str
    settings : dict
        Parsed from the ``settings`` JSON attribute.
    labels : list of str
        Parsed from the ``labels`` JSON attribute.
    sample_rate : int
    """
    format_version: int
    complete: bool
    fingerprint: str
    settings: dict
    labels: list
    sample_rate: int


def _bad_attr(path, key: str, value, expected: str) -> CacheError:
    shown = repr(value if not isinstance(value, bytes) else value.decode("utf-8", "replace"))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CacheError(f"cache {path}: its root attribute {key!r} is {shown}, not {expected}, so the "
                      f"file is damaged or was edited; {REBUILD_HINT}")


def _int_attr(attrs, key: str, path, *, expected: str = "an integer") -> int:
    value = attrs[key]
    if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _bad_attr(path, key, value, expected)
    return int(value)


def _text_attr(attrs, key: str, path) -> str:
    value = attrs[key]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_attr(path, key, value, "UTF-8 text") from None
    if not isinstance(value, str):
        raise _bad_attr(path, key, value, "text")
    return value


def _json_attr(attrs, key: str, path, *, kind: type, expected: str):
    text = _text_attr(attrs, key, path)
    try:
        value = json.loads(text)
    except ValueError:
        raise _bad_attr(path, key, text, expected) from None
    if not isinstance(value, kind):
        raise _bad_attr(path, key, text, expected)
    return value


def read_root_attrs(attrs, *, path) -> RootAttrs:
    """The checked root attributes of a cache file (``attrs``: its ``f.attrs`` or a dict).

    Raises
    ------
    CacheError
        Naming the first attribute that is missing or of the wrong type.

    Examples
    --------
    >>> attrs = {"format_version": 1, "complete": "yes", "fingerprint": "0", "settings": "{}",
    ...          "labels": "[]", "sample_rate": 22050}
    >>> try:
    ...     read_root_attrs(attrs, path="c.h5")
    ... except CacheError as exc:
    ...     print(str(exc)[:62])
    cache c.h5: its root attribute 'complete' is 'yes', not 0 or 1
    """
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise CacheError(f"{path} is not a feature cache (missing root attributes {missing}); "
                         f"build one with build_cache.py")
    version = _int_attr(attrs, "format_version", path)
    flag = attrs["complete"]
    complete = int(flag) if isinstance(flag, (bool, np.bool_)) else \
        _int_attr(attrs, "complete", path, expected="0 or 1")
    if complete not in (0, 1):
        raise _bad_attr(path, "complete", attrs["complete"], "0 or 1")
    labels = _json_attr(attrs, "labels", path, kind=list, expected="a JSON list of genre names")
    if not all(isinstance(label, str) for label in labels):
        raise _bad_attr(path, "labels", attrs["labels"], "a JSON list of genre names")
    sample_rate = _int_attr(attrs, "sample_rate", path, expected="a positive integer")
    if sample_rate <= 0:
        raise _bad_attr(path, "sample_rate", attrs["sample_rate"], "a positive integer")
    return RootAttrs(format_version=version, complete=bool(complete),
                     fingerprint=_text_attr(attrs, "fingerprint", path),
                     settings=_json_attr(attrs, "settings", path, kind=dict, expected="a JSON object"),
                     labels=labels, sample_rate=sample_rate)


def row_checksum(features: dict[str, np.ndarray]) -> int:
    """CRC-32 of one row's feature values as stored (``<f4``), features in name order.

    >>> row_checksum({"mel": np.zeros(3, "<f4")}) == row_checksum({"mel": np.zeros(3)})
    True
    """
    crc = 0
    for name in sorted(features):
        crc = zlib.crc32(np.ascontiguousarray(features[name], dtype=FEATURE_DTYPE).data, crc)
    return crc


def canonical_json(value) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# What the cache adds to a feature's own settings (its constructor's arguments) to
# describe the rows it stored: readers need them without rebuilding the feature.
# "feature" (the registry name that computed it) is stored only for a named variant,
# whose name is not a registry name (e.g. "mel_fine" computed by "mel"), so that the
# entries (and fingerprints) of caches without variants stay as they were.
DESCRIPTION_KEYS = ("kind", "frames_per_second", "shape", "feature")


def describe_feature(settings: dict, *, kind: str, frames_per_second: float, shape,
                     name: str | None = None, base: str | None = None) -> dict:
    """A feature's entry in the cache's settings: its own settings plus the row description.

    ``name`` is what the cache calls it and ``base`` the registry name that computes it;
    ``base`` is recorded only when the two differ (a named variant).

    >>> describe_feature({"sr": 22050, "hop_length": 512}, kind="spectrogram",
    ...                  frames_per_second=43.07, shape=(128, 1292))["shape"]
    [128, 1292]
    >>> describe_feature({"sr": 22050}, kind="spectrogram", frames_per_second=86.1, shape=(128, 2583),
    ...                  name="mel_fine", base="mel")["feature"]
    'mel'
    """
    entry = {**settings, "kind": kind, "frames_per_second": frames_per_second, "shape": list(shape)}
    if base is not None and base != name:
        entry["feature"] = base
    return entry


def feature_base(name: str, stored: dict) -> str:
    """The registry name that computed the cached feature ``name`` (itself, unless a variant).

    >>> feature_base("mel", {"sr": 22050}), feature_base("mel_fine", {"feature": "mel"})
    ('mel', 'mel')
    """
    return stored.get("feature", name)


def feature_arguments(stored: dict) -> dict:
    """The feature's own settings from its stored entry (the inverse of :func:`describe_feature`).

    >>> feature_arguments({"sr": 22050, "kind": "waveform", "frames_per_second": 22050.0, "shape": [5]})
    {'sr': 22050}
    """
    return {key: value for key, value in stored.items() if key not in DESCRIPTION_KEYS}


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


def partial_path(out) -> Path:
    """Where the cache ``out`` is built: ``<out>.partial``.

    >>> partial_path("runs/cache.h5").name
    'cache.h5.partial'
    """
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def feature_path(split: str, feature: str) -> str:
    """Path of a feature dataset inside the file, e.g. ``train/features/mel``."""
    return f"{split}/{FEATURE_GROUP}/{feature}"


def create_feature_dataset(group: h5py.Group, name: str, *, rows: int, shape: tuple[int, ...],
                           compression: str = "none") -> h5py.Dataset:
    """Create a ``(rows, *shape)`` float32 dataset with one row per chunk.

    Uncompressed datasets get every chunk allocated up front (see module doc).
    """
    if compression not in COMPRESSIONS:
        raise UserError(f"compression={compression!r} is not one of {COMPRESSIONS}")
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
