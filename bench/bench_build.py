"""Benchmark the cache build against itself and against a naive per-clip loop.

Generates one synthetic GTZAN-shaped set (30 s clips) and measures, in one run:

1. ``build_cache.py --jobs 1`` vs ``--jobs 2`` on the same set and flags, each
   into a fresh output file: time, clips/s and the speed-up.
2. The pipeline vs the loop many music-tagging repositories use: for each clip
   ``librosa.load(path, sr=..., duration=...)``, the same features computed by
   calling librosa directly with the pipeline's own settings, the same
   ``Augmenter`` and seeds for the augmented copies of training clips, and one
   ``np.save`` per clip, version and feature.  Compared at equal worker counts:
   one process (once with the libraries' default BLAS threads, once pinned to
   one thread like ``--jobs 1``), and ``joblib.Parallel(n_jobs=2)`` vs ``--jobs 2``.
3. Peak resident memory of the ``--jobs 2`` build on the set and on the set
   listed four times (symlinked copies under new names, so the extra clips cost
   no generation time and read from the same warm page cache).

Every build runs in its own Python subprocess (same environment for all), timed
from just before the build call to its return (imports excluded, worker start-up
included).  Peak RSS: ``getrusage(RUSAGE_SELF)`` of that subprocess (the writer,
exact), ``getrusage(RUSAGE_CHILDREN)`` after the worker pool is shut down and
reaped (the largest worker, exact), and a /proc poll every 0.25 s of the sum over
the process and its descendants (approximate).  CPU seconds of the build and of
everything else on the machine over the same span are shown too: on a shared
machine the wall-clock ratios mean something only when the latter is near zero.

Example::

    python bench/bench_build.py                       # about 3-4 minutes on 2 idle cores
    python bench/bench_build.py --clips-per-genre 6 --repeat 1 --features mel
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import joblib
import librosa
import numpy as np
import soundfile
from joblib.externals.loky import reusable_executor
from threadpoolctl import threadpool_info, threadpool_limits

ROOT = Path(__file__).resolve().parents[1]

from builder import build
from pipeline.augment import augment_seed, build_augmenter
from pipeline.features import build_feature, parse_feature_names
from pipeline.splits import LIST_FILES, read_split_lists
from synthetic import generate_dataset

SR, DURATION, SEED = 22050, 30.0, 0
COPIES = 4  # the memory check's larger set lists every clip this many times
POLL_SECONDS = 0.25
GOALS = {"speedup": 1.7, "vs_naive": 1.0, "memory": 1.2}


# -- naive loop: librosa called directly, as per-clip .npy scripts do -----------------------
def _naive_mel(y, *, sr, n_fft, hop_length, n_mels, fmin, fmax):
    power = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                           fmin=fmin, fmax=fmax, center=True, pad_mode="constant")
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)


def _naive_mfcc(y, *, sr, n_mfcc, deltas, **mel):
    # mfcc(y=...) would clip the log-mel at top_db=80; the pipeline does not clip.
    mfcc = librosa.feature.mfcc(S=_naive_mel(y, sr=sr, **mel), n_mfcc=n_mfcc)
    return np.concatenate([mfcc] + [librosa.feature.delta(mfcc, order=k) for k in range(1, deltas + 1)])


def _naive_chroma(y, *, sr, n_fft, hop_length, n_chroma, tuning):
    return librosa.feature.chroma_stft(y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_chroma=n_chroma,
                                       tuning=tuning, center=True, pad_mode="constant")


def _naive_cqt(y, *, sr, hop_length, fmin, n_bins, bins_per_octave):
    c = librosa.cqt(y, sr=sr, hop_length=hop_length, fmin=fmin, n_bins=n_bins,
                    bins_per_octave=bins_per_octave, tuning=0.0)
    return librosa.amplitude_to_db(np.abs(c), ref=1.0, amin=1e-5, top_db=None)


def _naive_wave(y, *, sr):
    return y


# Keyed like pipeline.features.FEATURES; each takes that feature's ``settings``.
NAIVE_FEATURES = {"mel": _naive_mel, "mfcc": _naive_mfcc, "chroma": _naive_chroma, "cqt": _naive_cqt,
                  "wave": _naive_wave}


def build_naive_feature(name: str, settings: dict):
    """The naive loop's function for feature ``name``: ``fn(y) -> array``.

    >>> from pipeline.features import build_feature
    >>> fn = build_naive_feature("mel", build_feature("mel").settings)
    """
    if name not in NAIVE_FEATURES:
        raise ValueError(f"no naive version of feature {name!r}; choose from {', '.join(NAIVE_FEATURES)}")
    compute = NAIVE_FEATURES[name]
    return lambda y: compute(y, **settings)


def naive_clip(root: str, split: str, listed: str, *, out: str, features: dict, augment, versions: int,
               seed: int, sr: int, duration: float) -> int:
    """Load one clip with librosa, compute and ``np.save`` every feature of every version."""
    path = Path(root) / listed
    if not path.exists():  # GTZAN lists name .wav, the files are .au
        path = path.with_suffix(".au")
    y, _ = librosa.load(path, sr=sr, duration=duration)
    fns = {name: build_naive_feature(name, settings) for name, settings in features.items()}
    stem = listed.replace("/", "__").rsplit(".", 1)[0]
    rows = 0
    for version in range(versions + 1 if split == "train" else 1):
        x = y if version == 0 else augment(y, seed=augment_seed(seed, listed, version))[0]
        for name, fn in fns.items():
            np.save(Path(out) / name / split / f"{stem}_v{version}.npy", fn(x))
        rows += 1
    return rows


def pipeline_work(features: str, augment: int) -> tuple[dict, object]:
    """The features and augmenter build_cache.py makes of ``--features features --augment
    augment`` and no other flag (the library's defaults), so both sides compute the same arrays."""
    return ({name: build_feature(name, sr=SR) for name in parse_feature_names(features)},
            build_augmenter(sr=SR) if augment else None)


def run_naive(*, data: str, out: str, features: str, augment: int, jobs: int,
              blas_threads: int | None = None) -> dict:
    built, augmenter = pipeline_work(features, augment)
    features = {name: feature.settings for name, feature in built.items()}
    todo = []
    for split, list_name in LIST_FILES.items():
        listed = Path(data, list_name).read_text(encoding="utf-8").split()
        todo += [(split, item) for item in listed]
        for name in features:
            Path(out, name, split).mkdir(parents=True, exist_ok=True)
    kwargs = dict(out=out, features=features, augment=augmenter, versions=augment, seed=SEED, sr=SR,
                  duration=DURATION)
    start = time.perf_counter()
    if jobs == 1:
        with threadpool_limits(limits=blas_threads):  # None: leave the pools as they are
            rows = [naive_clip(data, split, item, **kwargs) for split, item in todo]
    else:  # loky already gives each worker cores // jobs BLAS threads
        rows = joblib.Parallel(n_jobs=jobs)(joblib.delayed(naive_clip)(data, split, item, **kwargs)
                                            for split, item in todo)
    return {"seconds": time.perf_counter() - start, "clips": len(todo), "rows": sum(rows)}


def run_pipeline(*, data: str, out: str, features: str, augment: int, jobs: int,
                 backend: str = "loky") -> dict:
    """One build, as ``build_cache.py --features features --augment augment --jobs jobs
    --backend backend --overwrite`` runs it, timed: total seconds, and when the first and
    last worker results reached the writer (``first_s``, ``last_s``, from the build's start)."""
    built, augmenter = pipeline_work(features, augment)
    start = time.perf_counter()
    summary = build(data=data, out=out, features=built, augmenter=augmenter, versions=augment, seed=SEED, sr=SR,
                    duration=DURATION, jobs=jobs, overwrite=True, progress=False, backend=backend)
    seconds = time.perf_counter() - start
    clips = sum(len(Path(data, name).read_text(encoding="utf-8").split()) for name in LIST_FILES.values())
    return {"seconds": seconds, "clips": clips, "rows": summary.built_rows,
            "first_s": summary.first_result_s, "last_s": summary.last_result_s}


# -- child side: one measured build per subprocess -----------------------------------------------
def _descendants_rss_kb(pid: int) -> int:
    """Sum of VmRSS (kB) of ``pid`` and all its descendants, from /proc."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    parent[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


class TreeRssPoller:
    """Polls the summed RSS of this process tree in a thread; ``peak_kb`` is the max seen."""

    def __init__(self, interval: float = POLL_SECONDS):
        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _descendants_rss_kb(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def _reap_loky_workers() -> None:
    """Shut joblib's reusable worker pool down and wait, so RUSAGE_CHILDREN counts the workers."""
    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True)


