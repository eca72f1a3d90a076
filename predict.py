"""Classify audio files with a trained checkpoint, or an ensemble of them.

    python predict.py --checkpoint runs/demo/best.pt song.mp3 more_songs/
    python predict.py --checkpoint a/best.pt --checkpoint b/best.pt --json --segments clips/

Each file (wav, au, flac, ogg, mp3; any sample rate, mono or stereo, any length of at
least one segment) is decoded and turned into the checkpoint's feature by the cache
build's own code (``pipeline.clip.process_clip``; a stacked feature such as ``mel+cqt``
gets every part from the one decode, stacked along the bins), normalised with the
checkpoint's statistics and cut into the evaluation segments training used. The segment
probabilities are averaged per file, then over the checkpoints of an ensemble.
Folders are walked for audio files. A file that cannot be classified gets an error
line and the others are still classified; the exit status is 1 if any failed.
Checkpoints are read without unpickling anything but tensors and plain values, so a
``.pt`` file from elsewhere cannot run code here.
"""
from __future__ import annotations

import argparse
import json
import sys

from common.cli import run
from training.checkpoint import load_members
from training.config import DEVICES, PredictConfig
from training.errors import ClipError, PredictError
from training.inference import (AUDIO_SUFFIXES, AudioLoadError, classify_file, file_record, find_audio_files,
                                format_record, member_features)
from training.runtime import resolve_device

__all__ = ["get_args_parser", "main", "exit_status", "PredictError", "ClipError"]


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of predict.py; the defaults are :class:`training.config.PredictConfig`'s."""
    D = PredictConfig()  # noqa: N806
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fmt = "(default: %(default)s)"
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help=f"audio files, or folders searched for {', '.join(AUDIO_SUFFIXES)} files")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint written by train.py (RUN_DIR/best.pt); give it several times "
                        "for an ensemble, whose probabilities are averaged")
    p.add_argument("--top", type=int, default=D.top, help=f"genres shown per file {fmt}")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--segments", action="store_true", help="also show the prediction of every segment")
    p.add_argument("--batch-size", type=int, default=D.batch_size, help=f"segments per forward pass {fmt}")
    p.add_argument("--device", default=D.device, choices=DEVICES,
                   help=f"where the models run; auto picks cuda, then mps, then cpu {fmt}")
    return p


def main(args) -> dict:
    """Classify ``args.inputs``; print the results and return them (the ``--json`` document).

    Returns
    -------
    dict
        ``{"checkpoints": [str], "labels": [str], "files": [record], "failed": int}``;
        a record is ``{"path", "ok": True, "seconds", "flags", "top": [{"label",
        "probability"}], "probabilities": {label: p}}`` (plus ``"segments"`` with
        ``--segments``), or ``{"path", "ok": False, "error"}``.
    """
    config = PredictConfig.from_args(args)
    device = resolve_device(config.device, error=PredictError)
    members = load_members(config.checkpoint, device=device, error=PredictError)
    features = member_features(members)
    labels = members[0].labels
    records = []
    for path, error in find_audio_files(config.inputs):
        if error is None:
            try:
                prediction = classify_file(path, members, features, batch_size=config.batch_size, device=device)
                record = file_record(path, prediction, members, top=min(config.top, len(labels)),
                                     segments=config.segments)
            except (AudioLoadError, ClipError) as exc:
                error = str(exc)
        if error is not None:
            record = {"path": str(path), "ok": False, "error": error}
            print(f"error: {error}", file=sys.stderr, flush=True)
        elif not config.json:
            print(format_record(record), flush=True)
        records.append(record)
    output = {"checkpoints": [str(m.path) for m in members], "labels": list(labels), "files": records,
              "failed": sum(not r["ok"] for r in records)}
    if config.json:
        print(json.dumps(output, indent=2))
    return output


def exit_status(output: dict) -> int:
    """1 when some file could not be classified, else 0."""
    return 1 if output["failed"] else 0


if __name__ == "__main__":
    sys.exit(exit_status(run(main, get_args_parser(), interrupted="run the same command again")))
