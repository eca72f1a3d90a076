"""Tests of cache.reader on tiny cache files written here with h5py per cache.format."""
from __future__ import annotations

import json
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from cache.format import (FORMAT_VERSION, OPTIONAL_ROW_FIELDS, ROW_FIELDS, STATUS_DONE, STATUS_SKIPPED,
                          canonical_json, create_feature_dataset, feature_path, fingerprint)
from cache.reader import CacheError, FeatureCache, H5Array, MemmapArray

LABELS = ("blues", "jazz", "rock")
SAMPLE_RATE = 200
DURATION = 2.0
N_BINS, FRAMES_PER_SECOND = 6, 20
FRAMES = int(DURATION * FRAMES_PER_SECOND)  # 40
SAMPLES = int(DURATION * SAMPLE_RATE)  # 400
ROW_SHAPES = {"mel": (N_BINS, FRAMES), "wave": (SAMPLES,)}
CLIPS = {"train": 4, "valid": 2, "test": 3}


def make_settings(*, versions: int, labels=LABELS) -> dict:
    """Build settings shaped like the writer's, for a tiny two-feature cache."""
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "duration": DURATION,
        "labels": list(labels),
        "features": {
            "mel": {"kind": "spectrogram", "frames_per_second": FRAMES_PER_SECOND,
                    "n_mels": N_BINS},
            "wave": {"kind": "waveform", "frames_per_second": SAMPLE_RATE},
        },
        "augment": {"versions": versions},
    }


def write_cache(path, *, clips=CLIPS, versions: int = 1, compression: str = "none",
                skipped=(), complete: int = 1, format_version: int = FORMAT_VERSION,
                labels=LABELS, seed: int = 0) -> dict:
    """Write a finished tiny cache following cache/format.py; return what was written.

    ``skipped`` holds ``(split, clip)`` pairs whose rows are all marked skipped (zeros),
    as the writer does for undecodable sources. Returns
    ``{split: {"rows": {field: array}, "mel": array, "wave": array}}``.
    """
    rng = np.random.default_rng(seed)
    settings = make_settings(versions=versions, labels=labels)
    written = {}
    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = format_version
        f.attrs["complete"] = complete
        f.attrs["settings"] = canonical_json(settings)
        f.attrs["fingerprint"] = fingerprint(settings)
        f.attrs["labels"] = json.dumps(list(labels))
        f.attrs["sample_rate"] = SAMPLE_RATE
        f.attrs["duration"] = DURATION
        f.attrs["skipped"] = json.dumps([f"{s}/{c}" for s, c in skipped])
        for split, n_clips in clips.items():
            n_rows = n_clips * (versions + 1)
            clip = np.arange(n_rows) // (versions + 1)
            label = clip % len(labels)
            bad = np.isin(clip, [c for s, c in skipped if s == split])
            rows = {
                "path": np.array([f"{labels[l]}/{labels[l]}.{c:05d}.wav"
                                  for c, l in zip(clip, label)]),
                "label": label.astype(ROW_FIELDS["label"]),
                "clip": clip.astype(ROW_FIELDS["clip"]),
                "version": (np.arange(n_rows) % (versions + 1)).astype(ROW_FIELDS["version"]),
                "augment": np.array(["" if v == 0 else json.dumps({"gain_db": float(v)})
                                     for v in np.arange(n_rows) % (versions + 1)]),
                "flags": np.array(["padded,short" if c == 1 else "" for c in clip]),
                "status": np.where(bad, STATUS_SKIPPED, STATUS_DONE).astype(ROW_FIELDS["status"]),
            }
            group = f.create_group(split)
            for name, dtype in ROW_FIELDS.items():
                group.create_dataset(name, data=rows[name].astype(object) if
                                     h5py.check_string_dtype(dtype) else rows[name], dtype=dtype)
            features = group.create_group("features")
            written[split] = {"rows": rows}
            for name, shape in ROW_SHAPES.items():
                data = rng.standard_normal((n_rows, *shape)).astype("<f4") * 3 + 1
                data[bad] = 0
                dset = create_feature_dataset(features, name, rows=n_rows, shape=shape,
                                              compression=compression)
                for r in range(n_rows):  # row by row, like the writer
                    dset[r] = data[r]
                written[split][name] = data
    return written


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "cache.h5"
    return path, write_cache(path, skipped=[("train", 2)])


@pytest.fixture
def gzipped(tmp_path):
    path = tmp_path / "cache_gzip.h5"
    return path, write_cache(path, compression="gzip", skipped=[("train", 2)])


def _edit_attrs(path, **attrs):
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value


