"""Tests of training.data on tiny cache files (builder shared with test_reader)."""
from __future__ import annotations

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.data import SegmentDataset, compute_normalization
from cache.format import STATUS_SKIPPED
from cache.reader import FeatureCache
from tests.test_reader import (CLIPS, FRAMES, FRAMES_PER_SECOND, LABELS, N_BINS, SAMPLES,
                               write_cache)

SEGMENT = 12


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "cache.h5"
    return path, write_cache(path, versions=2, skipped=[("train", 2)])


@pytest.fixture
def gzipped(tmp_path):
    path = tmp_path / "cache_gzip.h5"
    return path, write_cache(path, versions=2, compression="gzip", skipped=[("train", 2)])


def _items(dataset, indices=None):
    indices = range(len(dataset)) if indices is None else indices
    return [dataset[i] for i in indices]


def _assert_same_items(a, b):
    assert len(a) == len(b)
    for item_a, item_b in zip(a, b):
        for part_a, part_b in zip(item_a, item_b):
            torch.testing.assert_close(part_a, part_b, rtol=0, atol=0)


# -- training items ---------------------------------------------------------------------------


def test_train_items_are_crops_of_the_clips_rows(plain):
    path, written = plain
    data, rows = written["train"]["mel"], written["train"]["rows"]
    ds = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True, seed=3)
    usable = sorted(set(rows["clip"][rows["status"] == 1]))
    assert len(ds) == ds.n_clips == len(usable) == CLIPS["train"] - 1  # clip 2 was skipped
    versions_seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i, (x, y) in enumerate(ds):
            assert x.dtype == torch.float32 and x.shape == (N_BINS, SEGMENT)
            assert y.dtype == torch.int64 and int(y) == usable[i] % len(LABELS)
            found = [(r, t) for r in np.flatnonzero(rows["clip"] == usable[i])
                     for t in range(FRAMES - SEGMENT + 1)
                     if np.array_equal(x.numpy(), data[r, :, t:t + SEGMENT])]
            assert len(found) == 1, "each item is exactly one crop of one row of its clip"
            versions_seen.add(int(rows["version"][found[0][0]]))
    assert versions_seen == {0, 1, 2}  # original and augmented versions are all drawn


def test_train_crops_reproducible_and_varied(plain):
    path, _ = plain
    make = lambda seed: SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True,
                                       seed=seed)
    a, b = make(7), make(7)
    epoch0 = _items(a)
    _assert_same_items(epoch0, _items(b))
    flat = [x.numpy().tobytes() for x, _ in epoch0]
    assert len(set(flat)) == len(flat), "items differ within an epoch"
    a.set_epoch(1)
    epoch1 = _items(a)
    assert all(not torch.equal(x0, x1) for (x0, _), (x1, _) in zip(epoch0, epoch1))
    b.set_epoch(1)
    _assert_same_items(epoch1, _items(b))
    a.set_epoch(0)
    _assert_same_items(epoch0, _items(a))  # going back to an epoch gives its crops again
    other_seed = _items(make(8))
    assert any(not torch.equal(x0, x1) for (x0, _), (x1, _) in zip(epoch0, other_seed))


def test_crops_per_clip_draws_several_crops_of_every_clip(plain):
    path, _ = plain
    one = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True, seed=4)
    three = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True, seed=4, crops_per_clip=3)
    assert len(three) == 3 * len(one) == 3 * three.n_clips
    items = _items(three)
    labels = [int(y) for _, y in items]
    assert labels == [int(y) for _, y in _items(one)] * 3  # item i is a crop of clip i % n_clips
    crops = [x.numpy().tobytes() for x, _ in items]
    assert len(set(crops)) == len(crops), "the crops of a clip differ"
    x, y = three.get_batch([0, one.n_clips, 2 * one.n_clips])
    assert torch.equal(y, torch.tensor([labels[0]] * 3))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="crops_per_clip"):
            SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True, crops_per_clip=bad)


def test_waveform_items(plain):
    path, written = plain
    ds = SegmentDataset(path, feature="wave", segment_frames=50, train=True, splits=("valid",))
    x, y = ds[1]
    assert x.shape == (50,) and ds.n_bins == 1 and ds.clip_frames == SAMPLES
    data = written["valid"]["wave"]
    assert any(np.array_equal(x.numpy(), data[r, t:t + 50])
               for r in range(3, 6) for t in range(SAMPLES - 49))


