"""predict.py on synthetic files: formats, rates, channels, lengths, bad files, JSON, ensembles."""
from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import build_cache
import predict
import train
from tests.conftest import build_args
from training.checkpoint import load_checkpoint, load_members, save_checkpoint
from training.ensemble import ensemble_datasets, member_segments
from training.scoring import clip_scores
from training.segments import segment_starts

SEGMENT = "2.0"
RNG_SEED = 11
REPO = Path(__file__).resolve().parents[1]


def tiny_runs(tmp_path_factory, gtzan) -> dict[str, Path]:
    """A mel+mfcc cache of the tiny set and short cnn1d runs on each feature.

    Built once per session (the folder in the session's base temp is the memo), so
    test_predict, test_evaluate and test_report share the same runs.
    """
    root = tmp_path_factory.getbasetemp() / "tiny_runs"
    paths = {"cache": root / "cache.h5", "mel": root / "mel", "mfcc": root / "mfcc"}
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build_cache.main(build_args(gtzan, paths["cache"], "--features", "mel,mfcc", "--jobs", "1"))
        for feature, epochs in (("mel", "1"), ("mfcc", "1")):
            train.main(train.get_args_parser().parse_args(
                ["--cache", str(paths["cache"]), "--out-dir", str(paths[feature]), "--feature", feature,
                 "--model", "cnn1d", "--epochs", epochs, "--segment-seconds", SEGMENT, "--workers", "0",
                 "--batch-size", "16", "--optimizer", "adam", "--lr", "0.003", "--crops-per-clip", "1",
                 "--no-progress"]))
        (root / "done").touch()
    return paths


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def predict_args(checkpoints, *inputs, extra=()):
    argv = [str(i) for i in inputs]
    for ckpt in checkpoints:
        argv += ["--checkpoint", str(ckpt)]
    return predict.get_args_parser().parse_args([*argv, *extra])


def music(seconds, sr, *, channels=1):
    """A seeded chord with noise, ``(n,)`` or ``(n, channels)``."""
    rng = np.random.default_rng(RNG_SEED)
    t = np.arange(round(seconds * sr)) / sr
    mono = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) + 0.05 * rng.standard_normal(t.size)
    if channels == 1:
        return mono
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1)


# name -> (suffix, sample rate, channels, seconds)
FILES = {
    "exactly_one_segment": (".wav", 22050, 1, 2.0),
    "stereo_44k": (".flac", 44100, 2, 5.0),
    "stereo_44k_mp3": (".mp3", 44100, 2, 6.2),
    "ogg_32k": (".ogg", 32000, 2, 3.3),
    "au_16k": (".au", 16000, 1, 4.5),
    "long_48k": (".wav", 48000, 2, 31.0),
}


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    for name, (suffix, sr, channels, seconds) in FILES.items():
        sf.write(folder / f"{name}{suffix}", music(seconds, sr, channels=channels), sr)
    (folder / "notes.txt").write_text("not audio, and not picked up from a folder\n")
    return folder


@pytest.fixture(scope="module")
def ensemble_output(runs, audio_dir):
    """Both checkpoints over the whole folder, with segments."""
    return predict.main(predict_args([runs["mel"] / "best.pt", runs["mfcc"] / "best.pt"], audio_dir,
                                     extra=["--segments", "--top", "3"]))


# -- segment_starts -------------------------------------------------------------------------------
@pytest.mark.parametrize("frames, segment, hop, expected", [
    (10, 4, 4, [0, 4, 6]),
    (8, 4, 4, [0, 4]),
    (8, 4, 2, [0, 2, 4]),
    (4, 4, 1, [0]),
    (9, 4, 3, [0, 3, 5]),
])
def test_segment_starts(frames, segment, hop, expected):
    starts = segment_starts(frames, segment, hop)
    assert starts.tolist() == expected
    covered = np.zeros(frames, dtype=int)
    for start in starts:
        covered[start:start + segment] += 1
    assert covered.min() >= 1 and starts[-1] + segment == frames


@pytest.mark.parametrize("frames, segment, hop", [(3, 4, 4), (10, 0, 4), (10, 4, 0)])
def test_segment_starts_refuses_bad_sizes(frames, segment, hop):
    with pytest.raises(ValueError):
        segment_starts(frames, segment, hop)