# -- opening and metadata ----------------------------------------------------------------


def test_metadata(plain):
    path, written = plain
    cache = FeatureCache(path, expect_labels=LABELS,
                         expect_fingerprint=fingerprint(make_settings(versions=1)))
    assert cache.labels == LABELS
    assert cache.features == ("mel", "wave")
    assert cache.splits == ("train", "valid", "test")
    assert cache.sample_rate == SAMPLE_RATE
    assert cache.feature_settings("mel")["kind"] == "spectrogram"
    rows = cache.rows("train")
    # Files written before the optional fields existed (as write_cache does) read with defaults.
    assert set(rows) == set(ROW_FIELDS) | set(OPTIONAL_ROW_FIELDS)
    assert rows["group"].tolist() == [""] * len(rows["status"])
    for name, expected in written["train"]["rows"].items():
        np.testing.assert_array_equal(rows[name], expected)
    assert rows["path"].dtype.kind == "U" and rows["augment"].dtype.kind == "U"
    skipped = written["train"]["rows"]["clip"] == 2
    np.testing.assert_array_equal(cache.done_rows("train"), np.flatnonzero(~skipped))


@pytest.mark.parametrize("feature", sorted(ROW_SHAPES))
def test_memmap_equals_h5py(plain, feature):
    path, written = plain
    cache = FeatureCache(path)
    for split in CLIPS:
        mapped = cache.array(split, feature, backend="memmap")
        auto = cache.array(split, feature)
        via_h5py = cache.array(split, feature, backend="h5py")
        assert isinstance(mapped, MemmapArray) and isinstance(auto, MemmapArray)
        assert isinstance(via_h5py, H5Array)
        with h5py.File(path, "r") as f:
            direct = f[feature_path(split, feature)][()]
        assert mapped.shape == direct.shape == via_h5py.shape
        np.testing.assert_array_equal(np.asarray(mapped), direct)
        np.testing.assert_array_equal(np.asarray(via_h5py), direct)
        np.testing.assert_array_equal(direct, written[split][feature])
        row = mapped.row(1)
        assert not row.flags.writeable and not row.flags.owndata  # a view into the map
        np.testing.assert_array_equal(mapped.crop(1, 3, 9), direct[1, ..., 3:9])
        np.testing.assert_array_equal(via_h5py.crop(1, 3, 9), direct[1, ..., 3:9])
    cache.close()


def test_gzip_falls_back_to_h5py(gzipped):
    path, written = gzipped
    cache = FeatureCache(path)
    for feature in ROW_SHAPES:
        array = cache.array("train", feature)
        assert isinstance(array, H5Array)
        np.testing.assert_array_equal(np.asarray(array), written["train"][feature])
        np.testing.assert_array_equal(array.crop(3, 5, 20),
                                      written["train"][feature][3, ..., 5:20])
    with pytest.raises(CacheError, match="compressed") as err:
        cache.array("train", "mel", backend="memmap")
    assert str(path) in str(err.value) and "h5py" in str(err.value)


def test_memmap_rows_at_scattered_offsets(tmp_path):
    """Rows whose chunks are not one evenly spaced block get per-row views."""
    data = np.random.default_rng(1).standard_normal((3, 2, 5)).astype("<f4")
    raw = tmp_path / "raw.bin"
    header = 24
    # rows stored in the order 2, 0, 1 after a header, with a gap before the last one
    with open(raw, "wb") as out:
        out.write(b"\0" * header)
        out.write(data[2].tobytes() + data[0].tobytes() + b"\0" * 8 + data[1].tobytes())
    row_bytes = data[0].nbytes
    array = MemmapArray(raw, offsets=[header + row_bytes, header + 2 * row_bytes + 8, header],
                        shape=(2, 5))
    assert not array.contiguous
    np.testing.assert_array_equal(np.asarray(array), data)
    np.testing.assert_array_equal(array[1, :, 2:4], data[1, :, 2:4])
    np.testing.assert_array_equal(array[[2, 0]], data[[2, 0]])
    np.testing.assert_array_equal(array[5:], data[5:])
    np.testing.assert_array_equal(array.crop(0, 1, 3), data[0, :, 1:3])
    assert not array.row(2).flags.owndata
    with pytest.raises(IndexError):
        array.row(3)
    clone = pickle.loads(pickle.dumps(array))
    np.testing.assert_array_equal(clone[2], data[2])


# -- refusals ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CacheError, match="build_cache.py") as err:
        FeatureCache(tmp_path / "nope.h5")
    assert "nope.h5" in str(err.value)


