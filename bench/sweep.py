"""Run named training recipes over several seeds, the experiments behind the defaults.

    python bench/sweep.py --caches data/caches --runs runs/gm --only course,default --seeds 0,1,2
    python report.py runs/gm/* --out runs/gm/report.md

Each recipe is a cache (a name in CACHES, built by the build_cache.py flags given
there, in ``--caches``) and train.py flags. Every (recipe, seed) becomes one
``train.py`` process writing ``RUNS/<recipe>_s<seed>`` (its output in ``train.log``
there); finished runs (with a results.json) are skipped, a killed run resumes from its
``last.pt``, and one killed before its first checkpoint is moved aside
(``<run>.unfinished-<time>``) and started again, so an interrupted sweep picks up where
it stopped. ``--parallel 2`` runs two trainings at once, each with half of the cores'
threads; ``--nice`` runs the children at the lowest CPU priority. The recipes trained on
the gamemusic set are listed in the README's results section; ``bench/cv_study.py`` runs
them on cross-validation folds.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from common.cli import run
from common.errors import UserError
from common.locks import FileLock, LockHeld

# How long a stopped child gets to finish its SIGTERM handling before it is killed.
STOP_GRACE_S = 30

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
    # The cross-validation study (bench/cv_study.py): one cache per fold and augmentation
    # level holds both candidate features.
    "mc_a0": ["--features", "mel,cqt", "--n-fft", "2048", "--augment", "0"],
    "mc_a4": ["--features", "mel,cqt", "--n-fft", "2048", "--augment", "4"],
}

# The course's baseline, and the first modern recipe every variant below starts from.
COURSE = ["--feature", "mel", "--model", "cnn1d", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9",
          "--weight-decay", "0", "--schedule", "plateau", "--lr-patience", "3", "--lr-factor", "0.2",
          "--warmup-epochs", "0", "--crops-per-clip", "1", "--mask-bins", "0", "--mask-frames", "0",
          "--segment-seconds", "3", "--epochs", "30"]
MODERN = ["--feature", "mel", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-2",
          "--schedule", "cosine", "--warmup-epochs", "1", "--crops-per-clip", "8", "--mask-bins", "0",
          "--mask-frames", "0", "--epochs", "30", "--segment-seconds", "3"]

# SpecAugment frequency mask per feature: the study's best settings (README) for each.
MASK_BINS = {"mel": 16, "cqt": 12}
# Larger models are 10-40x slower than cnn1d on CPU: the study's variants are time-boxed.
SHORT_EPOCHS, SHORT_CROPS = 10, 2
SHORT = ["--epochs", str(SHORT_EPOCHS), "--crops-per-clip", str(SHORT_CROPS)]
# Four times the short budget: 20 epochs x 4 crops per clip.
MID_EPOCHS, MID_CROPS = 20, 4
MID = ["--epochs", str(MID_EPOCHS), "--crops-per-clip", str(MID_CROPS)]

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
    # The cross-validation study (bench/cv_study.py): mel vs cqt, 0 vs 4 augmented copies,
    # SpecAugment masks off/on (mel 16 bins, cqt 12 bins; 20 frames), all cnn1d on the modern
    # recipe; then larger models, time-boxed (see NOTES); then the two features stacked.
    **{f"cnn1d_{feature}_a{copies}{'_mask' if mask else ''}":
       (f"mc_a{copies}", MODERN + ["--model", "cnn1d", "--feature", feature]
        + (["--mask-bins", str(MASK_BINS[feature]), "--mask-frames", "20"] if mask else []))
       for feature in ("mel", "cqt") for copies in (0, 4) for mask in (False, True)},
    **{f"{model}_{feature}_a0_short": ("mc_a0", MODERN + ["--model", model, "--feature", feature] + SHORT)
       for model in ("resnet", "crnn") for feature in ("mel", "cqt")},
    # Round 2 of the study, after crnn_mel_a0_short led the screening: the same model with 4
    # copies, with masks, stacked on mel+cqt, and with four times the training budget.
    "crnn_mel_a4_short": ("mc_a4", MODERN + ["--model", "crnn", "--feature", "mel"] + SHORT),
    "crnn_mel_a0_short_mask": ("mc_a0", MODERN + ["--model", "crnn", "--feature", "mel"] + SHORT
                               + ["--mask-bins", str(MASK_BINS["mel"]), "--mask-frames", "20"]),
    "crnn_melcqt_a0_short": ("mc_a0", MODERN + ["--model", "crnn", "--feature", "mel+cqt"] + SHORT),
    "crnn_mel_a0_mid": ("mc_a0", MODERN + ["--model", "crnn", "--feature", "mel"] + MID),
    "cnn1d_melcqt_a0": ("mc_a0", MODERN + ["--model", "cnn1d", "--feature", "mel+cqt"]),
    # The band lies anywhere on the 128 + 84 stacked bins: mel's width, the wider of the two.
    "cnn1d_melcqt_a4_mask": ("mc_a4", MODERN + ["--model", "cnn1d", "--feature", "mel+cqt",
                                                "--mask-bins", str(MASK_BINS["mel"]), "--mask-frames", "20"]),
}

# Recipes that need what train.py does not have yet (name -> what): left out of every default --only.
NEEDS: dict[str, str] = {}

# What a recipe's flags do not say by themselves (shown by --list).
NOTES = {
    **NEEDS,
    **{f"{model}_{feature}_a0_short": f"time-boxed: {SHORT_EPOCHS} epochs x {SHORT_CROPS} crops per clip on "
       f"0 copies (the full {model}_a4 runs 15 x 4 on 4 copies, about 10-40x a cnn1d run on CPU)"
       for model in ("resnet", "crnn") for feature in ("mel", "cqt")},
    **{name: f"time-boxed: {SHORT_EPOCHS} epochs x {SHORT_CROPS} crops per clip"
       for name in ("crnn_mel_a4_short", "crnn_mel_a0_short_mask", "crnn_melcqt_a0_short")},
    "crnn_mel_a0_mid": f"time-boxed: {MID_EPOCHS} epochs x {MID_CROPS} crops per clip (4x the short budget)",
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/gamemusic", help="GTZAN-style data folder (default: %(default)s)")
    p.add_argument("--caches", default="data/caches", help="folder of the caches, <name>.h5 (default: %(default)s)")
    p.add_argument("--runs", default="runs/sweep", help="folder of the run folders (default: %(default)s)")
    add_run_flags(p, default_only="all but those that need a train.py feature not there yet")
    return p


def add_run_flags(p: argparse.ArgumentParser, *, default_only: str) -> None:
    """The flags sweep.py and cv_study.py share."""
    p.add_argument("--only", default=None, help=f"comma-separated recipe names (default: {default_only})")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once (default: %(default)s)")
    p.add_argument("--nice", action="store_true", help="run builds and trainings at the lowest CPU priority")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")


def selected(only: str | None, *, default: list[str] | None = None) -> list[str]:
    """Recipe names of ``--only`` (``default``, else every recipe, without it)."""
    if only is None:
        return [n for n in RECIPES if n not in NEEDS] if default is None else list(default)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        raise UserError(f"--only {only!r}: unknown recipe(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(RECIPES)} (python bench/sweep.py --list)")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. --seeds 0,1,2")
    return seeds


def check_parallel(parallel: int) -> None:
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: need at least 1 training at a time")


def describe(names: list[str]) -> None:
    """Print each recipe's cache flags, train.py flags and note."""
    for name in names:
        cache, flags = RECIPES[name]
        note = f"  [{NOTES[name]}]" if name in NOTES else ""
        print(f"{name}: cache {cache} ({' '.join(CACHES[cache])}); train.py {' '.join(flags)}{note}")