def test_backends_give_identical_items(plain):
    path, _ = plain
    kwargs = dict(feature="mel", segment_frames=SEGMENT, seed=5)
    for train in (True, False):
        memmap = SegmentDataset(path, train=train, backend="memmap", **kwargs)
        via_h5py = SegmentDataset(path, train=train, backend="h5py", **kwargs)
        _assert_same_items(_items(memmap), _items(via_h5py))


# -- evaluation items -------------------------------------------------------------------------


@pytest.mark.parametrize("segment,hop", [(SEGMENT, None), (SEGMENT, 5), (10, None),
                                         (FRAMES, None)])
def test_eval_segments_cover_every_frame(plain, segment, hop):
    path, written = plain
    splits = ("train", "test")
    ds = SegmentDataset(path, feature="mel", splits=splits, segment_frames=segment, train=False,
                        hop_frames=hop)
    originals = [(s, r) for s in splits
                 for r in np.flatnonzero((written[s]["rows"]["version"] == 0)
                                         & (written[s]["rows"]["status"] == 1))]
    assert ds.n_clips == len(originals) == CLIPS["train"] - 1 + CLIPS["test"]
    covered = np.zeros((ds.n_clips, FRAMES), dtype=int)
    clip_ids = []
    for x, y, clip in ds:
        c = int(clip)
        clip_ids.append(c)
        split, row = originals[c]
        data = written[split]["mel"][row]
        starts = [t for t in range(FRAMES - segment + 1)
                  if np.array_equal(x.numpy(), data[:, t:t + segment])]
        assert len(starts) == 1
        covered[c, starts[0]:starts[0] + segment] += 1
        assert int(y) == ds.clip_labels[c] == written[split]["rows"]["label"][row]
        assert ds.clip_paths[c] == written[split]["rows"]["path"][row]
    assert (covered >= 1).all(), "every frame of every clip is in some segment"
    assert sorted(set(clip_ids)) == list(range(ds.n_clips))
    assert clip_ids == sorted(clip_ids)  # segments of a clip are consecutive
    hop = hop or segment
    per_clip = len(range(0, FRAMES - segment + 1, hop)) + ((FRAMES - segment) % hop != 0)
    assert len(ds) == ds.n_clips * per_clip
    assert list(ds.clip_splits) == [s for s, _ in originals]


# -- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("feature,axes,shape", [("mel", (0, 2), (N_BINS, 1)),
                                                ("wave", (0, 1), (1,))])
def test_normalization_matches_numpy(plain, feature, axes, shape):
    path, written = plain
    splits = ("train", "valid")
    mean, std = compute_normalization(FeatureCache(path), feature, splits=splits)
    done = np.concatenate([written[s][feature][written[s]["rows"]["status"] == 1]
                           for s in splits]).astype(np.float64)
    assert mean.shape == std.shape == shape and mean.dtype == np.float32
    np.testing.assert_allclose(mean.ravel(), done.mean(axis=axes), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std.ravel(), done.std(axis=axes), rtol=1e-6)


def test_normalization_floors_constant_bins(tmp_path):
    path = tmp_path / "cache.h5"
    write_cache(path)
    with h5py.File(path, "r+") as f:
        mel = f["train/features/mel"]
        for r in range(mel.shape[0]):
            row = mel[r]
            row[0] = 4.0  # bin 0 constant everywhere
            mel[r] = row
    mean, std = compute_normalization(path, "mel")
    assert mean[0, 0] == pytest.approx(4.0) and std[0, 0] == pytest.approx(1e-5)
    assert (std[1:] > 0.5).all()


def test_items_are_normalised(plain):
    path, _ = plain
    mean, std = compute_normalization(path, "mel")
    raw = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=False)
    norm = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=False, mean=mean,
                          std=std)
    for i in (0, 3, len(raw) - 1):
        expected = (raw[i][0].numpy() - mean) / std
        np.testing.assert_allclose(norm[i][0].numpy(), expected, rtol=1e-6, atol=1e-6)
    normalised = torch.stack([x for x, *_ in norm])
    assert abs(float(normalised.mean())) < 0.3 and 0.7 < float(normalised.std()) < 1.3
    for bad in (mean[:3], mean.ravel()):
        with pytest.raises(ValueError, match=r"need \(6, 1\)"):
            SegmentDataset(path, feature="mel", segment_frames=N_BINS, train=False,
                           mean=bad, std=std)
    with pytest.raises(ValueError, match="both mean and std"):
        SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=False, mean=mean)


# -- errors -------------------------------------------------------------------------------------


