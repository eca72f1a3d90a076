"""Run named training recipes over several seeds, the experiments behind the defaults.

    python bench/sweep.py --caches data/caches --runs runs/gm --only course,default --seeds 0,1,2
    python report.py runs/gm/* --out runs/gm/report.md

Each recipe is a cache (a name in CACHES, built by the build_cache.py flags given
there, in ``--caches``) and train.py flags. Every (recipe, seed) becomes one
``train.py`` process writing ``RUNS/<recipe>_s<seed>``; finished runs (with a
results.json) are skipped, so an interrupted sweep picks up where it stopped.
``--parallel 2`` runs two trainings at once, each with half of the cores' threads.
The recipes trained on the gamemusic set are listed in the README's results section.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> build_cache.py flags (beside --data and --out). Every setting the study varied is
# spelled out, so a recipe stays what it was when the defaults change.
STUDY = ["--n-fft", "1024", "--augment", "0"]  # the defaults before the study
CACHES = {
    "default": [],
    "a0": [*STUDY, "--features", "mel,mfcc,cqt"],
    "a4": [*STUDY, "--features", "mel,mfcc,cqt", "--augment", "4"],
    "a8": [*STUDY, "--features", "mel", "--augment", "8"],
    "wave": ["--augment", "0", "--features", "wave"],
    "a4_cqt96": ["--features", "cqt", "--cqt-bins", "96", "--augment", "4"],
    "a0_fft2048": [*STUDY, "--features", "mel", "--n-fft", "2048"],
    "a0_hop256": [*STUDY, "--features", "mel", "--hop-length", "256"],
    "a0_mel64": [*STUDY, "--features", "mel", "--n-mels", "64"],
}

# The course's baseline, and the first modern recipe every variant below starts from.
COURSE = ["--feature", "mel", "--model", "cnn1d", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
          "--weight-decay", "0", "--schedule", "plateau", "--lr-patience", "3", "--lr-factor", "0.2",
          "--warmup-epochs", "0", "--crops-per-clip", "1", "--mask-bins", "0", "--mask-frames", "0",
          "--segment-seconds", "3", "--epochs", "30"]
MODERN = ["--feature", "mel", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-2",
          "--schedule", "cosine", "--warmup-epochs", "1", "--crops-per-clip", "8", "--mask-bins", "0",
          "--mask-frames", "0", "--epochs", "30", "--segment-seconds", "3"]

# name -> (cache, train.py flags); later flags win over earlier ones
RECIPES = {
    "course": ("a0", COURSE),
    "course_crops8": ("a0", COURSE + ["--crops-per-clip", "8"]),
    "cnn1d_modern": ("a0", MODERN + ["--model", "cnn1d"]),
    "cnn1d_a4": ("a4", MODERN + ["--model", "cnn1d"]),
    "cnn1d_a4_5s": ("a4", MODERN + ["--model", "cnn1d", "--segment-seconds", "5"]),
    "cnn1d_a4_mfcc": ("a4", MODERN + ["--model", "cnn1d", "--feature", "mfcc"]),
    "cnn1d_a4_cqt": ("a4", MODERN + ["--model", "cnn1d", "--feature", "cqt"]),
    "cnn1d_a4_crops16": ("a4", MODERN + ["--model", "cnn1d", "--crops-per-clip", "16"]),
    "cnn1d_a4_sgd": ("a4", MODERN + ["--model", "cnn1d", "--optimizer", "sgd", "--lr", "0.01",
                                     "--weight-decay", "1e-4"]),
    "cnn1d_a4_wide": ("a4", MODERN + ["--model", "cnn1d", "--model-set", "channels=128"]),
    "cnn1d_a4_plateau": ("a4", MODERN + ["--model", "cnn1d", "--schedule", "plateau", "--lr-patience", "3"]),
    "cnn1d_a4_ep60": ("a4", MODERN + ["--model", "cnn1d", "--epochs", "60"]),
    "cnn1d_a4_full": ("a4", MODERN + ["--model", "cnn1d", "--segment-seconds", "30", "--crops-per-clip", "1",
                                      "--epochs", "100", "--batch-size", "16"]),
    "cnn1d_a4_evalhop": ("a4", MODERN + ["--model", "cnn1d", "--eval-hop-seconds", "1"]),
    "cnn1d_a4_drop3": ("a4", MODERN + ["--model", "cnn1d", "--dropout", "0.3"]),
    "cnn1d_a4_adam": ("a4", MODERN + ["--model", "cnn1d", "--optimizer", "adam", "--weight-decay", "0"]),
    "cnn1d_a4_mask": ("a4", MODERN + ["--model", "cnn1d", "--mask-bins", "16", "--mask-frames", "20"]),
    "cnn1d_a4_mask_mixup": ("a4", MODERN + ["--model", "cnn1d", "--mask-bins", "16", "--mask-frames", "20",
                                            "--mixup", "0.2"]),
    "cnn1d_cqt": ("a0", MODERN + ["--model", "cnn1d", "--feature", "cqt"]),
    "cnn1d_a4_cqt_5s": ("a4", MODERN + ["--model", "cnn1d", "--feature", "cqt", "--segment-seconds", "5"]),
    "cnn1d_a4_cqt_mask": ("a4", MODERN + ["--model", "cnn1d", "--feature", "cqt", "--mask-bins", "12",
                                          "--mask-frames", "20"]),
    "cnn1d_fft2048_mask": ("a0_fft2048", MODERN + ["--model", "cnn1d", "--mask-bins", "16",
                                                   "--mask-frames", "20"]),
    "cnn1d_a4_cqt96_mask": ("a4_cqt96", MODERN + ["--model", "cnn1d", "--feature", "cqt", "--mask-bins", "12",
                                                  "--mask-frames", "20"]),
    "cnn1d_a8": ("a8", MODERN + ["--model", "cnn1d"]),
    "cnn1d_fft2048": ("a0_fft2048", MODERN + ["--model", "cnn1d"]),
    "cnn1d_hop256": ("a0_hop256", MODERN + ["--model", "cnn1d"]),
    "cnn1d_mel64": ("a0_mel64", MODERN + ["--model", "cnn1d"]),
    "cnn1d_a4_mixup": ("a4", MODERN + ["--model", "cnn1d", "--mixup", "0.2"]),
    "samplecnn_wave": ("wave", MODERN + ["--model", "samplecnn", "--feature", "wave", "--crops-per-clip", "2",
                                         "--epochs", "15"]),
    "cnn2d_a4": ("a4", MODERN + ["--model", "cnn2d", "--crops-per-clip", "4", "--epochs", "15"]),
    "resnet_a4": ("a4", MODERN + ["--model", "resnet", "--crops-per-clip", "4", "--epochs", "15"]),
    "crnn_a4": ("a4", MODERN + ["--model", "crnn", "--crops-per-clip", "4", "--epochs", "15"]),
    # What build_cache.py and train.py do with no flags, and its final model on train + valid.
    "default": ("default", []),
    "default_merged": ("default", ["--merge-train-valid"]),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/gamemusic", help="GTZAN-style data folder (default: %(default)s)")
    p.add_argument("--caches", default="data/caches", help="folder of the caches, <name>.h5 (default: %(default)s)")
    p.add_argument("--runs", default="runs/sweep", help="folder of the run folders (default: %(default)s)")
    p.add_argument("--only", default=None, help="comma-separated recipe names (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    return p


def selected(only: str | None) -> list[str]:
    names = list(RECIPES) if only is None else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"error: unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    return names


def ensure_cache(name: str, args) -> Path:
    """Build cache ``name`` unless it is there (build_cache.py does nothing when it is)."""
    path = Path(args.caches) / f"{name}.h5"
    built = subprocess.run([sys.executable, str(ROOT / "build_cache.py"), "--data", args.data, "--out", str(path),
                            "--no-progress", *CACHES[name]])
    if built.returncode:
        raise SystemExit(f"error: building cache {name!r} ({path}) failed; see build_cache.py's message above")
    return path


def train_command(recipe: str, seed: int, cache: Path, out_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--cache", str(cache), *RECIPES[recipe][1],
            "--seed", str(seed), "--out-dir", str(out_dir), "--no-progress"]


def main(args) -> None:
    names = selected(args.only)
    if args.list:
        for name in names:
            cache, flags = RECIPES[name]
            print(f"{name}: cache {cache} ({' '.join(CACHES[cache])}); train.py {' '.join(flags)}")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    caches = {c: ensure_cache(c, args) for c in sorted({RECIPES[n][0] for n in names})}
    threads = str(max(1, (os.cpu_count() or 1) // args.parallel))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending = [(n, s) for n in names for s in seeds
               if not (Path(args.runs) / f"{n}_s{s}" / "results.json").is_file()]
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, seed = pending.pop(0)
            out_dir = Path(args.runs) / f"{name}_s{seed}"
            out_dir.mkdir(parents=True, exist_ok=True)
            log = open(out_dir / "train.log", "w")
            cmd = train_command(name, seed, caches[RECIPES[name][0]], out_dir)
            running.append((out_dir.name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            time.perf_counter()))
            print(f"started {out_dir.name}", flush=True)
        time.sleep(2)
        for item in list(running):
            run, proc, start = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"{status}: {run} in {time.perf_counter() - start:.0f} s", flush=True)
                if proc.returncode:
                    failed.append(run)
    if failed:
        raise SystemExit(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (see their train.log)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
