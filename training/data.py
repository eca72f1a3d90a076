"""Segments of a feature cache for training and evaluation, their loaders and normalisation.

Training draws random crops of every source clip per epoch (from the original or any
augmented version); evaluation walks every segment of every original clip
(:func:`training.segments.segment_starts`) so that predictions can be averaged per clip.

Crops are slices of memory-mapped rows (see :mod:`cache.reader`): no HDF5 call per
item, one copy into a contiguous float32 array, then ``torch.from_numpy``.

A dataset's feature is one cached feature (``"mel"``) or several spectrograms of the
same frames stacked along their bins (``"mel+cqt"``, see :func:`stack_parts`): each part
keeps its own per-bin normalisation, every crop starts at the same frame in every part,
and ``n_bins`` is the sum of the parts'. A one-part feature reads exactly as before.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from cache.format import STATUS_DONE
from cache.reader import CacheError, FeatureCache
from common.errors import UserError
from common.kinds import KIND_DIMS, SPECTROGRAM, WAVEFORM
from common.locks import FileLock
from training.config import PART_SEPARATOR, feature_parts
from training.errors import TrainError
from training.runtime import Dist
from training.segments import cut_segments, inverse_std, positive_int, segment_starts

STD_FLOOR = 1e-5


class NonFiniteFeatures(CacheError, UserError):
    """A cached feature row holds NaN or infinite values: the cache must be rebuilt."""


def non_finite_error(cache: FeatureCache, feature: str, split: str, row: int,
                     values: np.ndarray) -> NonFiniteFeatures:
    """The error for row ``row`` of ``split`` whose ``values`` are not all finite, naming its clip."""
    meta = cache.rows(split)
    what = "NaN" if np.isnan(values).any() else "infinite values"
    return NonFiniteFeatures(
        f"feature {feature!r} of cache {cache.path} holds {what} in split {split!r}, row {row} "
        f"(clip {meta['path'][row]}, version {int(meta['version'][row])}), which would turn scores "
        f"into NaN: rebuild the cache (build_cache.py --overwrite) with a build that refuses such "
        f"rows, or leave that clip out of the split lists")


def stats_shape(kind: str, n_bins: int) -> tuple[int, ...]:
    """Shape of the per-bin normalisation statistics of a feature of ``kind``.

    ``(n_bins, 1)`` for spectrograms (broadcasts over frames), ``(1,)`` for waveforms.

    >>> stats_shape("spectrogram", 128), stats_shape("waveform", 1)
    ((128, 1), (1,))
    """
    return (n_bins, 1) if kind == SPECTROGRAM else (1,)


def _open(cache) -> FeatureCache:
    return cache if isinstance(cache, FeatureCache) else FeatureCache(cache)


def _part_kind(cache: FeatureCache, name: str) -> str:
    """The ``kind`` of the cached feature ``name``, checked against :data:`common.kinds.KIND_DIMS`."""
    kind = cache.feature_settings(name).get("kind")
    if kind not in KIND_DIMS:
        raise ValueError(f"feature {name!r} of cache {cache.path} has kind {kind!r}; "
                         f"segments can be cut from kinds {tuple(KIND_DIMS)}")
    return kind


def feature_kind(cache: FeatureCache, feature: str) -> str:
    """The ``kind`` of ``feature`` (one cached feature, or stacked parts: a spectrogram)."""
    parts = stack_parts(cache, feature)
    return _part_kind(cache, parts[0]) if len(parts) == 1 else SPECTROGRAM


# -- several cached features as one input ------------------------------------------------------------
def _frames(cache: FeatureCache, name: str) -> tuple:
    """What a part must share with the others to stack: frames per second and frames per clip."""
    stored = cache.feature_settings(name)
    shape = stored.get("shape") or [None]
    return stored.get("frames_per_second"), shape[-1]


def _same_frames(a: tuple, b: tuple) -> bool:
    (fps_a, n_a), (fps_b, n_b) = a, b
    return None not in (fps_a, fps_b) and math.isclose(fps_a, fps_b, rel_tol=1e-9) and n_a == n_b


def parts_that_fit(cache: FeatureCache, first: str) -> list[str]:
    """The other cached spectrograms that stack with ``first``: the same frame rate and frame count."""
    frames = _frames(cache, first)
    return [name for name in cache.features if name != first and _part_kind(cache, name) == SPECTROGRAM
            and _same_frames(_frames(cache, name), frames)]


def _fit_hint(cache: FeatureCache, first: str) -> str:
    if _part_kind(cache, first) != SPECTROGRAM:
        spectrograms = [n for n in cache.features if _part_kind(cache, n) == SPECTROGRAM]
        return (f"the spectrograms of cache {cache.path}: {', '.join(spectrograms) or 'none'}")
    fitting = parts_that_fit(cache, first)
    if not fitting:
        return (f"no other feature of cache {cache.path} has the frames of {first!r}; train on {first!r} "
                f"alone, or rebuild the cache with features of one --hop-length")
    return (f"features of cache {cache.path} that stack with {first!r} (same frame rate and frame count): "
            f"{', '.join(fitting)}, e.g. --feature {first}{PART_SEPARATOR}{fitting[0]}")


def stack_parts(cache: FeatureCache, feature: str) -> tuple[str, ...]:
    """The cached features that ``feature`` names (``"mel"``, or ``"mel+cqt"``), checked to stack.

    Several parts must all be spectrograms with the same frame rate and the same
    frames per clip, so that one crop start means the same instant in each.

    Raises
    ------
    TrainError
        An empty or repeated part (see :func:`training.config.feature_parts`), a part
        the cache lacks (its features are listed), a waveform part, or a part of other
        frames than the first (the features that stack with the first are named).
    cache.reader.CacheError
        A single feature that the cache lacks.

    >>> stack_parts(FeatureCache("cache.h5"), "mel+cqt")  # doctest: +SKIP
    ('mel', 'cqt')
    """
    parts = feature_parts(feature)
    if len(parts) == 1:
        cache.feature_settings(feature)
        return parts
    for part in parts:
        try:
            cache.feature_settings(part)
        except CacheError as exc:
            raise TrainError(f"feature {feature!r}: {exc}") from None
    first, frames = parts[0], _frames(cache, parts[0])
    for part in parts:
        kind = _part_kind(cache, part)
        if kind != SPECTROGRAM:
            raise TrainError(f"feature {feature!r}: part {part!r} is a {kind}, and only spectrograms stack "
                             f"along their bins; {_fit_hint(cache, first)}")
    for part in parts[1:]:
        theirs = _frames(cache, part)
        if not _same_frames(theirs, frames):
            raise TrainError(
                f"feature {feature!r}: part {part!r} has {_frames_text(theirs)}, but {first!r} has "
                f"{_frames_text(frames)}; stacked parts need the same frames; {_fit_hint(cache, first)}")
    return parts


def _frames_text(frames: tuple) -> str:
    fps, n = frames
    rate = "an unrecorded frame rate" if fps is None else f"{fps:.2f} frames/s"
    return f"{rate} and {'?' if n is None else n} frames per clip"


def stored_feature_settings(cache: FeatureCache, feature: str) -> dict:
    """What a checkpoint records of ``feature`` as ``feature_settings``.

    One cached feature: its stored settings, as they are. Stacked parts: the
    description of the stack (``kind``, ``frames_per_second``, ``shape`` with the
    summed bins) and each part's stored settings under ``"parts"``, in stacking order.

    >>> stored_feature_settings(FeatureCache("cache.h5"), "mel+cqt")["shape"]  # doctest: +SKIP
    [212, 1292]
    """
    parts = stack_parts(cache, feature)
    if len(parts) == 1:
        return cache.feature_settings(feature)
    settings = {part: cache.feature_settings(part) for part in parts}
    first = settings[parts[0]]
    return {"kind": SPECTROGRAM, "frames_per_second": first["frames_per_second"],
            "shape": [sum(s["shape"][0] for s in settings.values()), first["shape"][-1]],
            "parts": settings}


def part_settings(feature: str, stored: dict) -> dict[str, dict]:
    """Each part's stored settings from what :func:`stored_feature_settings` recorded, in order.

    >>> part_settings("mel", {"n_mels": 128})
    {'mel': {'n_mels': 128}}
    >>> list(part_settings("mel+cqt", {"parts": {"mel": {}, "cqt": {}}}))
    ['mel', 'cqt']
    """
    parts = feature_parts(feature)
    if len(parts) == 1:
        return {feature: stored}
    return {part: stored["parts"][part] for part in parts}


class StackedArray:
    """The rows of several spectrogram features of one split, stacked along their bins.

    Reads like the cache's arrays (:meth:`cache.reader.FeatureCache.array`): ``row``
    and ``crop`` give each part's row or crop, concatenated, ``(sum of n_bins, frames)``.

    Parameters
    ----------
    parts : sequence of arrays
        One ``(rows, n_bins_i, frames)`` array per part, of the same rows and frames.
    names : sequence of str
        The parts' feature names (for messages).
    """

    def __init__(self, parts, *, names):
        self.parts, self.names = tuple(parts), tuple(names)
        shapes = [tuple(part.shape) for part in self.parts]
        if any(len(shape) != 3 for shape in shapes) or len({(s[0], s[2]) for s in shapes}) != 1:
            raise ValueError(f"features {', '.join(self.names)} cannot be stacked: their rows have shapes "
                             f"{shapes}, which differ in rows or frames")
        self.shape = (shapes[0][0], sum(s[1] for s in shapes), shapes[0][2])

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, index: int) -> np.ndarray:
        return np.concatenate([part.row(index) for part in self.parts], axis=0)

    def crop(self, index: int, start: int, stop: int) -> np.ndarray:
        return np.concatenate([part.crop(index, start, stop) for part in self.parts], axis=0)

    def __repr__(self) -> str:
        return f"StackedArray({'+'.join(self.names)}, shape={self.shape})"


def feature_array(cache: FeatureCache, split: str, parts: tuple[str, ...], *, backend: str = "auto"):
    """The rows of ``split``: the cache's own array for one part, a :class:`StackedArray` for several."""
    if len(parts) == 1:
        return cache.array(split, parts[0], backend=backend)
    return StackedArray([cache.array(split, part, backend=backend) for part in parts], names=parts)