def test_missing_file_with_partial_build(tmp_path):
    write_cache(tmp_path / "cache.h5.partial", complete=0)
    with pytest.raises(CacheError, match="resume"):
        FeatureCache(tmp_path / "cache.h5")


def test_partial_file(tmp_path):
    path = tmp_path / "cache.h5.partial"
    write_cache(path, complete=1)
    with pytest.raises(CacheError, match="unfinished") as err:
        FeatureCache(path)
    assert "re-run the same build_cache.py" in str(err.value)


def test_incomplete_file(plain):
    path, _ = plain
    _edit_attrs(path, complete=0)
    with pytest.raises(CacheError, match="unfinished.*resume"):
        FeatureCache(path)


@pytest.mark.parametrize("version,age", [(FORMAT_VERSION - 1, "older"),
                                         (FORMAT_VERSION + 1, "newer")])
def test_wrong_format_version(tmp_path, version, age):
    path = tmp_path / "cache.h5"
    write_cache(path, format_version=version)
    with pytest.raises(CacheError, match=f"{age} format.*rebuild"):
        FeatureCache(path)


def test_tampered_settings(plain):
    path, _ = plain
    settings = make_settings(versions=1)
    settings["sample_rate"] = 44100
    _edit_attrs(path, settings=canonical_json(settings))
    with pytest.raises(CacheError, match="fingerprint.*edited or is corrupt"):
        FeatureCache(path)


def test_expected_fingerprint_mismatch(plain):
    path, _ = plain
    other = fingerprint(make_settings(versions=3))
    with pytest.raises(CacheError, match="other settings") as err:
        FeatureCache(path, expect_fingerprint=other)
    assert other[:12] in str(err.value)


@pytest.mark.parametrize("expected,says", [
    (("blues", "jazz", "rock", "metal"), "missing \\['metal'\\]"),
    (("blues", "jazz"), "unexpected \\['rock'\\]"),
    (("jazz", "blues", "rock"), "another order"),
])
def test_expected_labels_mismatch(plain, expected, says):
    path, _ = plain
    with pytest.raises(CacheError, match=says):
        FeatureCache(path, expect_labels=expected)


def test_missing_feature_lists_available(plain):
    path, _ = plain
    cache = FeatureCache(path)
    with pytest.raises(CacheError, match="no feature 'mfcc'.*available: mel, wave.*--features"):
        cache.feature_settings("mfcc")
    with pytest.raises(CacheError, match="available: mel, wave"):
        cache.array("train", "mfcc")


def test_unknown_split_and_backend(plain):
    path, _ = plain
    cache = FeatureCache(path)
    with pytest.raises(CacheError, match="no split 'dev'.*train, valid, test"):
        cache.rows("dev")
    with pytest.raises(ValueError, match="backend='zarr'.*memmap"):
        cache.array("train", "mel", backend="zarr")


def test_not_a_cache(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="not a readable HDF5 file"):
        FeatureCache(junk)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(CacheError, match="not a feature cache"):
        FeatureCache(empty)


# -- pickling --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memmap", "h5py"])
def test_pickle_round_trip(plain, backend):
    path, written = plain
    cache = FeatureCache(path)
    array = cache.array("train", "mel", backend=backend)
    first = np.array(array[0])  # opens the map / file in this process
    blob = pickle.dumps((cache, array))
    assert len(blob) < written["train"]["mel"].nbytes  # no data, no handle travels
    cache2, array2 = pickle.loads(blob)
    assert cache2.fingerprint == cache.fingerprint and cache2.labels == cache.labels
    np.testing.assert_array_equal(array2[0], first)
    np.testing.assert_array_equal(np.asarray(cache2.array("valid", "wave")),
                                  written["valid"]["wave"])
    np.testing.assert_array_equal(cache2.rows("train")["path"], written["train"]["rows"]["path"])
    cache.close()
    np.testing.assert_array_equal(array[0], first)  # closed arrays reopen on use


def _read_in_forked_child(array, queue):
    inherited = array._file  # the parent's open handle, copied by fork
    row = array.row(2)
    queue.put((array._file is not inherited and array._file is not None, row))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_h5py_handle_is_reopened_after_fork(gzipped):
    path, written = gzipped
    array = FeatureCache(path).array("train", "mel")
    np.testing.assert_array_equal(array.row(0), written["train"]["mel"][0])  # parent opens it
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_forked_child, args=(array, queue))
    child.start()
    reopened, row = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert reopened, "the child must open its own handle, not use the parent's"
    np.testing.assert_array_equal(row, written["train"]["mel"][2])
    np.testing.assert_array_equal(array.row(3), written["train"]["mel"][3])  # parent's still fine
