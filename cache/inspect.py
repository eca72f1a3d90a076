"""A short human summary of a cache file (finished or still ``.partial``).

    python -m cache.inspect cache.h5

Shows the splits with their clip and row counts, each feature's shape, the settings
the file was built with, and the skipped source files. ``h5ls -r`` and ``h5dump -A``
show the raw structure and attributes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py

from cache.format import FEATURE_GROUP, STATUS_DONE, STATUS_PENDING, STATUS_SKIPPED


def summarize(path) -> str:
    """The summary text of the cache at ``path``.

    >>> print(summarize("cache.h5"))  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build one with: python build_cache.py --out {path}")
    lines = []
    with h5py.File(path, "r") as f:
        settings = json.loads(f.attrs["settings"])
        state = "complete" if int(f.attrs["complete"]) else "UNFINISHED (re-run the build command to resume)"
        lines.append(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, format {int(f.attrs['format_version'])}, {state})")
        lines.append(f"fingerprint {f.attrs['fingerprint']}")
        lines.append(f"labels ({len(settings['labels'])}): {', '.join(settings['labels'])}")
        lines.append(f"audio: {settings['sample_rate']} Hz, {settings['duration']} s per clip; "
                     f"compression: {settings['compression']}")
        lines.append("splits:")
        for split in (name for name in f if isinstance(f[name], h5py.Group)):
            group = f[split]
            status = group["status"][...]
            versions = group["version"][...]
            counts = {name: int((status == code).sum())
                      for name, code in (("done", STATUS_DONE), ("pending", STATUS_PENDING),
                                         ("skipped", STATUS_SKIPPED))}
            clips = int((versions == 0).sum())
            lines.append(f"  {split:<6} {clips} clips, {len(status)} rows (versions per clip: "
                         f"{int(versions.max()) + 1 if len(versions) else 0}); "
                         + ", ".join(f"{v} {k}" for k, v in counts.items()))
        lines.append("features:")
        first_split = next(name for name in f if isinstance(f[name], h5py.Group))
        for name, feature in settings["features"].items():
            dset = f[first_split][FEATURE_GROUP][name]
            others = {k: v for k, v in feature.items() if k not in ("kind", "shape", "frames_per_second")}
            lines.append(f"  {name:<7} {feature['kind']}, row shape {tuple(dset.shape[1:])}, "
                         f"{feature['frames_per_second']:.2f} frames/s, chunks {dset.chunks}; {json.dumps(others)}")
        lines.append(f"augmentation: {json.dumps(settings['augment'])}")
        n_skipped = int(f.attrs.get("n_skipped", 0))
        skipped = json.loads(f.attrs.get("skipped", "[]"))
        lines.append(f"skipped source files: {n_skipped}")
        for item in skipped:
            lines.append(f"  {item['split']}: {item['path']}: {item['reason']}")
        if n_skipped > len(skipped):
            lines.append(f"  ... and {n_skipped - len(skipped)} more (rows with status -1)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", nargs="?", default="cache.h5", help="cache file (default: %(default)s)")
    return p


def main(args) -> None:
    print(summarize(args.cache))


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (FileNotFoundError, OSError, KeyError) as exc:
        sys.exit(f"error: cannot inspect: {exc}")