def child_main(spec: dict) -> None:
    runner = {"pipeline": run_pipeline, "naive": run_naive}[spec.pop("kind")]
    before, machine = resource.getrusage(resource.RUSAGE_SELF), machine_cpu_seconds()
    with TreeRssPoller() as poller:
        result = runner(**spec)
    machine = [b - a for a, b in zip(machine, machine_cpu_seconds())]
    _reap_loky_workers()
    after, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                       + workers.ru_utime + workers.ru_stime)
    # What the rest of the machine did meanwhile: other jobs' CPU time, and capacity left unused.
    result["others_cpu_s"], result["idle_cpu_s"] = max(0.0, machine[0] - result["cpu_s"]), machine[1]
    result.update(rss_main_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  rss_worker_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  rss_tree_mb=poller.peak_kb / 1024)
    print("RESULT " + json.dumps(result), flush=True)


# -- parent side -----------------------------------------------------------------------------------
def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def measure(kind: str, **spec) -> dict:
    """Run one build in a fresh subprocess and return its RESULT dict."""
    remove(Path(spec["out"]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} build failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def make_copies(src: Path, dst: Path, copies: int) -> int:
    """Write a data root listing every clip of ``src`` ``copies`` times (symlinks under new names)."""
    lists = read_split_lists(src)
    total = 0
    for split, clips in lists.clips.items():
        lines = []
        for clip in clips:
            genre_dir = dst / clip.label
            genre_dir.mkdir(parents=True, exist_ok=True)
            stem = Path(clip.listed).stem
            for c in range(copies):
                link = genre_dir / f"{stem}.copy{c}{clip.path.suffix}"
                if not link.exists():
                    link.symlink_to(clip.path)
                lines.append(f"{clip.label}/{stem}.copy{c}{Path(clip.listed).suffix}")
        Path(dst, LIST_FILES[split]).write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        total += len(lines)
    return total


def check_same_features(cache: Path, naive_out: Path, *, features: str, n_clips: int = 3) -> dict:
    """Max |difference| between cache rows and the naive loop's .npy for a few train clips."""
    worst = {}
    with h5py.File(cache, "r") as f:
        group = f["train"]
        paths, versions = group["path"][...], group["version"][...]
        clips = group["clip"][...]
        for index in np.nonzero(clips < n_clips)[0]:
            stem = paths[index].decode().replace("/", "__").rsplit(".", 1)[0]
            for name in features.split(","):
                naive = np.load(naive_out / name / "train" / f"{stem}_v{versions[index]}.npy")
                diff = float(np.abs(group["features"][name][index] - naive).max())
                worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def environment() -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = ", ".join(sorted({f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)"
                             for p in threadpool_info()})) or "none loaded"
    threads = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return [
        f"- machine: {platform.machine()}, {cores} usable cores (os.cpu_count {os.cpu_count()}), "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, librosa {librosa.__version__}, "
        f"soundfile {soundfile.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
        f"joblib {joblib.__version__}",
        f"- thread pools in this process: {blas}; environment: {threads}",
    ]


