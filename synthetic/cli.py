"""Command line of the demo data set: ``python -m synthetic OUT_DIR [flags]``.

    python -m synthetic OUT_DIR [--clips-per-genre N] [--seconds S]
        [--seed S] [--sr HZ] [--au-fraction F] [--jobs N]
"""

from __future__ import annotations

import argparse
import time

from synthetic.dataset import generate_dataset
from synthetic.music import GENRES, MIN_SR


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m synthetic",
        description="Write a seeded synthetic data set laid out like GTZAN: OUT_DIR/<genre>/<genre>.NNNNN.wav "
                    f"(mono 16-bit PCM; about --au-fraction of them stored as .au) for the genres {', '.join(GENRES)}, "
                    "plus train/valid/test_filtered.txt lists (about 50/25/25 per genre) that always name .wav. "
                    "Existing files with those names in OUT_DIR are overwritten (and a clip's stale .wav/.au twin "
                    "is removed); other files are left alone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="destination folder (created if missing)")
    parser.add_argument("--clips-per-genre", type=int, default=40, metavar="N", help="clips per genre, at least 4")
    parser.add_argument("--seconds", type=float, default=30.0, metavar="S", help="length of every clip in seconds")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="non-negative seed; the same arguments and seed give byte-identical files")
    parser.add_argument("--sr", type=int, default=22050, metavar="HZ", help=f"sample rate in Hz (at least {MIN_SR})")
    parser.add_argument("--au-fraction", type=float, default=0.15, metavar="F",
                        help="fraction of clips stored as .au instead of .wav (0 to 1)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="parallel worker processes, -1 for all cores; does not change the output")
    return parser


def main(args) -> None:
    """Generate the data set described by parsed ``args`` and print a one-line summary."""
    start = time.perf_counter()
    summary = generate_dataset(args.out_dir, clips_per_genre=args.clips_per_genre, seconds=args.seconds,
                               seed=args.seed, sr=args.sr, au_fraction=args.au_fraction, jobs=args.jobs)
    s = summary["splits"]
    print(f"wrote {summary['n_clips']} clips ({summary['n_au']} as .au) of {summary['seconds']:g} s at "
          f"{summary['sr']} Hz to {summary['out_dir']}: train {s['train']} / valid {s['valid']} / test {s['test']} "
          f"in {time.perf_counter() - start:.1f} s")


def run(argv=None) -> None:
    """Parse ``argv`` and generate; a bad value ends with the usage line and the reason
    (exit status 2), without a traceback."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except ValueError as err:
        parser.error(str(err))
