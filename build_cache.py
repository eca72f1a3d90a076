"""Build the HDF5 feature cache that train.py streams from.

    python build_cache.py --features mel,mfcc --augment 4
    python build_cache.py --data /shared/gtzan --backend dask --scheduler tcp://head:8786

Decodes every listed clip in parallel joblib workers (local processes, or the workers
of a Dask cluster with --backend dask), adds ``--augment`` audio-effect
copies of each training clip, computes every requested feature, and writes one
chunked, self-describing HDF5 file (``h5ls -r cache.h5`` shows it). A killed build
resumes when the same command is run again; a build stopped by Ctrl-C or SIGTERM stops
its workers first. Clips that could not be decoded are skipped and listed; once fixed,
``--retry-skipped`` computes them into the same file.
"""
from __future__ import annotations

import argparse
import os
import sys

from builder import BACKENDS, RETRY_FLAG, BuildSummary, build, check_build_numbers
from common.cli import run
from common.errors import UserError
from common.settings import parse_value
from pipeline.audio import DEFAULT_DURATION, DEFAULT_SR
from pipeline.augment import DEFAULT_EFFECTS, build_augmenter, parse_effect_names
from pipeline.features import build_feature, feature_settings_defaults, parse_feature_names

DEFAULT_DATA = "gtzan"
DEFAULT_CACHE = "cache.h5"
# The defaults are the recipe chosen by track-grouped cross-validation on two real sets
# (README, "Choosing the defaults"): log-mel (n_fft 2048), no augmented copies.
DEFAULT_FEATURES = "mel"
DEFAULT_AUGMENT = 0

# CLI flag -> feature setting it overrides, in every requested feature that has it.
SHARED_FEATURE_FLAGS = {
    "n_fft": "n_fft",
    "hop_length": "hop_length",
    "n_mels": "n_mels",
    "n_mfcc": "n_mfcc",
    "mfcc_deltas": "deltas",
    "n_chroma": "n_chroma",
    "cqt_bins": "n_bins",
}


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"GTZAN-style folder: <genre>/<file> plus train/valid/test_filtered.txt {fmt}")
    p.add_argument("--out", default=DEFAULT_CACHE,
                   help=f"cache file to write (its folder is created if missing); train.py --cache reads "
                        f"the same default {fmt}")
    p.add_argument("--features", default=DEFAULT_FEATURES,
                   help=f"comma-separated features to compute: mel, mfcc, chroma, cqt, wave {fmt}")
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help=f"parallel decode/feature workers {fmt}, i.e. all cores; with --scheduler "
                        f"the cluster's workers decide")
    p.add_argument("--backend", choices=tuple(BACKENDS), default="loky",
                   help=f"where the workers run: loky (processes on this machine) or dask (a Dask "
                        f"cluster; needs requirements-dist.txt) {fmt}")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler to use with --backend dask, e.g. tcp://head:8786 (default: start a "
                        "local cluster of --jobs workers); every worker must see --data at the same path")
    p.add_argument("--seed", type=int, default=0, help=f"seed of the augmentation draws {fmt}")
    p.add_argument("--sr", type=int, default=DEFAULT_SR, help=f"sample rate in Hz {fmt}")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                   help=f"seconds per clip; longer clips are cut, shorter ones zero-padded and flagged {fmt}")
    p.add_argument("--compression", choices=("none", "gzip"), default="none",
                   help=f"'none' lets train.py memory-map the file; gzip is smaller but much slower to read {fmt}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing cache made with other settings, or start an unfinished build "
                        "again (a finished cache of the same settings is kept)")
    p.add_argument(RETRY_FLAG, action="store_true",
                   help="compute again the clips a finished cache skipped because they could not be decoded "
                        "(after fixing those files); an unfinished build always retries them")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    g = p.add_argument_group("feature settings (apply to every requested feature that has the setting)")
    g.add_argument("--n-fft", type=int, help="FFT window in samples (default: 2048, as librosa's)")
    g.add_argument("--hop-length", type=int, help="hop between frames in samples (default: 512)")
    g.add_argument("--n-mels", type=int, help="mel bands of mel and mfcc (default: 128)")
    g.add_argument("--n-mfcc", type=int, help="MFCC coefficients (default: 20)")
    g.add_argument("--mfcc-deltas", type=int, choices=(0, 1, 2), help="stack MFCC deltas up to this order (default: 0)")
    g.add_argument("--n-chroma", type=int, help="chroma bins (default: 12)")
    g.add_argument("--cqt-bins", type=int, help="CQT bins (default: 84)")
    g.add_argument("--set", action="append", default=[], metavar="FEATURE.KEY=VALUE",
                   help="any other feature setting, e.g. --set mel.fmax=8000 (repeatable)")

    a = p.add_argument_group("augmentation (training clips only)")
    a.add_argument("--augment", type=int, default=DEFAULT_AUGMENT, metavar="K",
                   help=f"augmented copies of every training clip; valid and test are never augmented {fmt}")
    a.add_argument("--effects", default=",".join(DEFAULT_EFFECTS),
                   help=f"effects each copy draws from, comma-separated {fmt}")
    a.add_argument("--effect-p", type=float, default=0.5,
                   help=f"probability of each effect in a copy (at least one always applies) {fmt}")
    a.add_argument("--pitch-semitones", type=float, default=2.0, help=f"pitch shift range +- semitones {fmt}")
    a.add_argument("--stretch-min", type=float, default=0.8, help=f"slowest time-stretch rate {fmt}")
    a.add_argument("--stretch-max", type=float, default=1.25, help=f"fastest time-stretch rate {fmt}")
    a.add_argument("--snr-min", type=float, default=15.0, help=f"lowest SNR of added noise in dB {fmt}")
    a.add_argument("--snr-max", type=float, default=40.0, help=f"highest SNR of added noise in dB {fmt}")
    a.add_argument("--eq-gain-db", type=float, default=6.0, help=f"seven-band EQ gain range +- dB {fmt}")
    a.add_argument("--gain-db", type=float, default=6.0, help=f"overall gain range +- dB {fmt}")
    return p