# -- classification -----------------------------------------------------------------------------
def test_folder_walk_finds_audio_only(ensemble_output, audio_dir):
    paths = [Path(r["path"]) for r in ensemble_output["files"]]
    assert paths == sorted(p for p in audio_dir.iterdir() if p.suffix != ".txt")
    assert ensemble_output["failed"] == 0


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_format_rate_and_length_is_classified(ensemble_output, audio_dir, runs, name):
    suffix, _, _, seconds = FILES[name]
    record = next(r for r in ensemble_output["files"] if Path(r["path"]).name == name + suffix)
    assert record["ok"], record
    # mp3 frames pad the start and end a little
    assert record["seconds"] == pytest.approx(seconds, abs=0.1 if suffix == ".mp3" else 1e-3)
    probs = np.array(list(record["probabilities"].values()))
    assert list(record["probabilities"]) == ensemble_output["labels"]
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    top = [t["probability"] for t in record["top"]]
    assert len(top) == 3 and top == sorted(top, reverse=True)
    assert record["top"][0]["label"] == ensemble_output["labels"][int(probs.argmax())]
    # Both members cut 2 s segments at the same frame rate: one averaged list, covering the file.
    ckpt = load_checkpoint(runs["mel"] / "best.pt")
    settings = ckpt["feature_settings"]
    n_frames = 1 + round(record["seconds"] * settings["sr"]) // settings["hop_length"]
    expected = segment_starts(n_frames, ckpt["segment_frames"], ckpt["segment_frames"])
    segments = record["segments"]
    assert len(segments) == len(expected)
    assert [s["start"] for s in segments] == pytest.approx(expected / settings["frames_per_second"], abs=1e-3)
    assert segments[-1]["end"] == pytest.approx(record["seconds"], abs=0.05)
    assert all("checkpoint" not in s for s in segments)
    # The file's probabilities are the mean of its segments'.
    mean = np.mean([list(s["probabilities"].values()) for s in segments], axis=0)
    np.testing.assert_allclose(mean, probs, atol=1e-5)


def test_ensemble_averages_its_members(runs, audio_dir, ensemble_output):
    path = audio_dir / "stereo_44k.flac"
    alone = [predict.main(predict_args([runs[f] / "best.pt"], path))["files"][0]["probabilities"]
             for f in ("mel", "mfcc")]
    both = next(r for r in ensemble_output["files"] if r["path"] == str(path))["probabilities"]
    for label in both:
        assert both[label] == pytest.approx((alone[0][label] + alone[1][label]) / 2, abs=1e-6)


def test_prediction_equals_evaluation_from_the_cache(runs, tiny_gtzan):
    """Audio through predict.py gives the probabilities training's evaluation gave the cached clip."""
    ckpt_path = runs["mel"] / "best.pt"
    (member,) = load_members([ckpt_path])
    (datasets,) = ensemble_datasets([member], runs["cache"])
    dataset = datasets["test"]
    probs, clip_ids = member_segments(member, dataset, batch_size=64, workers=0, device="cpu",
                                      amp=False, progress=False)
    cached = clip_scores(probs, clip_ids, clip_labels=dataset.clip_labels, n_classes=len(dataset.labels))["clip_probs"]
    files = []
    for listed in dataset.clip_paths:  # the lists name .wav where the clip is stored as .au
        path = tiny_gtzan / listed
        files.append(path if path.exists() else path.with_suffix(".au"))
    output = predict.main(predict_args([ckpt_path], *files))
    predicted = np.array([list(r["probabilities"].values()) for r in output["files"]])
    np.testing.assert_allclose(predicted, cached, atol=1e-4)


def test_members_with_other_segments_are_listed_apart(runs, audio_dir, tmp_path):
    ckpt = load_checkpoint(runs["mfcc"] / "best.pt")
    ckpt["segment_frames"] = 100  # ~2.3 s: another grid than the mel member's 2 s
    save_checkpoint(ckpt, tmp_path / "long_segments.pt")
    output = predict.main(predict_args([runs["mel"] / "best.pt", tmp_path / "long_segments.pt"],
                                       audio_dir / "au_16k.au", extra=["--segments"]))
    segments = output["files"][0]["segments"]
    owners = [s["checkpoint"] for s in segments]
    assert set(owners) == {str(runs["mel"] / "best.pt"), str(tmp_path / "long_segments.pt")}
    lengths = {round(s["end"] - s["start"], 2) for s in segments if s["checkpoint"].endswith("long_segments.pt")}
    assert lengths == {round(100 / ckpt["feature_settings"]["frames_per_second"], 2)}


# -- failures -------------------------------------------------------------------------------------
BAD_FILES = {
    "garbage.wav": lambda p: p.write_bytes(np.random.default_rng(RNG_SEED).bytes(4096)),
    "empty.flac": lambda p: p.write_bytes(b""),
    "too_short.wav": lambda p: sf.write(p, music(1.0, 44100, channels=2), 44100),
    "missing.mp3": lambda p: None,
}


