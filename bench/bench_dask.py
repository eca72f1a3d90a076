"""Benchmark the Dask backend of the cache build against the local (loky) backend.

Same machine, same synthetic GTZAN-shaped set (30 s clips), same flags and the same
number of workers: ``build_cache.py --jobs N`` (loky) vs ``build_cache.py --backend
dask --jobs N`` (a ``distributed.LocalCluster`` of N single-threaded workers, started
by the build). The ratio of the two times is the engine's overhead. Both files must
come out identical; the script checks it.

Every build runs in its own Python subprocess (``bench_build.py``'s timed build, the one
its own table measures), timed from just before the build call to its return: imports
excluded, worker (and cluster) start-up included. The time
until the first result reaches the writer is reported too, so start-up and
steady-state throughput can be told apart. Repeats are interleaved, so a change in
the machine's load hits both backends alike.

Example::

    python bench/bench_dask.py                         # about 2 minutes on 2 cores
    python bench/bench_dask.py --clips-per-genre 4 --repeat 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from cache.format import partial_path
from synthetic import generate_dataset

SR, DURATION, SEED = 22050, 30.0, 0
BACKENDS = ("loky", "dask")
# Runs one timed build per subprocess (a command line, not an import: bench scripts import packages only).
TIMED_BUILD = ROOT / "bench" / "bench_build.py"


def measure(**spec) -> dict:
    """Run one build in a fresh subprocess and return its RESULT dict.

    ``cpu_s`` there is the CPU of that process and its reaped children (loky workers; a
    LocalCluster's nannies).
    """
    out = Path(spec["out"])
    for path in (out, partial_path(out)):
        path.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(TIMED_BUILD), "--child", json.dumps({"kind": "pipeline", **spec})],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['backend']} build failed (exit {proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def same_content(a: Path, b: Path) -> bool:
    """Every dataset and root attribute equal (what tests/test_build_cache.py compares)."""
    import h5py
    import numpy as np

    def contents(path):
        found = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.__setitem__(name, obj[...])
                         if isinstance(obj, h5py.Dataset) else None)
            found["/attrs"] = {k: str(f.attrs[k]) for k in f.attrs}
        return found

    left, right = contents(a), contents(b)
    if sorted(left) != sorted(right) or left.pop("/attrs") != right.pop("/attrs"):
        return False
    return all(np.array_equal(left[name], right[name]) for name in left)


def steady_rate(r: dict) -> float:
    """Clips/s from the first result to the last (start-up excluded)."""
    return (r["clips"] - 1) / max(r["last_s"] - r["first_s"], 1e-9)


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return dict(ordered[(len(ordered) - 1) // 2], all_seconds=[r["seconds"] for r in runs])


def environment(jobs: int) -> list[str]:
    import dask
    import distributed
    import joblib

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [f"- machine: {platform.machine()}, {cores} usable cores, load average "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {jobs} workers on each side",
            f"- Python {platform.python_version()}, joblib {joblib.__version__}, dask {dask.__version__}, "
            f"distributed {distributed.__version__}"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips-per-genre", type=int, default=10,
                   help="clips per genre of the synthetic set, 8 genres, 30 s each (default: %(default)s)")
    p.add_argument("--features", default="mel", help="features to build (default: %(default)s)")
    p.add_argument("--augment", type=int, default=1,
                   help="augmented copies per training clip, on both sides (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="workers of either backend (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each build; the median is shown")
    p.add_argument("--workdir", help="where data and outputs go (default: a temporary folder, removed)")
    return p


def main(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_dask_"))
    try:
        data = work / "data"
        generate_dataset(data, clips_per_genre=args.clips_per_genre, seconds=DURATION, seed=SEED, sr=SR)
        spec = dict(data=str(data), features=args.features, augment=args.augment, jobs=args.jobs)
        runs = {backend: [] for backend in BACKENDS}
        for _ in range(args.repeat):
            for backend in BACKENDS:
                runs[backend].append(measure(out=str(work / f"{backend}.h5"), backend=backend, **spec))
        res = {backend: median_run(r) for backend, r in runs.items()}
        identical = same_content(work / "loky.h5", work / "dask.h5")
        report(res, identical, args)
        return {"results": res, "identical": identical}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def report(res: dict, identical: bool, args) -> None:
    loky, dask = res["loky"], res["dask"]
    print("\n".join(environment(args.jobs)))
    print(f"- set: 8 genres x {args.clips_per_genre} clips x {DURATION:.0f} s, features {args.features}, "
          f"--augment {args.augment}; {loky['clips']} clips, {loky['rows']} rows\n")
    print("| backend | time s | clips/s | first clip written at s | steady clips/s | CPU s (this process "
          "and reaped children) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in res.items():
        runs = ", ".join(f"{s:.1f}" for s in r["all_seconds"])
        print(f"| {name} `--jobs {args.jobs}` | {r['seconds']:.1f} (runs: {runs}) | "
              f"{r['clips'] / r['seconds']:.2f} | {r['first_s']:.1f} | {steady_rate(r):.2f} | {r['cpu_s']:.1f} |")
    print(f"\ndask / loky time: {dask['seconds'] / loky['seconds']:.2f}x  "
          f"(start-up: first clip at {dask['first_s']:.1f} s vs {loky['first_s']:.1f} s; "
          f"steady state: {steady_rate(loky) / steady_rate(dask):.2f}x)")
    print(f"files identical: {identical}")


if __name__ == "__main__":
    result = main(get_args_parser().parse_args())
    sys.exit(0 if result["identical"] else 1)