# -- child processes ---------------------------------------------------------------------
def _lowest_priority() -> None:
    os.nice(19)  # at most 19; children inherit it (loky workers too)


def launch(cmd: list[str], *, log, env=None, nice: bool = False) -> subprocess.Popen:
    """Start ``cmd`` with its output to ``log`` (an open file, or None to inherit ours)."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None, env=env,
                            preexec_fn=_lowest_priority if nice else None)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child still running (they keep what they finished), then SIGKILL stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_child(cmd: list[str], *, nice: bool = False) -> int:
    """Run ``cmd`` in the foreground (output to ours); stopped with us on Ctrl-C or SIGTERM."""
    proc = launch(cmd, log=None, nice=nice)
    try:
        return proc.wait()
    finally:
        stop([proc])


def ensure_cache(name: str, *, data, path: Path, nice: bool = False) -> Path:
    """Build cache ``name`` of ``data`` at ``path`` unless it is there (build_cache.py does nothing when it is)."""
    code = run_child([sys.executable, str(ROOT / "build_cache.py"), "--data", str(data), "--out", str(path),
                      "--no-progress", *CACHES[name]], nice=nice)
    if code:
        raise UserError(f"building cache {name!r} ({path}) of {data} failed (exit {code}); see build_cache.py's "
                        f"message above")
    return path


def train_command(recipe: str, seed: int, cache: Path, out_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--cache", str(cache), *RECIPES[recipe][1],
            "--seed", str(seed), "--out-dir", str(out_dir), "--no-progress"]


@dataclass(frozen=True)
class Training:
    """One train.py run to do: its name in messages, run folder and command (without ``--resume``)."""

    name: str
    out_dir: Path
    cmd: list[str]


def finished(out_dir: Path) -> bool:
    return (out_dir / "results.json").is_file()


def prepare_run_folder(out_dir: Path) -> list[str]:
    """Extra train.py flags for ``out_dir``: ``--resume`` from its last.pt, else a fresh folder.

    A folder left by a run killed before its first checkpoint is moved aside (nothing is
    deleted: its train.log says what happened). A folder another process is training in
    is refused (``LockHeld``).
    """
    if not out_dir.exists():
        return []
    with FileLock(out_dir, what="run folder", hint="this sweep leaves that run to it"):
        pass  # only to find out that no one is using it
    if (out_dir / "last.pt").is_file():
        return ["--resume"]
    if any(p.name not in (".lock",) for p in out_dir.iterdir()):
        aside = out_dir.with_name(f"{out_dir.name}.unfinished-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        out_dir.rename(aside)
        print(f"moved {out_dir} (killed before its first checkpoint) to {aside}", flush=True)
    return []


def run_trainings(trainings: list[Training], *, parallel: int, nice: bool = False) -> list[str]:
    """Run the unfinished ``trainings``, ``parallel`` at a time; returns the names of those that failed.

    Each writes its output to ``train.log`` in its run folder (appended, so a resumed
    run's earlier output is kept). On Ctrl-C or SIGTERM the running ones are stopped
    (they keep their last checkpoint) and the interrupt goes on.
    """
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending = [t for t in trainings if not finished(t.out_dir)]
    running: list[tuple[Training, subprocess.Popen, float]] = []
    failed = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                training = pending.pop(0)
                try:
                    extra = prepare_run_folder(training.out_dir)
                except LockHeld as exc:
                    print(f"skipped {training.name}: {exc}", flush=True)
                    failed.append(training.name)
                    continue
                training.out_dir.mkdir(parents=True, exist_ok=True)
                with open(training.out_dir / "train.log", "a") as log:
                    log.write(f"# {datetime.datetime.now():%Y-%m-%d %H:%M:%S}: {' '.join(training.cmd + extra)}\n")
                    log.flush()
                    proc = launch(training.cmd + extra, log=log, env=env, nice=nice)
                running.append((training, proc, time.perf_counter()))
                print(f"started {training.name}" + (" (resuming)" if extra else ""), flush=True)
            time.sleep(0.5)
            for item in list(running):
                training, proc, start = item
                if proc.poll() is not None:
                    running.remove(item)
                    status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                    print(f"{status}: {training.name} in {time.perf_counter() - start:.0f} s", flush=True)
                    if proc.returncode:
                        failed.append(training.name)
    finally:
        stop([proc for _, proc, _ in running])
    return failed


def refuse_failures(failed: list[str], *, rerun: str) -> None:
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)} (see train.log in their run folders); "
                        f"fix the cause and {rerun}: finished runs are kept")


def main(args) -> None:
    names = selected(args.only)
    if args.list:
        describe(names if args.only else list(RECIPES))
        return
    seeds = parse_seeds(args.seeds)
    check_parallel(args.parallel)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    with FileLock(runs, what="runs folder", hint="one sweep per runs folder"):
        todo = [(n, s) for n in names for s in seeds if not finished(runs / f"{n}_s{s}")]
        caches = {c: ensure_cache(c, data=args.data, path=Path(args.caches) / f"{c}.h5", nice=args.nice)
                  for c in sorted({RECIPES[n][0] for n, _ in todo})}
        trainings = [Training(f"{n}_s{s}", runs / f"{n}_s{s}",
                              train_command(n, s, caches[RECIPES[n][0]], runs / f"{n}_s{s}")) for n, s in todo]
        refuse_failures(run_trainings(trainings, parallel=args.parallel, nice=args.nice),
                        rerun="run the same command again")


if __name__ == "__main__":
    run(main, get_args_parser())