def test_segment_longer_than_clip(plain):
    path, _ = plain
    SegmentDataset(path, feature="mel", segment_frames=FRAMES, train=True)  # exactly fits
    with pytest.raises(ValueError) as err:
        SegmentDataset(path, feature="mel", segment_frames=FRAMES + 1, train=True)
    message = str(err.value)
    seconds = FRAMES / FRAMES_PER_SECOND
    assert f"{FRAMES} frames ({seconds:.2f} s)" in message and f"<= {FRAMES}" in message
    assert str(path) in message


@pytest.mark.parametrize("train", [True, False])
def test_split_without_usable_clips(tmp_path, train):
    # The writer refuses to finish a split without a usable clip: this file is edited into one.
    path = tmp_path / "cache.h5"
    write_cache(path)
    with h5py.File(path, "r+") as f:
        f["valid/status"][...] = STATUS_SKIPPED
    message = f"split 'valid' of cache .*{path.name} has no usable clips"
    with pytest.raises(ValueError, match=message):
        SegmentDataset(path, feature="mel", splits=("train", "valid"), segment_frames=SEGMENT,
                       train=train)


def test_bad_arguments(plain):
    path, _ = plain
    with pytest.raises(ValueError, match="no feature 'cqt'.*available: mel, wave"):
        SegmentDataset(path, feature="cqt", segment_frames=SEGMENT, train=True)
    with pytest.raises(ValueError, match="no split.*'dev'"):
        SegmentDataset(path, feature="mel", splits=("dev",), segment_frames=SEGMENT, train=True)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="segment_frames"):
            SegmentDataset(path, feature="mel", segment_frames=bad, train=True)
    ds = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=True)
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


# -- processes --------------------------------------------------------------------------------


def test_pickle_round_trip(plain):
    path, written = plain
    for train in (True, False):
        ds = SegmentDataset(path, feature="mel", segment_frames=SEGMENT, train=train, seed=2)
        ds.set_epoch(4)
        before = _items(ds)  # maps the file in this process
        blob = pickle.dumps(ds)
        assert len(blob) < written["train"]["mel"].nbytes  # no feature data travels
        clone = pickle.loads(blob)
        assert clone.epoch == 4 and len(clone) == len(ds)
        _assert_same_items(before, _items(clone))


def _batches(dataset, *, workers, context=None):
    loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=workers,
                        multiprocessing_context=context)
    return [tuple(batch) for batch in loader]


@pytest.mark.parametrize("context,fixture", [("fork", "plain"), ("fork", "gzipped"),
                                             ("spawn", "plain")])
def test_workers_match_single_process(request, context, fixture):
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} start method here")
    path, _ = request.getfixturevalue(fixture)
    train = SegmentDataset(path, feature="mel", splits=("train", "valid"), segment_frames=SEGMENT,
                           train=True, seed=11)
    train.set_epoch(2)
    # Reading first in this process leaves an open map / h5py handle for fork to copy.
    expected = _batches(train, workers=0)
    _assert_same_items(_batches(train, workers=2, context=context), expected)
    if context == "fork":  # spawn pays a torch import per worker: one round is enough
        train.set_epoch(3)  # new workers each epoch see the new epoch
        epoch3 = _batches(train, workers=2, context=context)
        _assert_same_items(epoch3, _batches(train, workers=0))
        assert not torch.equal(epoch3[0][0], expected[0][0])
        evaluation = SegmentDataset(path, feature="mel", splits=("test",), segment_frames=SEGMENT,
                                    train=False)
        _assert_same_items(_batches(evaluation, workers=2, context=context),
                           _batches(evaluation, workers=0))


@pytest.mark.parametrize("fixture", ["plain", "gzipped"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("feature", ["mel", "wave"])
def test_batch_loader_equals_per_item_collation(request, fixture, train, feature):
    from training.data import batch_loader

    path, _ = request.getfixturevalue(fixture)
    mean, std = compute_normalization(path, feature)
    segment = SEGMENT if feature == "mel" else SAMPLES // 2
    dataset = SegmentDataset(path, feature=feature, splits=("train",) if train else ("test",),
                             segment_frames=segment, train=train, seed=3, mean=mean, std=std)
    dataset.set_epoch(1)
    order = list(reversed(range(len(dataset))))  # any sampler order is kept
    expected = [tuple(b) for b in DataLoader(dataset, batch_size=3, sampler=order)]
    got = [tuple(b) for b in batch_loader(dataset, sampler=order, batch_size=3)]
    _assert_same_items(got, expected)
    _assert_same_items([tuple(b) for b in batch_loader(dataset, sampler=order, batch_size=3, workers=2)],
                       expected)
