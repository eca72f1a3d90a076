"""Tests of cache.reader on tiny caches written here by cache.writer.CacheWriter.

Files that are damaged, edited or of an older layout on purpose are then changed with
h5py; everything else is what the writer writes.
"""
from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache.format import (FORMAT_VERSION, OPTIONAL_ROW_FIELDS, ROW_FIELDS, STATUS_DONE, STATUS_SKIPPED,
                          canonical_json, describe_feature, feature_path, fingerprint, partial_path)
from cache.reader import CacheError, FeatureCache, H5Array, MemmapArray
from cache.writer import CacheWriter, NothingUsable, SplitRows

REPO = Path(__file__).resolve().parents[1]
LABELS = ("blues", "jazz", "rock")
SAMPLE_RATE = 200
DURATION = 2.0
N_BINS, FRAMES_PER_SECOND = 6, 20
FRAMES = int(DURATION * FRAMES_PER_SECOND)  # 40
SAMPLES = int(DURATION * SAMPLE_RATE)  # 400
ROW_SHAPES = {"mel": (N_BINS, FRAMES), "wave": (SAMPLES,)}
CLIPS = {"train": 4, "valid": 2, "test": 3}
SKIP_REASON = "cannot load audio: not a readable audio file"


def make_settings(*, versions: int, labels=LABELS) -> dict:
    """Build settings shaped like the builder's, for a tiny two-feature cache."""
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "duration": DURATION,
        "labels": list(labels),
        "features": {
            "mel": describe_feature({"n_mels": N_BINS}, kind="spectrogram", frames_per_second=FRAMES_PER_SECOND,
                                    shape=ROW_SHAPES["mel"]),
            "wave": describe_feature({}, kind="waveform", frames_per_second=SAMPLE_RATE, shape=ROW_SHAPES["wave"]),
        },
        "augment": {"versions": versions},
    }


def clip_path(clip: int, labels=LABELS) -> str:
    label = labels[clip % len(labels)]
    return f"{label}/{label}.{clip:05d}.wav"


def write_cache(path, *, clips=CLIPS, versions: int = 1, compression: str = "none",
                skipped=(), finish: bool = True, labels=LABELS, seed: int = 0) -> dict:
    """Write a tiny cache at ``path`` with :class:`CacheWriter`; return what was written.

    ``skipped`` holds ``(split, clip)`` pairs stored as skipped (undecodable sources).
    ``finish=False`` leaves the build unfinished, as ``<path>.partial``. A split whose
    every clip is skipped is no cache the writer finishes; such a file is finished by
    hand here (:func:`finish_by_hand`), for the readers' refusals of it. Returns
    ``{split: {"rows": {field: array}, "mel": array, "wave": array}}``: what a reader
    must find, skipped rows as zeros.
    """
    rng = np.random.default_rng(seed)
    layout = {split: SplitRows(paths=tuple(clip_path(c, labels) for c in range(n_clips)),
                               labels=tuple(c % len(labels) for c in range(n_clips)), versions=versions)
              for split, n_clips in clips.items()}
    written = {}
    with CacheWriter(path, settings=make_settings(versions=versions, labels=labels), layout=layout,
                     shapes=ROW_SHAPES, compression=compression) as writer:
        for split, rows in layout.items():
            n_rows = rows.n_rows
            clip = np.arange(n_rows) // (versions + 1)
            version = np.arange(n_rows) % (versions + 1)
            bad = np.isin(clip, [c for s, c in skipped if s == split])
            augment = [{"gain_db": float(v)} if v else {} for v in version]
            flags = [("padded", "short") if c == 1 else () for c in clip]
            data = {name: rng.standard_normal((n_rows, *shape)).astype("<f4") * 3 + 1
                    for name, shape in ROW_SHAPES.items()}
            for c in range(len(rows.paths)):
                if bad[rows.row(c, 0)]:
                    writer.skip_clip(split, c, SKIP_REASON)
                    continue
                indices = [rows.row(c, v) for v in range(versions + 1)]
                assert writer.write_rows(split, c, [(int(version[i]), {name: data[name][i] for name in data},
                                                     augment[i], flags[i]) for i in indices]) is None
            for name in data:
                data[name][bad] = 0
            written[split] = {"rows": {
                "path": np.array([clip_path(c, labels) for c in clip]),
                "label": (clip % len(labels)).astype(ROW_FIELDS["label"]),
                "clip": clip.astype(ROW_FIELDS["clip"]),
                "version": version.astype(ROW_FIELDS["version"]),
                "augment": np.array(["" if bad[i] or not augment[i] else canonical_json(augment[i])
                                     for i in range(n_rows)]),
                "flags": np.array([f"skipped: {SKIP_REASON}" if bad[i] else ",".join(flags[i])
                                   for i in range(n_rows)]),
                "status": np.where(bad, STATUS_SKIPPED, STATUS_DONE).astype(ROW_FIELDS["status"]),
            }, **data}
        if finish and not writer.unusable_splits():
            writer.finish()
    if finish and not Path(path).exists():
        finish_by_hand(path)
    return written


def finish_by_hand(path) -> None:
    """Mark the unfinished build of ``path`` complete and give it its final name, as the
    writer does, without its refusal of a split that has no usable clip."""
    partial = partial_path(path)
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = 1
    partial.replace(path)