def array_parts(array, parts: tuple[str, ...]) -> list[tuple[str, object]]:
    """``(name, array)`` of each part of an array :func:`feature_array` returned."""
    return list(zip(parts, array.parts)) if isinstance(array, StackedArray) else [(parts[0], array)]


def _stat_axes(kind: str) -> tuple[int, ...]:
    # Spectrograms are normalised per bin over frames, waveforms over all samples.
    return (-1,) if kind == SPECTROGRAM else (0,)


def compute_normalization(cache, feature: str, *, splits=("train",), backend: str = "auto",
                          std_floor: float = STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a feature over the done rows of some splits.

    Rows are streamed one at a time (memory stays at one row) and combined with
    Chan et al.'s pairwise update in float64, so long caches lose no precision.

    Parameters
    ----------
    cache : FeatureCache or path
    feature : str
        A cached feature, or several stacked (``"mel+cqt"``): each part's statistics,
        concatenated along the bins.
    splits : sequence of str
        Splits whose done rows (original and augmented versions) are used.
    std_floor : float
        Lower bound on the std, so a constant bin does not divide by zero.

    Returns
    -------
    mean, std : np.ndarray, float32
        Shape ``(n_bins, 1)`` for spectrogram features (broadcasts over frames),
        ``(1,)`` for waveforms. Population std (``ddof=0``).

    Raises
    ------
    NonFiniteFeatures
        A row holds NaN or infinite values (the row, clip and split are named).

    Examples
    --------
    >>> mean, std = compute_normalization(FeatureCache("cache.h5"), "mel")  # doctest: +SKIP
    >>> mean.shape                                                          # doctest: +SKIP
    (128, 1)
    """
    cache = _open(cache)
    parts = stack_parts(cache, feature)
    if len(parts) > 1:
        # Per bin, the statistics of a stack are those of its parts, concatenated.
        stats = [compute_normalization(cache, part, splits=splits, backend=backend, std_floor=std_floor)
                 for part in parts]
        return tuple(np.concatenate(values, axis=0) for values in zip(*stats))
    axes = _stat_axes(feature_kind(cache, feature))
    count, mean, m2 = 0, None, None
    for split in splits:
        array = cache.array(split, feature, backend=backend)
        for row in cache.done_rows(split):
            values = np.asarray(array.row(int(row)), dtype=np.float64)
            if not np.isfinite(values).all():
                raise non_finite_error(cache, feature, split, int(row), values)
            n = int(np.prod([values.shape[a] for a in axes]))
            row_mean = values.mean(axis=axes, keepdims=True)
            row_m2 = ((values - row_mean) ** 2).sum(axis=axes, keepdims=True)
            if mean is None:
                count, mean, m2 = n, row_mean, row_m2
                continue
            total = count + n
            delta = row_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + row_m2 + delta ** 2 * (count * n / total)
            count = total
    if mean is None:
        raise ValueError(f"cannot normalise feature {feature!r}: splits {tuple(splits)} of "
                         f"cache {cache.path} have no done rows")
    std = np.maximum(np.sqrt(m2 / count), std_floor)
    return mean.astype(np.float32), std.astype(np.float32)


class SegmentDataset(Dataset):
    """Fixed-length segments of one cached feature, for training or evaluation.

    Parameters
    ----------
    cache_path : str, Path or FeatureCache
    feature : str
        Name of the cached feature (``cache.features``), or several spectrograms of the
        same frames joined by ``+`` (``"mel+cqt"``), stacked along their bins in that
        order (see :func:`stack_parts`).
    splits : sequence of str
        Splits whose clips are used, e.g. ``("train",)`` or ``("train", "valid")``.
    segment_frames : int
        Segment length in frames (in samples for waveform features).
    train : bool
        ``True``: ``crops_per_clip`` items per source clip per epoch, each a uniformly
        chosen done row of that clip (original or augmented version) and a random crop.
        Items are ``(x, label)``.
        ``False``: the original rows (version 0) only, every segment of every clip at
        starts ``0, hop, 2*hop, ...`` plus one segment aligned to the clip end if those
        do not reach it. Items are ``(x, label, clip_id)``.
    hop_frames : int, optional
        Hop between evaluation segments (default ``segment_frames``); unused when
        training. A hop longer than the segment skips frames between segments.
    crops_per_clip : int
        Training items per clip and epoch (default 1). Small sets need several: with
        one 3 s crop of each 30 s clip, an epoch sees a tenth of the audio, and every
        epoch pays for an evaluation. Unused when evaluating.
    seed : int
        Seed of the training crops. Together with the epoch it fixes every crop:
        results do not depend on the number of DataLoader workers.
    mean, std : array-like, optional
        Normalisation, e.g. from :func:`compute_normalization`; items are
        ``(x - mean) / std``. For stacked parts, each part's statistics concatenated.
    backend : {"auto", "memmap", "h5py"}
        How feature rows are read (see :meth:`FeatureCache.array`).

    Notes
    -----
    ``x`` has shape ``(n_bins, segment_frames)`` for spectrogram features and
    ``(segment_frames,)`` for waveforms; float32. Labels and clip ids are int64. Stacked
    parts give ``n_bins`` = the sum of theirs; their crops start at the same frame, the
    one a single part would get for the same seed.

    The training crops of an epoch are drawn all at once from
    ``np.random.default_rng((seed, epoch))`` (one generator per item would cost more
    than the crop itself). Call :meth:`set_epoch` before each epoch. A DataLoader
    without ``persistent_workers`` copies (fork) or pickles (spawn, forkserver) the
    dataset into fresh workers at every ``iter(loader)``, so the workers see the new
    epoch; with ``persistent_workers=True`` they would keep the epoch they started with.

    Pickling drops open maps and h5py handles; each worker reopens the file lazily.

    Examples
    --------
    >>> train = SegmentDataset("cache.h5", feature="mel", segment_frames=128,
    ...                        train=True, seed=1)                    # doctest: +SKIP
    >>> for epoch in range(3):                                        # doctest: +SKIP
    ...     train.set_epoch(epoch)
    ...     for x, y in torch.utils.data.DataLoader(train, batch_size=32, num_workers=2):
    ...         ...
    """

    def __init__(self, cache_path, *, feature: str, splits=("train",), segment_frames: int,
                 train: bool, hop_frames: int | None = None, crops_per_clip: int = 1, seed: int = 0,
                 mean=None, std=None, backend: str = "auto"):
        self.cache = _open(cache_path)
        self.feature = feature
        self.parts = stack_parts(self.cache, feature)
        self.kind = feature_kind(self.cache, feature)
        self.splits = _check_splits(self.cache, splits)
        self.train = bool(train)
        self.crops_per_clip = positive_int("crops_per_clip", crops_per_clip)
        self.seed = nonnegative_int("seed", seed)
        self.epoch = 0
        self._arrays = tuple(feature_array(self.cache, s, self.parts, backend=backend) for s in self.splits)
        self._row_shape = self._check_row_shapes()
        self.segment_frames = self._check_segment(segment_frames)
        self.hop_frames = self.segment_frames if hop_frames is None else \
            positive_int("hop_frames", hop_frames)
        self._index_clips()
        if not self.train:
            self._index_segments()
        self._mean, self._std = self._check_normalization(mean, std)
        self._inv_std = None if self._std is None else inverse_std(self._std)
        self._plan = None  # (epoch, picked row per item, crop start per item)
        if not self.train:
            # Evaluation reads every segment of these rows each time: one NaN would make
            # every score NaN, silently. One pass now is cheaper than one evaluation.
            self.check_finite()

    # -- construction checks ------------------------------------------------------------

    def _check_row_shapes(self) -> tuple[int, ...]:
        shapes = {a.shape[1:] for a in self._arrays}
        if len(shapes) != 1:
            raise ValueError(f"feature {self.feature!r} of cache {self.cache.path} has "
                             f"different shapes in splits {self.splits}: {sorted(shapes)}")
        shape = shapes.pop()
        if len(shape) != KIND_DIMS[self.kind]:
            raise ValueError(f"feature {self.feature!r} of cache {self.cache.path} is a "
                             f"{self.kind} but its rows have shape {shape}")
        return shape

    def _check_segment(self, segment_frames) -> int:
        segment = positive_int("segment_frames", segment_frames)
        if segment > self.clip_frames:
            fps = self.frames_per_second
            raise ValueError(
                f"segment_frames={segment} ({segment / fps:.2f} s) is longer than the clips "
                f"of feature {self.feature!r} in {self.cache.path}: {self.clip_frames} frames "
                f"({self.clip_frames / fps:.2f} s); use segment_frames <= {self.clip_frames}")
        return segment

    def _check_normalization(self, mean, std):
        if mean is None and std is None:
            return None, None
        if mean is None or std is None:
            raise ValueError("give both mean and std (see compute_normalization), or neither")
        # Only per-bin statistics are accepted: a (n_bins,) vector would broadcast over
        # frames instead of bins, silently, whenever n_bins == segment_frames.
        wanted = stats_shape(self.kind, self.n_bins)
        out = []
        for name, value in (("mean", mean), ("std", std)):
            value = np.asarray(value, dtype=np.float32)
            if value.shape != wanted and value.size != 1:
                raise ValueError(f"{name} has shape {value.shape}; items of feature "
                                 f"{self.feature!r} need {wanted} (per bin) or a scalar, "
                                 f"as compute_normalization returns")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} holds NaN or infinite values; normalisation statistics "
                                 f"must be finite (compute_normalization refuses non-finite rows)")
            out.append(value)
        if not np.all(out[1] > 0):
            raise ValueError("std must be > 0 everywhere (compute_normalization floors it)")
        return tuple(out)

    # -- indexing -----------------------------------------------------------------------

    def _index_clips(self) -> None:
        """Group the usable rows of every split by source clip.

        Clips are numbered densely in split order, then by clip index. The rows of
        clip ``c`` are ``_rows[_row_ptr[c]:_row_ptr[c + 1]]`` (row numbers in split
        ``_row_split``), original version first.
        """
        row_split, rows, clips, labels, paths = [], [], [], [], []
        for s, split in enumerate(self.splits):
            meta = self.cache.rows(split)
            usable = meta["status"] == STATUS_DONE
            if not self.train:
                usable &= meta["version"] == 0
            index = np.flatnonzero(usable)
            if index.size == 0:
                raise ValueError(f"split {split!r} of cache {self.cache.path} has no usable "
                                 f"clips (no done{' original' if not self.train else ''} rows)"
                                 f"; check the build's skipped list or pick other splits")
            index = index[np.lexsort((meta["version"][index], meta["clip"][index]))]
            row_split.append(np.full(index.size, s))
            rows.append(index)
            clips.append(np.stack([np.full(index.size, s), meta["clip"][index]], axis=1))
            labels.append(meta["label"][index])
            paths.append(meta["path"][index])
        self._row_split = np.concatenate(row_split)
        self._rows = np.concatenate(rows)
        self._row_split_list, self._rows_list = self._row_split.tolist(), self._rows.tolist()
        clip_keys = np.concatenate(clips)
        # rows are sorted by (split, clip), so a clip starts where its key changes
        starts = np.flatnonzero(np.r_[True, np.any(clip_keys[1:] != clip_keys[:-1], axis=1)])
        self._row_ptr = np.r_[starts, len(self._rows)]
        self.clip_labels = np.concatenate(labels)[starts].astype(np.int64)
        bad = (self.clip_labels < 0) | (self.clip_labels >= len(self.labels))
        if bad.any():
            raise ValueError(f"cache {self.cache.path} has label indices outside its "
                             f"{len(self.labels)} labels (corrupt file); rebuild it with "
                             f"build_cache.py --overwrite")
        self._clip_label_list = self.clip_labels.tolist()
        self.clip_paths = np.concatenate(paths)[starts]
        self.clip_splits = np.asarray(self.splits)[clip_keys[starts, 0]]
        self._label_tensors = tuple(torch.tensor(i, dtype=torch.int64)
                                    for i in range(len(self.labels)))

    def _index_segments(self) -> None:
        starts = segment_starts(self.clip_frames, self.segment_frames, self.hop_frames)
        self.segment_starts = starts
        self._seg_clip = np.repeat(np.arange(self.n_clips), len(starts))
        self._seg_start = np.tile(starts, self.n_clips)

    def check_finite(self) -> None:
        """Refuse (:class:`NonFiniteFeatures`) if any row this dataset reads holds NaN or inf.

        One pass over the rows' bytes. Evaluation datasets do it on construction;
        training checks its rows while computing the normalisation, or calls this when
        it reuses saved statistics (resume).
        """
        for s, split_array in enumerate(self._arrays):
            rows = [row for split_index, row in zip(self._row_split_list, self._rows_list) if split_index == s]
            for part, array in array_parts(split_array, self.parts):
                for row in rows:
                    values = array.row(row)
                    if not np.isfinite(values).all():
                        raise non_finite_error(self.cache, part, self.splits[s], row, np.asarray(values))

    # -- epochs ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the training crops of ``epoch`` (call before iterating each epoch)."""
        self.epoch = nonnegative_int("epoch", epoch)

    def _epoch_plan(self) -> tuple[list[int], list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, *self._draw_plan(self.epoch))
        return self._plan[1], self._plan[2]

    def _draw_plan(self, epoch: int) -> tuple[list[int], list[int]]:
        """The usable row and crop start of every training item of ``epoch``."""
        rng = np.random.default_rng((self.seed, epoch))
        clip_of_item = np.tile(np.arange(self.n_clips), self.crops_per_clip)
        counts = np.diff(self._row_ptr)[clip_of_item]
        picked = self._row_ptr[clip_of_item] + rng.integers(0, counts)
        starts = rng.integers(0, self.clip_frames - self.segment_frames + 1, size=clip_of_item.size)
        # Python lists: item lookups then cost no numpy scalar conversions.
        return picked.tolist(), starts.tolist()

    def training_crops(self, epoch: int) -> list[tuple[str, int, int]]:
        """``(split, row, start)`` of every training item of ``epoch``, in item order.

        What the items of that epoch are cut from (``row`` indexes the split's rows);
        the dataset's own epoch is left as it is.
        """
        if not self.train:
            raise ValueError("training_crops: an evaluation dataset has no random crops")
        picked, starts = self._draw_plan(nonnegative_int("epoch", epoch))
        return [(self.splits[self._row_split_list[k]], self._rows_list[k], start) for k, start in zip(picked, starts)]

    def reading_from(self, arrays) -> "SegmentDataset":
        """A copy of this dataset whose rows come from ``arrays``, one per split.

        Each array takes ``crop(row, start, stop)`` like :meth:`cache.reader.FeatureCache.array`'s
        (e.g. rows held in memory): benchmarks use it to tell the reading from the rest.
        """
        arrays = tuple(arrays)
        if len(arrays) != len(self.splits):
            raise ValueError(f"reading_from: give one array per split {self.splits}, not {len(arrays)}")
        clone = copy.copy(self)
        clone._arrays = arrays
        return clone

    # -- items ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_clips * self.crops_per_clip if self.train else len(self._seg_clip)

    def _crop(self, k: int, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of usable row ``k`` (a view into the map where it can be)."""
        return self._arrays[self._row_split_list[k]].crop(self._rows_list[k], start, stop)

    def _segment(self, k: int, start: int) -> torch.Tensor:
        crop = self._crop(k, start, start + self.segment_frames)
        if self._mean is not None:
            # Centring writes the copy out of the read-only map: two passes over the
            # segment instead of three (copy, subtract, divide).
            x = np.subtract(crop, self._mean)
            x *= self._inv_std
        else:
            # One C-ordered copy out of the map; an h5py read is already a fresh array.
            x = crop if crop.flags.owndata and crop.flags.writeable else crop.copy()
        return torch.from_numpy(x)

    def _item_plan(self, indices) -> tuple[list[int], list[int], list[int]]:
        """(row, crop start, clip) of each item."""
        if self.train:
            picked, starts = self._epoch_plan()
            n = self.n_clips
            return [picked[i] for i in indices], [starts[i] for i in indices], [i % n for i in indices]
        clips = self._seg_clip[indices]
        return self._row_ptr[clips].tolist(), self._seg_start[indices].tolist(), clips.tolist()

    def get_batch(self, indices) -> tuple[torch.Tensor, ...]:
        """Items ``indices`` as one batch, the same values as stacking ``self[i]``.

        Crops are written straight into the batch array, so a batch costs one pass over
        its bytes plus one for the scale: what a DataLoader's per-item fetch and
        ``default_collate`` would copy twice more. Use it through :func:`batch_loader`.

        Returns ``(x, labels)`` for training, ``(x, labels, clip_ids)`` for evaluation;
        ``x`` is ``(batch, n_bins, segment_frames)`` or ``(batch, segment_samples)``.
        """
        indices = np.asarray(indices, dtype=np.int64)
        rows, starts, clips = self._item_plan(indices)
        x = cut_segments(self._crop, rows, starts, shape=self._row_shape[:-1],
                         segment_frames=self.segment_frames, mean=self._mean, inv_std=self._inv_std)
        labels = torch.as_tensor(self.clip_labels[clips], dtype=torch.int64)
        if self.train:
            return torch.from_numpy(x), labels
        return torch.from_numpy(x), labels, torch.as_tensor(clips, dtype=torch.int64)

    def __getitem__(self, index: int):
        if self.train:
            picked, starts = self._epoch_plan()
            x = self._segment(picked[index], starts[index])
            return x, self._label_tensors[self._clip_label_list[index % self.n_clips]]
        clip = int(self._seg_clip[index])
        x = self._segment(int(self._row_ptr[clip]), int(self._seg_start[index]))
        return (x, self._label_tensors[self._clip_label_list[clip]],
                torch.tensor(clip, dtype=torch.int64))

    def __getstate__(self):
        """Pickle without open maps or h5py handles; workers reopen the file lazily."""
        state = self.__dict__.copy()
        state["_plan"] = None  # cheap to redraw, identical by construction
        # The arrays and the cache drop their handles in their own __getstate__.
        return state

    # -- properties -----------------------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names; ``label`` values index this."""
        return self.cache.labels

    @property
    def n_clips(self) -> int:
        return len(self.clip_labels)

    @property
    def n_bins(self) -> int:
        """Frequency bins of a spectrogram feature; 1 (one channel) for waveforms."""
        return self._row_shape[0] if self.kind == SPECTROGRAM else 1

    @property
    def clip_frames(self) -> int:
        """Frames per cached clip (samples for waveforms)."""
        return self._row_shape[-1]

    @property
    def frames_per_second(self) -> float:
        """Frame rate of the feature (the sample rate for waveforms)."""
        settings = self.cache.feature_settings(self.parts[0])  # stacked parts share it
        if "frames_per_second" in settings:
            return float(settings["frames_per_second"])
        if self.kind == WAVEFORM:
            return float(settings.get("sample_rate", self.cache.sample_rate))
        raise ValueError(f"feature {self.feature!r} of cache {self.cache.path} does not record "
                         f"frames_per_second; rebuild the cache with the current build_cache.py")

    def __repr__(self) -> str:
        mode = "train" if self.train else f"eval hop={self.hop_frames}"
        return (f"SegmentDataset({str(self.cache.path)!r}, feature={self.feature!r}, "
                f"splits={self.splits}, segment_frames={self.segment_frames}, {mode}, "
                f"clips={self.n_clips}, items={len(self)})")


def _check_splits(cache: FeatureCache, splits) -> tuple[str, ...]:
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits={splits!r}: give one or more distinct splits of "
                         f"{cache.splits}")
    unknown = [s for s in splits if s not in cache.splits]
    if unknown:
        raise ValueError(f"cache {cache.path} has no split(s) {unknown} (available: "
                         f"{', '.join(cache.splits)})")
    return splits


def nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    return int(value)


class _Batches(Dataset):
    """A view of a SegmentDataset whose items are whole batches (see :func:`batch_loader`)."""

    def __init__(self, dataset: SegmentDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices):
        return self.dataset.get_batch(indices)


def batch_loader(dataset: SegmentDataset, *, sampler, batch_size: int, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader that fetches each batch with one :meth:`SegmentDataset.get_batch` call.

    ``sampler`` orders the items (a RandomSampler, a DistributedSampler, or a plain range);
    the batches equal those of ``DataLoader(dataset, batch_size, sampler=sampler)``.

    >>> loader = batch_loader(dataset, sampler=range(len(dataset)), batch_size=32)  # doctest: +SKIP
    """
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    # batch_size=None turns off per-item fetching and collation: each "item" is a batch.
    return DataLoader(_Batches(dataset), batch_size=None, sampler=batches, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False)


def make_loader(dataset: SegmentDataset, *, batch_size: int, shuffle: bool, workers: int,
                device: torch.device, seed: int, epoch: int = 0, ddp: Dist = Dist()) -> DataLoader:
    """The training loader (``shuffle``: an order fixed by seed and epoch, sharded under DDP)
    or a loader in dataset order."""
    if shuffle and ddp.world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=ddp.world,
                                                                  rank=ddp.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
    elif shuffle:
        # The order depends on (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = range(len(dataset))
    return batch_loader(dataset, sampler=sampler, batch_size=batch_size, workers=workers,
                        pin_memory=device.type == "cuda")


# -- the datasets of a run ------------------------------------------------------------------------
def open_cache(path, feature: str, *, expect_labels=None) -> FeatureCache:
    """The cache at ``path``, refused (:class:`TrainError`) unless it holds ``feature``
    (every part of it, stacking: :func:`stack_parts`) and ``expect_labels``, when given."""
    try:
        cache = FeatureCache(path, expect_labels=expect_labels)
        stack_parts(cache, feature)
    except CacheError as exc:
        raise TrainError(str(exc)) from exc
    return cache


def cache_read_lock(path):
    """A shared lock on the cache at ``path``, to hold for as long as it is read.

    A build takes the exclusive lock on the same file to write or replace it, so it
    waits for (is refused by) trainings and evaluations that read it, and they by it.
    A missing cache gets no lock (opening it says what to do), and neither does one in
    a folder where the lock file cannot be made: no build of this user can replace a
    file there either.
    """
    if not Path(path).is_file():
        return nullcontext()
    lock = FileLock(path, shared=True, what="cache", hint="a build is writing or replacing it")
    try:
        return lock.acquire()
    except OSError:
        return nullcontext()


def feature_frames_per_second(cache: FeatureCache, feature: str) -> float:
    """Frames per second of a cached feature (of stacked parts: theirs), as its stored description says."""
    return cache.feature_settings(stack_parts(cache, feature)[0])["frames_per_second"]


def train_dataset(cache: FeatureCache, *, feature: str, splits, segment_frames: int, crops_per_clip: int,
                  seed: int, mean, std) -> SegmentDataset:
    """Random segments of ``splits`` (originals and augmented copies); :class:`TrainError` if unusable."""
    try:
        return SegmentDataset(cache.path, feature=feature, splits=splits, train=True, seed=seed,
                              segment_frames=segment_frames, crops_per_clip=crops_per_clip,
                              mean=mean, std=std)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def eval_datasets(cache: FeatureCache, *, feature: str, segment_frames: int, hop_frames: int | None,
                  mean, std, splits=("valid", "test")) -> dict[str, SegmentDataset]:
    """Every segment of every original clip of each split; :class:`TrainError` if unusable."""
    try:
        return {split: SegmentDataset(cache.path, feature=feature, splits=(split,), train=False,
                                      segment_frames=segment_frames, hop_frames=hop_frames, mean=mean, std=std)
                for split in splits}
    except ValueError as exc:
        raise TrainError(str(exc)) from exc


def normalization(cache: FeatureCache, feature: str, *, splits) -> tuple[np.ndarray, np.ndarray]:
    """:func:`compute_normalization` of ``splits``; :class:`TrainError` if they have no usable rows."""
    try:
        return compute_normalization(cache, feature, splits=splits)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