def summarise(runs: list[dict]) -> dict:
    """The run with the median time (over repeats); memory peaks are the max over repeats."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["all_seconds"] = [r["seconds"] for r in runs]
    for key in ("rss_main_mb", "rss_worker_mb", "rss_tree_mb"):
        out[key] = max(r[key] for r in runs)
    return out


def steady_rate(r: dict) -> float:
    """Clips/s after the first result reached the writer (worker start-up excluded)."""
    return (r["clips"] - 1) / (r["seconds"] - r["first_s"])


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| build | clips | rows | time s | clips/s | CPU s, all processes | first clip written at s | "
             "peak RSS main MB | peak RSS largest worker MB | peak RSS tree MB (polled) | "
             "other processes' CPU s meanwhile | idle CPU s meanwhile |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in rows:
        spread = ", ".join(f"{s:.1f}" for s in r["all_seconds"]) if len(r["all_seconds"]) > 1 else ""
        worker = f"{r['rss_worker_mb']:.0f}" if r["workers"] > 1 else "-"
        first = f"{r['first_s']:.1f}" if r.get("first_s") is not None else "-"
        lines.append(f"| {label} | {r['clips']} | {r['rows']} | {r['seconds']:.1f}"
                     f"{f' (runs: {spread})' if spread else ''} | {r['clips'] / r['seconds']:.2f} | "
                     f"{r['cpu_s']:.1f} | {first} | {r['rss_main_mb']:.0f} | {worker} | {r['rss_tree_mb']:.0f} | "
                     f"{r['others_cpu_s']:.1f} | {r['idle_cpu_s']:.1f} |")
    return "\n".join(lines)


def verdict(value: float, goal: float, *, at_most: bool = False) -> str:
    ok = value <= goal if at_most else value >= goal
    return f"{'meets' if ok else 'MISSES'} goal {'<=' if at_most else '>='} {goal}"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips-per-genre", type=int, default=25,
                   help="clips per genre of the synthetic set, 8 genres, 30 s each (default: %(default)s)")
    p.add_argument("--features", default="mel,mfcc", help="features to build (default: %(default)s)")
    p.add_argument("--augment", type=int, default=1,
                   help="augmented copies per training clip, on both sides (default: %(default)s)")
    p.add_argument("--workdir", help="where data and outputs go (default: a temporary folder, removed)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each timed build; the median is shown")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


# name -> (what runs, workers, BLAS threads of a single process (None: library default), table label)
BUILDS = {
    "pipeline_j1": ("pipeline", 1, None, "pipeline `--jobs 1`"),
    "pipeline_j2": ("pipeline", 2, None, "pipeline `--jobs 2`"),
    "naive_j1": ("naive", 1, None, "naive loop, 1 process, default BLAS threads"),
    "naive_j1_blas1": ("naive", 1, 1, "naive loop, 1 process, BLAS pinned to 1 thread"),
    "naive_j2": ("naive", 2, None, "naive loop, joblib 2 workers"),
}


def output_path(work: Path, name: str) -> Path:
    return work / (f"{name}.h5" if BUILDS[name][0] == "pipeline" else name)


def run_builds(work: Path, spec: dict, repeat: int) -> dict[str, dict]:
    """Every build of BUILDS ``repeat`` times, interleaved so a load change hits all alike."""
    runs = {name: [] for name in BUILDS}
    for _ in range(repeat):
        for name, (kind, jobs, blas, _label) in BUILDS.items():
            extra = {"blas_threads": blas} if kind == "naive" else {}
            runs[name].append(measure(kind, out=str(output_path(work, name)), jobs=jobs, **spec, **extra))
    return {name: summarise(r) | {"workers": BUILDS[name][1]} for name, r in runs.items()}


def print_ratios(res: dict, big: dict, diffs: dict) -> None:
    p1, p2, n2 = res["pipeline_j1"], res["pipeline_j2"], res["naive_j2"]
    speedup = p1["seconds"] / p2["seconds"]
    print(f"- speed-up `--jobs 2` / `--jobs 1`: {speedup:.2f}x ({verdict(speedup, GOALS['speedup'])}; "
          f"2x is the limit on 2 cores); after the first written clip (worker start-up excluded): "
          f"{steady_rate(p2) / steady_rate(p1):.2f}x; CPU s `--jobs 2` / `--jobs 1`: {p2['cpu_s'] / p1['cpu_s']:.2f}x")
    for name in ("naive_j1", "naive_j1_blas1"):
        n1 = res[name]
        ratio = n1["seconds"] / p1["seconds"]
        print(f"- {BUILDS[name][3]} / pipeline `--jobs 1`, time: {ratio:.2f}x ({verdict(ratio, GOALS['vs_naive'])};"
              f" > 1 means the pipeline is faster); CPU s: {n1['cpu_s'] / p1['cpu_s']:.2f}x")
    ratio = n2["seconds"] / p2["seconds"]
    print(f"- {BUILDS['naive_j2'][3]} / pipeline `--jobs 2`, time: {ratio:.2f}x "
          f"({verdict(ratio, GOALS['vs_naive'])}); CPU s: {n2['cpu_s'] / p2['cpu_s']:.2f}x")
    mem = {key: big[key] / p2[key] for key in ("rss_main_mb", "rss_worker_mb", "rss_tree_mb")}
    print(f"- peak RSS at {COPIES}x clips / 1x, `--jobs 2`: writer {mem['rss_main_mb']:.2f}x "
          f"({verdict(mem['rss_main_mb'], GOALS['memory'], at_most=True)}), largest worker "
          f"{mem['rss_worker_mb']:.2f}x, whole tree {mem['rss_tree_mb']:.2f}x")
    print(f"- throughput at {COPIES}x vs 1x, `--jobs 2`: "
          f"{(big['clips'] / big['seconds']) / (p2['clips'] / p2['seconds']):.2f}x clips/s "
          f"(after the first written clip: {steady_rate(big) / steady_rate(p2):.2f}x)")
    print("- same features: max |cache - naive .npy| over the first 3 training clips (all versions): "
          + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))


NOTES = ("Notes: times run from the build call to its return inside a fresh subprocess (imports excluded, "
         "worker start-up included); CPU s is user + system time of the subprocess and its reaped workers "
         "over the same span, which other load on the machine barely changes. The last two columns are the "
         "rest of the machine over the same span (from /proc/stat): on an otherwise idle machine 'other' is "
         "near 0; when it is not, wall-clock ratios are skewed and the CPU s ratios are the ones to trust. "
         "The pipeline's --jobs 1 pins "
         "BLAS/OpenMP to 1 thread itself; the naive single process runs once with the libraries' default "
         "pools and once pinned to 1 thread. The naive side reads the split lists without validation and "
         "writes one .npy per clip, version and feature; the pipeline writes one HDF5 file through one "
         "writer process. The {copies}x set is symlinks to the same files under new names, so reads are "
         "equally warm.")


def main(args) -> None:
    if args.clips_per_genre < 4:
        raise SystemExit(f"--clips-per-genre {args.clips_per_genre}: the synthetic set needs at least 4")
    if args.repeat < 1 or args.augment < 0:
        raise SystemExit(f"--repeat {args.repeat} / --augment {args.augment}: need --repeat >= 1, --augment >= 0")
    try:
        names = parse_feature_names(args.features)
    except ValueError as exc:
        raise SystemExit(f"--features {args.features!r}: {exc}") from exc
    unknown = [n for n in names if n not in NAIVE_FEATURES]
    if unknown:
        raise SystemExit(f"--features: no naive version of {unknown}; choose from {', '.join(NAIVE_FEATURES)}")
    features = ",".join(names)
    bench_start = time.perf_counter()
    owned = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench_build_") if owned else args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("## Environment\n")
        print("\n".join(environment()))
        start, data = time.perf_counter(), work / "data"
        generated = generate_dataset(data, clips_per_genre=args.clips_per_genre, seconds=DURATION, seed=SEED,
                                     sr=SR, jobs=-1)
        print(f"- data: {generated['n_clips']} synthetic clips of {DURATION:g} s at {SR} Hz "
              f"(train/valid/test {'/'.join(str(v) for v in generated['splits'].values())}), "
              f"generated in {time.perf_counter() - start:.1f} s")
        print(f"- build: --features {features} --augment {args.augment} (training clips only; the naive loop "
              f"uses the same Augmenter and seeds); {args.repeat} run(s) of each timed build, interleaved")

        spec = dict(data=str(data), features=features, augment=args.augment)
        res = run_builds(work, spec, args.repeat)
        diffs = check_same_features(output_path(work, "pipeline_j1"), output_path(work, "naive_j1"),
                                    features=features)
        for name in BUILDS:  # free the disk before the big build
            remove(output_path(work, name))
        data4 = work / f"data_x{COPIES}"
        n4 = make_copies(data, data4, COPIES)
        big = measure("pipeline", out=str(work / "pipeline_x4.h5"), jobs=2, **{**spec, "data": str(data4)})
        remove(work / "pipeline_x4.h5")
        big = summarise([big]) | {"workers": 2}

        print("\n## Results\n")
        print(table([(BUILDS[name][3], r) for name, r in res.items()]
                    + [(f"pipeline `--jobs 2`, set listed {COPIES}x ({n4} clips)", big)]))
        print("\n## Ratios\n")
        print_ratios(res, big, diffs)
        print("\n" + NOTES.format(copies=COPIES))
        print(f"\nWhole bench: {time.perf_counter() - bench_start:.0f} s "
              f"(load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    cli = get_args_parser().parse_args()
    if cli.child:
        child_main(json.loads(cli.child))
    else:
        main(cli)
