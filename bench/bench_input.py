"""Input pipeline cost: one cnn1d training epoch fed by the real loader vs by tensors in RAM.

    python bench/bench_input.py [--clips 400] [--epochs 3] [--workers 0]

Builds a temporary cache of random log-mel-shaped rows with the cache writer (the
loader's cost does not depend on the values), then times the same training epochs
twice, alternating: (a) SegmentDataset over the memory-mapped cache through a
DataLoader, exactly as train.py does (``training.data.make_loader``); (b) the same
number of batches of the same shape taken from one tensor already in memory. Prints
the time per epoch of each and the ratio (a)/(b).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


from cache.reader import FeatureCache
from models import build_model
from random_cache import write_random_cache
from training.data import SegmentDataset, compute_normalization, make_loader

LABELS = ["a", "b", "c", "d", "e", "f", "g", "h"]


def train_epoch(model, optimizer, batches) -> int:
    model.train()
    seen = 0
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def in_memory_batches(tensor: torch.Tensor, labels: torch.Tensor, *, batch_size: int, segment: int,
                      generator: torch.Generator):
    """Random crops of the same shape as the loader's, sliced from one tensor in RAM."""
    n, _, frames = tensor.shape
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        offset = int(torch.randint(0, frames - segment + 1, (1,), generator=generator))
        yield tensor[idx, :, offset:offset + segment], labels[idx]


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        write_random_cache(path, clips=args.clips, n_bins=args.n_bins, frames=args.frames, labels=LABELS,
                           eval_clips=8)
        cache = FeatureCache(path)
        mean, std = compute_normalization(cache, "mel")
        dataset = SegmentDataset(path, feature="mel", segment_frames=args.segment, train=True, mean=mean, std=std)
        # Normalised like the loader's output, so both arms feed the model the same values.
        rows = cache.array("train", "mel")
        ram = torch.from_numpy(np.stack([(np.asarray(rows[i]) - mean) / std for i in range(args.clips)]))
        labels = torch.from_numpy(cache.rows("train")["label"].astype(np.int64))
        model = build_model("cnn1d", n_bins=args.n_bins, n_classes=len(LABELS))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times = {"loader": [], "ram": []}
        device = torch.device("cpu")
        for epoch in range(args.epochs + 1):  # epoch 0 warms up caches and allocators
            dataset.set_epoch(epoch)
            loader = make_loader(dataset, batch_size=args.batch_size, shuffle=True, workers=args.workers,
                                 device=device, seed=0, epoch=epoch)
            gen = torch.Generator().manual_seed(epoch)
            arms = {"loader": loader,
                    "ram": in_memory_batches(ram, labels, batch_size=args.batch_size, segment=args.segment,
                                             generator=gen)}
            # Alternate which arm goes first, so drift in machine load hits both alike.
            order = ("loader", "ram") if epoch % 2 else ("ram", "loader")
            took = {}
            for arm in order:
                start = time.perf_counter()
                train_epoch(model, optimizer, arms[arm])
                took[arm] = time.perf_counter() - start
            loader_s, ram_s = took["loader"], took["ram"]
            if epoch:
                times["loader"].append(loader_s)
                times["ram"].append(ram_s)
    loader_s, ram_s = float(np.median(times["loader"])), float(np.median(times["ram"]))
    print(f"cnn1d epoch of {args.clips} segments ({args.n_bins} x {args.segment} frames, batch {args.batch_size}), "
          f"{args.threads} torch threads, {args.workers} loader workers, {os.cpu_count()} cores")
    print("| fed by | seconds per epoch (median of %d) |" % args.epochs)
    print("| --- | --- |")
    print(f"| SegmentDataset + DataLoader (memory map) | {loader_s:.3f} |")
    print(f"| tensors already in RAM | {ram_s:.3f} |")
    print(f"ratio loader / in-RAM: {loader_s / ram_s:.2f}x (goal <= 1.10x)")
    return {"loader_s": loader_s, "ram_s": ram_s, "ratio": loader_s / ram_s}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=400, help="training clips (default: %(default)s)")
    p.add_argument("--n-bins", type=int, default=128, help="mel bins (default: %(default)s)")
    p.add_argument("--frames", type=int, default=1292, help="frames per clip, 30 s (default: %(default)s)")
    p.add_argument("--segment", type=int, default=130, help="segment frames, 3 s (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="timed epochs (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
