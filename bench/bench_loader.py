"""Benchmark random segment crops out of a feature cache.

Builds a temporary cache of random log-mel-sized rows (with the cache writer) and
measures, in one run and on the same crops, how many crops per second come from:

* SegmentDataset indexing with the memmap backend (the training path),
* the same crops from a numpy array already in RAM (the ceiling),
* per-item h5py reads ``dset[i, :, t:t+S]`` (what the memmap replaces),
* optionally a DataLoader over SegmentDataset with 0, 1 and 2 workers (batch 32).

The file was just written, so reads come from a warm page cache.

Example::

    python bench/bench_loader.py --clips 200 --frames 1292 --segment 130 --seconds 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


from cache.reader import FeatureCache
from random_cache import write_random_cache
from training.data import SegmentDataset, batch_loader

LABELS = [f"genre{i}" for i in range(10)]
GOAL_VS_RAM, GOAL_VS_H5PY = 0.8, 3.0


def crops_per_second(read, crops, seconds: float) -> float:
    """Call ``read(row, start)`` over ``crops`` (cycling) for about ``seconds``; rate."""
    done, start = 0, time.perf_counter()
    while True:
        for row, t in crops:
            read(row, t)
        done += len(crops)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def items_per_second(dataset: SegmentDataset, seconds: float) -> float:
    """Index the dataset epoch after epoch (new random crops each epoch) for ``seconds``."""
    done, epoch, start = 0, 0, time.perf_counter()
    while True:
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            dataset[i]
        done += len(dataset)
        epoch += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def loader_items_per_second(dataset: SegmentDataset, *, workers: int, batch: int,
                            seconds: float, batched: bool = False) -> float:
    """Samples per second through a DataLoader, timed from the first batch (so worker
    start-up is not counted). ``batched``: train.py's loader (one get_batch per batch)
    instead of per-item fetch plus default_collate."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    if batched:
        loader = batch_loader(dataset, sampler=sampler, batch_size=batch, workers=workers)
    else:
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    done, start = 0, None
    for x, _ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        done += len(x)
        if time.perf_counter() - start >= seconds:
            break
    return done / (time.perf_counter() - start)


class InRamArray:
    """The crop interface of cache.reader's arrays over a numpy array in RAM."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def crop(self, index: int, start: int, stop: int) -> np.ndarray:
        return self.data[index, ..., start:stop]


def epoch_crops(dataset: SegmentDataset, epochs: int) -> list[tuple[int, int]]:
    """The (row, start) crops the dataset draws in its first ``epochs`` epochs."""
    return [(row, start) for epoch in range(epochs) for _, row, start in dataset.training_crops(epoch)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=200, help="clips in the train split")
    parser.add_argument("--frames", type=int, default=1292, help="frames per clip (30 s log-mel)")
    parser.add_argument("--bins", type=int, default=128, help="mel bins")
    parser.add_argument("--segment", type=int, default=130, help="crop length in frames")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all methods; "
                        "the median round is reported")
    parser.add_argument("--no-loader", action="store_true", help="skip the DataLoader rows")
    parser.add_argument("--dir", default=None, help="where to write the temporary cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench_cache.h5"
        t0 = time.perf_counter()
        write_random_cache(path, clips=args.clips, n_bins=args.bins, frames=args.frames, labels=LABELS,
                           loc=-30.0, scale=10.0)
        size_mb = path.stat().st_size / 2**20
        print(f"cache: {args.clips} clips x {args.bins} x {args.frames} float32 = "
              f"{size_mb:.0f} MiB,"
              f" written in {time.perf_counter() - t0:.1f} s; crops of {args.segment} frames, "
              f"{args.seconds:g} s per measurement x {args.rounds} rounds, warm page cache")

        dataset = SegmentDataset(path, feature="mel", segment_frames=args.segment, train=True,
                                 backend="memmap")
        dataset_h5 = SegmentDataset(path, feature="mel", segment_frames=args.segment, train=True,
                                    backend="h5py")
        crops = epoch_crops(dataset, epochs=max(1, 5000 // args.clips))
        mapped = FeatureCache(path).array("train", "mel", backend="memmap")
        in_ram = np.array(mapped)
        # The same dataset code reading from RAM isolates what the memory map costs.
        dataset_ram = dataset.reading_from([InRamArray(in_ram)])
        S = args.segment

        def from_ram(row, t):
            return torch.from_numpy(np.ascontiguousarray(in_ram[row, :, t:t + S]))

        def from_memmap(row, t):
            return torch.from_numpy(np.ascontiguousarray(mapped.crop(row, t, t + S)))

        with h5py.File(path, "r") as f:
            dset = f["train/features/mel"]

            def from_h5py(row, t):
                return torch.from_numpy(dset[row, :, t:t + S])

            methods = {
                "numpy array in RAM": lambda: crops_per_second(from_ram, crops, args.seconds),
                "memmap crop (MemmapArray.crop)":
                    lambda: crops_per_second(from_memmap, crops, args.seconds),
                "SegmentDataset[i], memmap": lambda: items_per_second(dataset, args.seconds),
                "SegmentDataset[i], rows in RAM":
                    lambda: items_per_second(dataset_ram, args.seconds),
                "h5py dset[i, :, t:t+S]": lambda: crops_per_second(from_h5py, crops, args.seconds),
                "SegmentDataset[i], h5py backend":
                    lambda: items_per_second(dataset_h5, args.seconds),
            }
            if not args.no_loader:
                for workers in (0, 1, 2):
                    methods[f"DataLoader batch 32, {workers} workers"] = (
                        lambda w=workers: loader_items_per_second(dataset, workers=w, batch=32,
                                                                  seconds=args.seconds))
                    methods[f"batch_loader (train.py) batch 32, {workers} workers"] = (
                        lambda w=workers: loader_items_per_second(dataset, workers=w, batch=32,
                                                                  seconds=args.seconds, batched=True))
            # Rounds interleave the methods so a burst of load elsewhere hits them alike.
            rates = {name: [] for name in methods}
            for _ in range(args.rounds):
                for name, measure in methods.items():
                    rates[name].append(measure())
        results = {name: float(np.median(r)) for name, r in rates.items()}

    width = max(map(len, results))
    print(f"\n{'method':<{width}}  crops/s (median)   min - max over {args.rounds} rounds")
    for name, rate in results.items():
        low, high = min(rates[name]), max(rates[name])
        print(f"{name:<{width}}  {rate:>9,.0f}   {low:>9,.0f} - {high:,.0f}")
    ram, h5 = results["numpy array in RAM"], results["h5py dset[i, :, t:t+S]"]
    ds = results["SegmentDataset[i], memmap"]
    raw = results["memmap crop (MemmapArray.crop)"]
    ds_ram = results["SegmentDataset[i], rows in RAM"]
    print(f"\nmemmap crop / in-RAM crop:      {raw / ram:5.2f}x")
    print(f"SegmentDataset memmap / same dataset on RAM rows: {ds / ds_ram:5.2f}x")
    print(f"SegmentDataset memmap / in-RAM: {ds / ram:5.2f}x  (goal >= {GOAL_VS_RAM}x: "
          f"{'met' if ds / ram >= GOAL_VS_RAM else 'NOT met'})")
    print(f"SegmentDataset memmap / h5py:   {ds / h5:5.2f}x  (goal >= {GOAL_VS_H5PY}x: "
          f"{'met' if ds / h5 >= GOAL_VS_H5PY else 'NOT met'})")


if __name__ == "__main__":
    main()
