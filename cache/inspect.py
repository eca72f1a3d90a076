"""A short human summary of a cache file (finished or still ``.partial``).

    python -m cache.inspect cache.h5

Shows the splits with their clip and row counts, each feature's shape, the settings
the file was built with, and the skipped source files. It works on a build in
progress too: it reads without HDF5's file lock, and for ``cache.h5`` while only
``cache.h5.partial`` exists it shows that file, saying so. ``h5ls -r`` and
``h5dump -A`` show the raw structure and attributes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py

from cache.format import (FEATURE_GROUP, STATUS_DONE, STATUS_PENDING, STATUS_SKIPPED, CacheError, feature_arguments,
                          partial_path, read_root_attrs)
from common.cli import run

# Settings every cache records, and which the summary shows.
SHOWN_SETTINGS = ("labels", "sample_rate", "duration", "compression", "features", "augment")


def summarize(path) -> str:
    """The summary text of the cache at ``path`` (or of its build in progress).

    Raises
    ------
    CacheError
        No such file, not an HDF5 file, or root attributes of the wrong type (named).

    >>> print(summarize("cache.h5"))  # doctest: +SKIP
    """
    path = Path(path)
    note = []
    if not path.exists() and partial_path(path).exists():
        note = [f"note: {path} does not exist yet; this is its build in progress, {partial_path(path)}"]
        path = partial_path(path)
    if not path.exists():
        raise CacheError(f"{path} does not exist; build one with: python build_cache.py --out {path}")
    try:
        # Without HDF5's file lock: a build writing the file holds it, and reading does not disturb it.
        with h5py.File(path, "r", locking=False) as f:
            return "\n".join(note + _describe(f, path))
    except (OSError, RuntimeError) as exc:
        raise CacheError(f"cannot read {path} ({exc}); if a build is writing it right now, try again in a "
                         f"moment, otherwise it is damaged: rebuild it with build_cache.py --overwrite") from exc


def _describe(f: h5py.File, path: Path) -> list[str]:
    root = read_root_attrs(f.attrs, path=path)
    settings = root.settings
    missing = [key for key in SHOWN_SETTINGS if key not in settings]
    if missing:
        raise CacheError(f"cache {path}: its settings attribute lacks {missing}, so the file is damaged or "
                         f"was edited; rebuild it with build_cache.py --overwrite")
    lines = []
    state = "complete" if root.complete else "UNFINISHED (re-run the build command to resume)"
    lines.append(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, format {root.format_version}, {state})")
    lines.append(f"fingerprint {root.fingerprint}")
    lines.append(f"labels ({len(settings['labels'])}): {', '.join(settings['labels'])}")
    lines.append(f"audio: {settings['sample_rate']} Hz, {settings['duration']} s per clip; "
                 f"compression: {settings['compression']}")
    lines.append("splits:")
    splits = [name for name in f if isinstance(f[name], h5py.Group)]
    for split in splits:
        group = f[split]
        status = group["status"][...]
        versions = group["version"][...]
        counts = {name: int((status == code).sum())
                  for name, code in (("done", STATUS_DONE), ("pending", STATUS_PENDING),
                                     ("skipped", STATUS_SKIPPED))}
        clips = int((versions == 0).sum())
        n_groups = len(set(group["group"].asstr()[()]) - {""}) if "group" in group else 0
        groups = f", {n_groups} groups" if n_groups else ""
        lines.append(f"  {split:<6} {clips} clips, {len(status)} rows (versions per clip: "
                     f"{int(versions.max()) + 1 if len(versions) else 0}{groups}); "
                     + ", ".join(f"{v} {k}" for k, v in counts.items()))
    lines.append("features:")
    for name, feature in settings["features"].items():
        dset = f[splits[0]][FEATURE_GROUP][name] if splits else None
        others = feature_arguments(feature)
        shape = tuple(dset.shape[1:]) if dset is not None else tuple(feature.get("shape", ()))
        lines.append(f"  {name:<7} {feature.get('kind')}, row shape {shape}, "
                     f"{feature.get('frames_per_second', 0):.2f} frames/s, "
                     f"chunks {dset.chunks if dset is not None else None}; {json.dumps(others)}")
    lines.append(f"augmentation: {json.dumps(settings['augment'])}")
    n_skipped, skipped = _skipped(f, path)
    lines.append(f"skipped source files: {n_skipped}")
    for item in skipped:
        lines.append(f"  {item['split']}: {item['path']}: {item['reason']}")
    if n_skipped > len(skipped):
        lines.append(f"  ... and {n_skipped - len(skipped)} more (rows with status -1)")
    return lines


def _skipped(f: h5py.File, path: Path) -> tuple[int, list[dict]]:
    """The skipped-file attributes (``n_skipped``, ``skipped``), checked for type."""
    count = f.attrs.get("n_skipped", 0)
    text = f.attrs.get("skipped", "[]")
    try:
        items = json.loads(text.decode() if isinstance(text, bytes) else text)
        if isinstance(count, (bool, str, bytes)) or not isinstance(items, list) \
                or not all(isinstance(item, dict) and {"split", "path", "reason"} <= set(item) for item in items):
            raise ValueError
        return int(count), items
    except (TypeError, ValueError):
        raise CacheError(f"cache {path}: its root attributes 'n_skipped'/'skipped' are {count!r}/{text!r}, "
                         f"not a count and a JSON list of skipped files; the file is damaged or was edited: "
                         f"rebuild it with build_cache.py --overwrite") from None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cache", nargs="?", default="cache.h5", help="cache file (default: %(default)s)")
    return p


def main(args) -> None:
    print(summarize(args.cache))


if __name__ == "__main__":
    run(main, get_args_parser())