def test_bad_files_get_an_error_and_the_rest_are_classified(runs, audio_dir, tmp_path, capsys):
    for name, make in BAD_FILES.items():
        make(tmp_path / name)
    (tmp_path / "empty_folder").mkdir()
    good = audio_dir / "au_16k.au"
    inputs = [tmp_path / "garbage.wav", good, tmp_path / "empty.flac", tmp_path / "too_short.wav",
              tmp_path / "missing.mp3", tmp_path / "empty_folder"]
    output = predict.main(predict_args([runs["mel"] / "best.pt"], *inputs))
    records = {Path(r["path"]).name: r for r in output["files"]}
    assert [r["path"] for r in output["files"]] == [str(p) for p in inputs]
    assert records["au_16k.au"]["ok"]
    assert output["failed"] == 5 and predict.exit_status(output) == 1
    errors = capsys.readouterr().err
    for name in [*BAD_FILES, "empty_folder"]:
        assert not records[name]["ok"]
        assert name in records[name]["error"] and name in errors
    assert "shorter than one segment" in records["too_short.wav"]["error"]
    assert "does not exist" in records["missing.mp3"]["error"]
    assert predict.exit_status(predict.main(predict_args([runs["mel"] / "best.pt"], good))) == 0


def test_ensemble_of_other_labels_is_refused(runs, tmp_path):
    ckpt = load_checkpoint(runs["mfcc"] / "best.pt")
    ckpt["labels"] = ckpt["labels"][::-1]
    save_checkpoint(ckpt, tmp_path / "reversed.pt")
    with pytest.raises(predict.PredictError, match="different labels"):
        load_members([runs["mel"] / "best.pt", tmp_path / "reversed.pt"], error=predict.PredictError)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(predict.PredictError, match="nothing.pt"):
        predict.main(predict_args([tmp_path / "nothing.pt"], tmp_path))


# -- output ---------------------------------------------------------------------------------------
def check_schema(output: dict, *, segments: bool) -> None:
    assert set(output) == {"checkpoints", "labels", "files", "failed"}
    labels = output["labels"]
    assert all(isinstance(x, str) for x in output["checkpoints"] + labels)
    for record in output["files"]:
        if not record["ok"]:
            assert set(record) == {"path", "ok", "error"} and isinstance(record["error"], str)
            continue
        keys = {"path", "ok", "seconds", "flags", "top", "probabilities"} | ({"segments"} if segments else set())
        assert set(record) == keys
        assert isinstance(record["seconds"], float) and isinstance(record["flags"], list)
        assert all(set(t) == {"label", "probability"} and t["label"] in labels for t in record["top"])
        assert list(record["probabilities"]) == labels
        for seg in record.get("segments", []):
            assert {"start", "end", "top", "probabilities"} <= set(seg) and seg["start"] < seg["end"]
            assert list(seg["probabilities"]) == labels and seg["top"] in labels


def test_json_output_schema(runs, audio_dir, capsys):
    output = predict.main(predict_args([runs["mel"] / "best.pt"], audio_dir / "ogg_32k.ogg",
                                       audio_dir / "nothing.wav", extra=["--json", "--segments", "--top", "99"]))
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(output))
    check_schema(printed, segments=True)
    assert len(printed["files"][0]["top"]) == len(printed["labels"])  # --top is capped at the labels


def test_text_output_shows_top_genres_and_segments(runs, audio_dir, capsys):
    output = predict.main(predict_args([runs["mel"] / "best.pt"], audio_dir / "stereo_44k.flac",
                                       extra=["--segments", "--top", "2"]))
    text = capsys.readouterr().out
    record = output["files"][0]
    assert "stereo_44k.flac" in text and "segments:" in text
    for top in record["top"]:
        assert f"{top['label']}" in text and f"{top['probability']:.3f}" in text
    assert text.count(" s  ") == len(record["segments"])


def run_command_line(monkeypatch, *argv) -> int:
    """Run predict.py as ``python predict.py ARGV`` would (in this process: no start-up cost)."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "predict.py"), run_name="__main__")
    return info.value.code


def test_command_line_exit_status_and_json(runs, audio_dir, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio\n" * 20)
    code = run_command_line(monkeypatch, "--checkpoint", runs["mel"] / "best.pt", "--json",
                            audio_dir / "au_16k.au", bad)
    out, err = capsys.readouterr()
    assert code == 1
    output = json.loads(out)
    check_schema(output, segments=False)
    assert [r["ok"] for r in output["files"]] == [True, False]
    assert "error:" in err and "bad.wav" in err
    assert run_command_line(monkeypatch, "--checkpoint", runs["mel"] / "best.pt", audio_dir / "au_16k.au") == 0
    capsys.readouterr()
    # An unusable checkpoint: one error line (common.cli.run) and exit status 1.
    code = run_command_line(monkeypatch, "--checkpoint", tmp_path / "none.pt", audio_dir / "au_16k.au")
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "none.pt" in err and err.count("\n") == 1