def feature_overrides(args, names: list[str]) -> dict[str, dict]:
    """Per-feature settings from the shared flags and ``--set FEATURE.KEY=VALUE``."""
    overrides = {name: {} for name in names}
    for flag, key in SHARED_FEATURE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        takers = [name for name in names if key in feature_settings_defaults(name)]
        if not takers:
            raise UserError(f"--{flag.replace('_', '-')} applies to none of the features {names}")
        for name in takers:
            overrides[name][key] = value
    for item in args.set:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot:
            raise UserError(f"--set {item!r}: expected FEATURE.KEY=VALUE, e.g. --set mel.fmax=8000")
        if name not in overrides:
            raise UserError(f"--set {item!r}: feature {name!r} is not in --features {','.join(names)}")
        overrides[name][key] = parse_value(value)
    return overrides


def make_features(args) -> dict:
    # pipeline.features says what is wrong with a setting as a ValueError; here it
    # becomes a UserError that names the flags the setting came from.
    try:
        names = parse_feature_names(args.features)
    except ValueError as exc:
        raise UserError(f"--features {args.features}: {exc}") from exc
    overrides = feature_overrides(args, names)
    try:
        return {name: build_feature(name, sr=args.sr, **overrides[name]) for name in names}
    except ValueError as exc:
        raise UserError(f"feature settings (--features {args.features} and its --n-*/--set flags, "
                        f"--sr {args.sr}): {exc}") from exc


def make_augmenter(args):
    if args.augment == 0:
        return None
    try:
        return build_augmenter(parse_effect_names(args.effects), sr=args.sr, p=args.effect_p,
                               pitch_semitones=args.pitch_semitones, stretch_min=args.stretch_min,
                               stretch_max=args.stretch_max, snr_min_db=args.snr_min, snr_max_db=args.snr_max,
                               eq_gain_db=args.eq_gain_db, gain_db=args.gain_db)
    except ValueError as exc:
        raise UserError(f"augmentation settings (--effects {args.effects}, --effect-p, --pitch-semitones, "
                        f"--stretch-*, --snr-*, --eq-gain-db, --gain-db): {exc}") from exc


def main(args) -> BuildSummary:
    check_build_numbers(sr=args.sr, duration=args.duration, jobs=args.jobs)
    summary = build(data=args.data, out=args.out, features=make_features(args),
                    augmenter=make_augmenter(args), versions=args.augment, seed=args.seed,
                    sr=args.sr, duration=args.duration, jobs=args.jobs,
                    compression=args.compression, overwrite=args.overwrite,
                    retry_skipped=args.retry_skipped, progress=not args.no_progress,
                    backend=args.backend, scheduler=args.scheduler)
    print(summary.describe())
    if summary.skipped:
        print(f"{len(summary.skipped)} source files were skipped: they could not be decoded, or gave "
              f"non-finite features (listed in the file's 'skipped' attribute); fix or replace them, then "
              f"run the same command with {RETRY_FLAG} to compute them:", file=sys.stderr)
        for item in summary.skipped:
            print(f"  {item['split']}: {item['path']}: {item['reason']}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    run(main, get_args_parser())