def to_older_layout(path) -> None:
    """Make ``path`` look like a file written before the optional row fields and the
    checksum existed, with row text as variable-length strings."""
    with h5py.File(path, "r+") as f:
        for split in f:
            group = f[split]
            for name in (*OPTIONAL_ROW_FIELDS, "checksum"):
                del group[name]
            for name in ("augment", "flags"):
                values = group[name].asstr()[()].astype(object)
                del group[name]
                group.create_dataset(name, data=values, dtype=h5py.string_dtype())


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
    assert set(rows) == set(ROW_FIELDS) | set(OPTIONAL_ROW_FIELDS)
    assert rows["group"].tolist() == [""] * len(rows["status"])
    for name, expected in written["train"]["rows"].items():
        np.testing.assert_array_equal(rows[name], expected)
    assert rows["path"].dtype.kind == "U" and rows["augment"].dtype.kind == "U"
    skipped = written["train"]["rows"]["clip"] == 2
    np.testing.assert_array_equal(cache.done_rows("train"), np.flatnonzero(~skipped))


def test_file_of_the_older_layout_reads_with_defaults(plain):
    """A cache written before the optional row fields and fixed-length text still loads."""
    path, written = plain
    to_older_layout(path)
    cache = FeatureCache(path)
    rows = cache.rows("train")
    assert set(rows) == set(ROW_FIELDS) | set(OPTIONAL_ROW_FIELDS)
    assert rows["group"].tolist() == [""] * len(rows["status"])
    for name, expected in written["train"]["rows"].items():
        np.testing.assert_array_equal(rows[name], expected)
    np.testing.assert_array_equal(np.asarray(cache.array("train", "mel")), written["train"]["mel"])


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


# -- the writer's storage checks -------------------------------------------------------------


def tiny_layout() -> dict[str, SplitRows]:
    return {"train": SplitRows(paths=(clip_path(0), clip_path(1)), labels=(0, 1), versions=1),
            "valid": SplitRows(paths=(clip_path(2),), labels=(2,), versions=0)}


def test_writer_stores_a_clip_with_non_finite_values_as_skipped(tmp_path):
    path = tmp_path / "cache.h5"
    good = {name: np.ones(shape, "<f4") for name, shape in ROW_SHAPES.items()}
    bad = {**good, "mel": good["mel"].copy()}
    bad["mel"][2, 3] = np.nan
    with CacheWriter(path, settings=make_settings(versions=1), layout=tiny_layout(), shapes=ROW_SHAPES) as writer:
        reason = writer.write_rows("train", 0, [(0, good, {}, ()), (1, bad, {"gain_db": 1.0}, ())])
        assert reason == "feature mel of augmented copy 1 has NaN values (1 of 240)"
        assert writer.write_rows("train", 1, [(0, good, {}, ("padded",)), (1, good, {"gain_db": 2.0}, ())]) is None
        writer.skip_clip("valid", 0, "cannot load audio")
        assert writer.skipped() == [{"split": "train", "path": clip_path(0), "reason": reason},
                                    {"split": "valid", "path": clip_path(2), "reason": "cannot load audio"}]
        with pytest.raises(NothingUsable, match="no clip of the valid split"):
            writer.finish()  # a split without one usable clip is no cache
    with h5py.File(path.with_name("cache.h5.partial"), "r") as f:
        assert f["train/status"][...].tolist() == [STATUS_SKIPPED, STATUS_SKIPPED, STATUS_DONE, STATUS_DONE]
        assert not f["train/features/mel"][0].any() and not f["train/features/mel"][1].any()  # zeroed
        assert f["train/flags"].asstr()[2] == "padded" and f["train/augment"].asstr()[3] == '{"gain_db":2.0}'


@pytest.mark.parametrize("split, clip, rows, message", [
    ("dev", 0, [], "has no split 'dev'"),
    ("train", 2, [], "has 2 clips, not a clip 2"),
    ("train", 0, [(0, {"mel": np.ones((N_BINS, FRAMES + 1), "<f4"), "wave": np.ones(SAMPLES, "<f4")}, {}, ())],
     r"feature mel of row 0 has shape \(6, 41\), the file holds \(6, 40\)"),
])
def test_writer_refuses_rows_that_do_not_fit_the_file(tmp_path, split, clip, rows, message):
    with CacheWriter(tmp_path / "cache.h5", settings=make_settings(versions=1), layout=tiny_layout(),
                     shapes=ROW_SHAPES) as writer:
        with pytest.raises(ValueError, match=message):
            writer.write_rows(split, clip, rows)
        assert writer.pending()["train"] == {0: [0, 1], 1: [0, 1]}  # nothing marked done


def test_cache_is_storage_only():
    """Reading and writing caches loads no audio, feature, build or torch code."""
    code = ("import sys, cache.format, cache.writer, cache.reader, cache.inspect; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pipeline', 'builder', 'models', 'training', "
            "'synthetic', 'torch', 'librosa'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- refusals ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CacheError, match="build_cache.py") as err:
        FeatureCache(tmp_path / "nope.h5")
    assert "nope.h5" in str(err.value)


def test_missing_file_with_partial_build(tmp_path):
    write_cache(tmp_path / "cache.h5", finish=False)
    assert (tmp_path / "cache.h5.partial").exists()
    with pytest.raises(CacheError, match="resume"):
        FeatureCache(tmp_path / "cache.h5")


def test_partial_file(tmp_path):
    path = tmp_path / "cache.h5.partial"
    write_cache(path)  # a finished cache, under a name that says otherwise
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
    write_cache(path)
    _edit_attrs(path, format_version=version)
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
