"""Several cached spectrograms as one input (``--feature mel+cqt``): data, training, checkpoints,
eval-only, resume, prediction from audio, ensembles, and the refusals."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import evaluate
import predict
import sweep
import train
from cache.format import describe_feature
from cache.reader import FeatureCache
from cache.writer import CacheWriter, SplitRows
from models import MODELS, build_model, model_input_kind
from tests.test_evaluate import evaluate_args, member_clip_probs
from training.checkpoint import load_checkpoint, load_members, save_checkpoint
from training.config import TrainConfig, feature_parts
from training.data import SegmentDataset, compute_normalization
from training.ensemble import ensemble_datasets, member_segments
from training.errors import CheckpointError, TrainError
from training.scoring import clip_scores

SEGMENT_SECONDS = "2.0"
SEGMENT = 50  # frames, for the dataset tests (the tiny clips have 173)
# The combinations the tiny cache (mel, mfcc, chroma, cqt, wave) can stack.
COMBINATIONS = [("mel", "mfcc"), ("mel", "cqt"), ("mel", "chroma"), ("cqt", "chroma", "mfcc")]


# -- the --feature value ---------------------------------------------------------------------------
def test_feature_parts_split_on_plus_and_keep_the_order():
    assert feature_parts("mel") == ("mel",)
    assert feature_parts("cqt+mel") == ("cqt", "mel")
    assert feature_parts("mel_fine+cqt+chroma") == ("mel_fine", "cqt", "chroma")


@pytest.mark.parametrize("feature, message", [
    ("mel+", "--feature 'mel+' has an empty part"),
    ("+cqt", "--feature '+cqt' has an empty part"),
    ("mel++cqt", "--feature 'mel++cqt' has an empty part"),
    ("mel+cqt+mel", "--feature mel+cqt+mel: 'mel' is given more than once; each cached feature can be "
                    "stacked once, e.g. --feature mel+cqt"),
])
def test_malformed_feature_is_refused_before_any_work(tiny_cache, tmp_path, feature, message):
    out = tmp_path / "run"
    with pytest.raises(TrainError) as info:
        train.main(train_args(tiny_cache, out, "--feature", feature))
    assert message in str(info.value)
    assert not out.exists()


# -- datasets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("parts", COMBINATIONS, ids="+".join)
def test_stacked_items_are_each_parts_items_stacked(tiny_cache, parts):
    """Same rows, same crop starts, each part normalised with its own statistics, bins concatenated."""
    feature = "+".join(parts)
    stats = [compute_normalization(tiny_cache, part) for part in parts]
    mean, std = compute_normalization(tiny_cache, feature)
    np.testing.assert_array_equal(mean, np.concatenate([m for m, _ in stats]))
    np.testing.assert_array_equal(std, np.concatenate([s for _, s in stats]))
    for train_mode, splits in ((True, ("train",)), (False, ("valid", "test"))):
        kwargs = dict(splits=splits, segment_frames=SEGMENT, train=train_mode, seed=3, crops_per_clip=2,
                      hop_frames=20)
        stacked = SegmentDataset(tiny_cache, feature=feature, mean=mean, std=std, **kwargs)
        singles = [SegmentDataset(tiny_cache, feature=part, mean=m, std=s, **kwargs)
                   for part, (m, s) in zip(parts, stats)]
        assert stacked.n_bins == sum(d.n_bins for d in singles) and stacked.parts == parts
        assert len(stacked) == len(singles[0]) and stacked.frames_per_second == singles[0].frames_per_second
        if train_mode:
            for dataset in (stacked, *singles):
                dataset.set_epoch(2)
            assert stacked.training_crops(2) == singles[0].training_crops(2)
        indices = list(range(len(stacked)))
        batch, theirs = stacked.get_batch(indices), [d.get_batch(indices) for d in singles]
        assert batch[0].shape == (len(indices), stacked.n_bins, SEGMENT)
        assert torch.equal(batch[0], torch.cat([b[0] for b in theirs], dim=1))
        for k in range(1, len(batch)):  # labels, and clip ids of evaluation items
            assert torch.equal(batch[k], theirs[0][k])
        for i in (0, len(stacked) - 1):  # item by item, as a DataLoader without batch_loader reads
            assert torch.equal(stacked[i][0], torch.cat([d[i][0] for d in singles], dim=0))


def test_stacked_dataset_pickles_for_loader_workers(tiny_cache):
    mean, std = compute_normalization(tiny_cache, "mel+cqt")
    dataset = SegmentDataset(tiny_cache, feature="mel+cqt", segment_frames=SEGMENT, train=True, seed=1,
                             mean=mean, std=std)
    again = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(again.get_batch([0, 5, 9])[0], dataset.get_batch([0, 5, 9])[0])


@pytest.mark.parametrize("model", sorted(m for m in MODELS if model_input_kind(m) == "spectrogram"))
def test_every_spectrogram_model_takes_stacked_bins(tiny_cache, model):
    dataset = SegmentDataset(tiny_cache, feature="mel+cqt", segment_frames=86, train=True, seed=0)
    net = build_model(model, n_bins=dataset.n_bins, n_classes=len(dataset.labels)).eval()
    with torch.no_grad():
        logits = net(dataset.get_batch([0, 1])[0])
    assert logits.shape == (2, len(dataset.labels)) and torch.isfinite(logits).all()


# -- refusals: parts that do not stack -------------------------------------------------------------
FPS = 20
SHAPES = {"mel": (6, 40), "cqt": (4, 40), "fine": (6, 80), "short": (6, 39), "wave": (400,)}


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory):
    """A cache whose features differ in kind, frame rate ("fine": 40 frames/s) and frame count ("short")."""
    path = tmp_path_factory.mktemp("mixed") / "cache.h5"
    rates = {"mel": FPS, "cqt": FPS, "fine": 2 * FPS, "short": FPS, "wave": 200}
    features = {name: describe_feature({}, kind="waveform" if name == "wave" else "spectrogram",
                                       frames_per_second=rates[name], shape=shape)
                for name, shape in SHAPES.items()}
    settings = {"format_version": 1, "sample_rate": 200, "duration": 2.0, "labels": ["a", "b"],
                "features": features, "augment": {"versions": 0}}
    layout = {split: SplitRows(paths=tuple(f"{'ab'[c % 2]}/{split}{c}.wav" for c in range(n)),
                               labels=tuple(c % 2 for c in range(n)), versions=0)
              for split, n in (("train", 4), ("valid", 2), ("test", 2))}
    rng = np.random.default_rng(0)
    with CacheWriter(path, settings=settings, layout=layout, shapes=SHAPES) as writer:
        for split, rows in layout.items():
            for clip in range(len(rows.paths)):
                writer.write_rows(split, clip, [(0, {name: rng.standard_normal(shape).astype("<f4")
                                                     for name, shape in SHAPES.items()}, {}, ())])
        writer.finish()
    return path


FITS_MEL = "features of cache {cache} that stack with 'mel' (same frame rate and frame count): cqt, e.g. " \
           "--feature mel+cqt"


@pytest.mark.parametrize("feature, messages", [
    ("mel+fine", ["feature 'mel+fine': part 'fine' has 40.00 frames/s and 80 frames per clip, but 'mel' has "
                  "20.00 frames/s and 40 frames per clip; stacked parts need the same frames", FITS_MEL]),
    ("mel+short", ["part 'short' has 20.00 frames/s and 39 frames per clip, but 'mel' has 20.00 frames/s and "
                   "40 frames per clip", FITS_MEL]),
    ("mel+wave", ["feature 'mel+wave': part 'wave' is a waveform, and only spectrograms stack along their bins",
                  FITS_MEL]),
    ("wave+mel", ["part 'wave' is a waveform", "the spectrograms of cache {cache}: cqt, fine, mel, short"]),
    ("fine+mel", ["no other feature of cache {cache} has the frames of 'fine'; train on 'fine' alone"]),
    ("mel+nope", ["feature 'mel+nope': cache {cache} has no feature 'nope' (available: cqt, fine, mel, short, "
                  "wave)"]),
])
def test_parts_that_do_not_stack_are_refused_with_those_that_do(mixed_cache, tmp_path, feature, messages):
    expected = [m.format(cache=mixed_cache) for m in messages]
    with pytest.raises(ValueError) as info:
        SegmentDataset(mixed_cache, feature=feature, segment_frames=10, train=True)
    for message in expected:
        assert message in str(info.value)
    out = tmp_path / "run"
    with pytest.raises(TrainError) as info:
        train.main(train_args(mixed_cache, out, "--feature", feature, "--segment-seconds", "0.5"))
    for message in expected:
        assert message in str(info.value)
    assert not (out / "args.json").exists()  # refused before the run wrote anything


def test_parts_that_stack_train_on_the_mixed_cache(mixed_cache, tmp_path):
    dataset = SegmentDataset(mixed_cache, feature="cqt+mel", segment_frames=10, train=True)
    assert dataset.n_bins == 10 and dataset.get_batch([0])[0].shape == (1, 10, 10)


# -- runs ------------------------------------------------------------------------------------------
def train_args(cache, out_dir, *extra):
    return train.get_args_parser().parse_args(
        ["--cache", str(cache), "--out-dir", str(out_dir), "--segment-seconds", SEGMENT_SECONDS, "--workers", "0",
         "--no-progress", "--batch-size", "16", "--crops-per-clip", "1", "--model", "cnn1d", *extra])


STACKED = ["--feature", "mel+cqt", "--optimizer", "adam", "--lr", "0.003", "--schedule", "plateau", "--seed", "1",
           "--mask-bins", "16", "--mask-frames", "10"]


@pytest.fixture(scope="module")
def stacked_runs(tiny_cache, tmp_path_factory):
    """A mel+cqt run of 2 epochs, and a mel run, on the tiny cache."""
    root = tmp_path_factory.mktemp("stacked_runs")
    results = train.main(train_args(tiny_cache, root / "mc", "--epochs", "2", *STACKED))
    train.main(train_args(tiny_cache, root / "mel", "--epochs", "1", "--feature", "mel"))
    return {"mc": root / "mc", "mel": root / "mel", "results": results}


def test_checkpoint_records_the_parts_and_their_normalisation(stacked_runs, tiny_cache):
    cache = FeatureCache(tiny_cache)
    ckpt = load_checkpoint(stacked_runs["mc"] / "best.pt")
    settings = ckpt["feature_settings"]
    mel, cqt = cache.feature_settings("mel"), cache.feature_settings("cqt")
    assert ckpt["feature"] == "mel+cqt" and list(settings["parts"]) == ["mel", "cqt"]
    assert settings["parts"] == {"mel": mel, "cqt": cqt}
    assert settings["kind"] == "spectrogram" and settings["frames_per_second"] == mel["frames_per_second"]
    assert settings["shape"] == [mel["shape"][0] + cqt["shape"][0], mel["shape"][1]]
    assert ckpt["model_config"]["n_bins"] == 128 + 84
    for name, values in zip(("mean", "std"), zip(*(compute_normalization(cache, p) for p in ("mel", "cqt")))):
        np.testing.assert_array_equal(np.asarray(ckpt["normalization"][name], dtype=np.float32),
                                      np.concatenate(values))
    assert json.loads((stacked_runs["mc"] / "run.json").read_text())["feature_settings"] == settings
    # A single feature's checkpoint records the cache's settings exactly as before.
    single = load_checkpoint(stacked_runs["mel"] / "best.pt")
    assert single["feature_settings"] == mel and len(single["normalization"]["mean"]) == 128


def test_eval_only_reproduces_the_stacked_run(stacked_runs, tmp_path):
    again = train.main(train.get_args_parser().parse_args(
        ["--eval-only", "--checkpoint", str(stacked_runs["mc"] / "best.pt"), "--out-dir", str(tmp_path),
         "--no-progress"]))
    saved = json.loads((stacked_runs["mc"] / "results.json").read_text())
    for key in ("valid_acc", "test_acc", "valid_segment_acc", "test_segment_acc"):
        assert again[key] == saved[key], key
    assert again["test"]["confusion_matrix"] == saved["test"]["confusion_matrix"]


def test_stacked_run_resumes_exactly(stacked_runs, tiny_cache, tmp_path):
    train.main(train_args(tiny_cache, tmp_path, "--epochs", "1", *STACKED))
    train.main(train_args(tiny_cache, tmp_path, "--epochs", "2", *STACKED, "--resume"))
    straight = load_checkpoint(stacked_runs["mc"] / "last.pt")["state_dict"]
    resumed = load_checkpoint(tmp_path / "last.pt")["state_dict"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)


def test_resume_with_other_parts_is_refused(stacked_runs, tiny_cache, tmp_path):
    train.main(train_args(tiny_cache, tmp_path, "--epochs", "1", *STACKED))
    flags = [*STACKED[:1], "cqt+mel", *STACKED[2:]]
    with pytest.raises(TrainError, match=r"trained with --feature mel\+cqt, not --feature cqt\+mel"):
        train.main(train_args(tiny_cache, tmp_path, "--epochs", "2", *flags, "--resume"))


def test_prediction_from_audio_equals_evaluation_from_the_cache(stacked_runs, tiny_cache, tiny_gtzan):
    """predict.py computes every part from one decode and stacks them as the cache rows are stacked."""
    path = stacked_runs["mc"] / "best.pt"
    (member,) = load_members([path])
    dataset = ensemble_datasets([member], tiny_cache)[0]["test"]
    probs, clip_ids = member_segments(member, dataset, batch_size=64, workers=0, device="cpu", amp=False,
                                      progress=False)
    cached = clip_scores(probs, clip_ids, clip_labels=dataset.clip_labels, n_classes=len(dataset.labels))["clip_probs"]
    files = []
    for listed in dataset.clip_paths:  # the lists name .wav where the clip is stored as .au
        audio = tiny_gtzan / listed
        files.append(audio if audio.exists() else audio.with_suffix(".au"))
    output = predict.main(predict.get_args_parser().parse_args([*map(str, files), "--checkpoint", str(path)]))
    assert output["failed"] == 0
    predicted = np.array([list(r["probabilities"].values()) for r in output["files"]])
    np.testing.assert_allclose(predicted, cached, atol=1e-4)


def test_ensemble_of_a_stacked_and_a_single_member_evaluates(stacked_runs, tiny_cache):
    ckpts = [stacked_runs["mc"] / "best.pt", stacked_runs["mel"] / "best.pt"]
    summary = evaluate.main(evaluate_args(tiny_cache, ckpts))
    assert [m["feature"] for m in summary["members"]] == ["mel+cqt", "mel"]
    saved = json.loads((stacked_runs["mc"] / "results.json").read_text())
    assert summary["members"][0]["test_acc"] == pytest.approx(saved["test_acc"])
    for split in ("valid", "test"):
        (stacked, labels), (mel, _) = (member_clip_probs(c, tiny_cache, split) for c in ckpts)
        assert summary[f"{split}_acc"] == pytest.approx(float(np.mean(((stacked + mel) / 2).argmax(1) == labels)))
    # Same segments at the same frame rate: one segment-level score.
    assert summary["test_segment_acc"] is not None


def test_predict_with_a_stacked_and_a_single_member(stacked_runs, tiny_gtzan):
    song = next(tiny_gtzan.rglob("*.wav"))
    ckpts = [stacked_runs["mc"] / "best.pt", stacked_runs["mel"] / "best.pt"]
    alone = [predict.main(predict.get_args_parser().parse_args([str(song), "--checkpoint", str(c)]))
             for c in ckpts]
    both = predict.main(predict.get_args_parser().parse_args(
        [str(song), *sum((["--checkpoint", str(c)] for c in ckpts), [])]))
    for label, p in both["files"][0]["probabilities"].items():
        assert p == pytest.approx(np.mean([a["files"][0]["probabilities"][label] for a in alone]), abs=1e-6)


def test_cache_computing_a_part_otherwise_is_refused_naming_it(stacked_runs, tiny_cache, tmp_path):
    ckpt = load_checkpoint(stacked_runs["mc"] / "best.pt")
    ckpt["feature_settings"]["parts"]["cqt"]["bins_per_octave"] = 24
    save_checkpoint(ckpt, tmp_path / "other_cqt.pt")
    with pytest.raises(evaluate.EvaluateError, match=r"other settings than .*other_cqt.pt was trained on "
                                                     r"\(parts cqt\)"):
        evaluate.main(evaluate_args(tiny_cache, [tmp_path / "other_cqt.pt"]))


@pytest.mark.parametrize("change, message", [
    (lambda s: s["parts"].pop("cqt"), "stacks mel, cqt, but its settings record the parts ['mel']"),
    (lambda s: s["parts"]["cqt"]["shape"].__setitem__(0, 80), "has shape [212, 173], but its parts have 208 bins"),
    (lambda s: s["parts"]["cqt"].update(kind="waveform"), "stacks parts that are not all spectrograms"),
], ids=["missing part", "bins", "kind"])
def test_stacked_checkpoint_whose_parts_do_not_add_up_is_refused(stacked_runs, tmp_path, change, message):
    ckpt = load_checkpoint(stacked_runs["mc"] / "best.pt")
    change(ckpt["feature_settings"])
    save_checkpoint(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="is inconsistent") as info:
        load_checkpoint(tmp_path / "edited.pt")
    assert message in str(info.value)


# -- the recipes that waited for it ----------------------------------------------------------------
def test_sweep_runs_the_stacked_recipes_by_default():
    names = sweep.selected(None)
    for name in ("cnn1d_melcqt_a0", "cnn1d_melcqt_a4_mask"):
        assert name in names and name not in sweep.NEEDS
        cache, flags = sweep.RECIPES[name]
        config = TrainConfig.from_args(train.get_args_parser().parse_args(flags))
        assert config.feature == "mel+cqt" and "cqt" in sweep.CACHES[cache][sweep.CACHES[cache].index("--features") + 1]
    masked = TrainConfig.from_args(train.get_args_parser().parse_args(sweep.RECIPES["cnn1d_melcqt_a4_mask"][1]))
    assert (masked.mask_bins, masked.mask_frames) == (sweep.MASK_BINS["mel"], 20)
