"""build_cache.py: the file's layout, augmentation, determinism, resume and bad input."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import build_cache
from cache.format import FORMAT_VERSION, STATUS_DONE, STATUS_SKIPPED, fingerprint
from cache.inspect import summarize
from cache.writer import SettingsMismatch
from pipeline.audio import load_audio
from pipeline.features import FEATURES, build_feature
from pipeline.splits import SplitListError, read_split_lists
from tests.conftest import TINY_CLIPS_PER_GENRE, TINY_SECONDS, build_args

REPO = Path(__file__).resolve().parents[1]


def datasets_of(path) -> dict[str, np.ndarray]:
    """Every dataset's values, by name, for comparing two builds."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        found["/attrs"] = {k: f.attrs[k] for k in f.attrs}
    return found


def assert_same_content(a, b) -> None:
    left, right = datasets_of(a), datasets_of(b)
    assert sorted(left) == sorted(right)
    for name in left:
        if name == "/attrs":
            assert {k: str(v) for k, v in left[name].items()} == {k: str(v) for k, v in right[name].items()}
        else:
            np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def test_layout_settings_and_chunks(tiny_cache, tiny_gtzan):
    lists = read_split_lists(tiny_gtzan)
    with h5py.File(tiny_cache, "r") as f:
        settings = json.loads(f.attrs["settings"])
        assert f.attrs["complete"] == 1
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["fingerprint"] == fingerprint(settings)
        assert settings["labels"] == list(lists.labels)
        assert settings["sample_rate"] == 22050 and settings["duration"] == TINY_SECONDS
        assert settings["augment"]["versions"] == 1
        assert sorted(settings["features"]) == sorted(FEATURES)
        for split, clips in lists.clips.items():
            n_rows = len(clips) * (2 if split == "train" else 1)
            group = f[split]
            assert (group["status"][...] == STATUS_DONE).all()
            assert [p.decode() for p in group["path"][::2 if split == "train" else 1]] == [c.listed for c in clips]
            for name, feature in settings["features"].items():
                dset = group["features"][name]
                assert dset.shape == (n_rows, *feature["shape"])
                assert dset.chunks == (1, *feature["shape"])  # one clip per chunk: memory-mappable
                assert dset.dtype == np.dtype("<f4") and dset.compression is None


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_cached_feature_equals_direct_computation(tiny_cache, tiny_gtzan, name):
    lists = read_split_lists(tiny_gtzan)
    clip = lists.clips["valid"][3]
    audio = load_audio(clip.path, sr=22050, duration=TINY_SECONDS)
    expected = build_feature(name, sr=22050)(audio.samples)
    with h5py.File(tiny_cache, "r") as f:
        np.testing.assert_allclose(f["valid/features"][name][3], expected, rtol=1e-5, atol=1e-5)


def test_augmentation_only_on_train_with_recorded_parameters(tiny_cache):
    with h5py.File(tiny_cache, "r") as f:
        for split in ("valid", "test"):
            assert (f[split]["version"][...] == 0).all()
            assert all(a == b"" for a in f[split]["augment"][...])
        versions = f["train/version"][...]
        assert sorted(set(versions.tolist())) == [0, 1]
        applied = [json.loads(a) for a, v in zip(f["train/augment"][...], versions) if v == 1]
        assert applied and all(len(a) >= 1 for a in applied)
        mel = f["train/features/mel"]
        # An augmented copy differs from its original.
        assert not np.allclose(mel[0], mel[1])


def test_h5ls_lists_every_dataset(tiny_cache):
    if shutil.which("h5ls") is None:
        pytest.skip("h5ls not installed (apt-get install -y hdf5-tools)")
    listing = subprocess.run(["h5ls", "-r", str(tiny_cache)], capture_output=True, text=True, check=True).stdout
    for split in ("train", "valid", "test"):
        for name in FEATURES:
            assert re.search(rf"^/{split}/features/{name}\s+Dataset", listing, re.M), listing
        for field in ("path", "flags", "augment", "group", "checksum"):
            assert re.search(rf"^/{split}/{field}\s+Dataset", listing, re.M), field
    attrs = subprocess.run(["h5dump", "-A", str(tiny_cache)], capture_output=True, text=True, check=True).stdout
    assert "fingerprint" in attrs and "settings" in attrs
    # Row text is fixed-length UTF-8, which the HDF5 1.10 tools print as such.
    flags = subprocess.run(["h5dump", "-d", "/train/flags", str(tiny_cache)], capture_output=True, text=True,
                           check=True).stdout
    assert "H5T_CSET_UTF8" in flags and 'DATA {' in flags


def test_same_file_whatever_the_worker_count(tiny_gtzan, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    summary = build_cache.main(build_args(tiny_gtzan, one, "--features", "mel", "--augment", "2", "--jobs", "1"))
    assert 0 < summary.first_result_s <= summary.last_result_s <= summary.seconds
    build_cache.main(build_args(tiny_gtzan, two, "--features", "mel", "--augment", "2", "--jobs", "2"))
    assert_same_content(one, two)


def test_rerun_with_same_settings_does_nothing(tiny_cache, tiny_gtzan, capsys):
    before = tiny_cache.stat().st_mtime_ns
    summary = build_cache.main(build_args(tiny_gtzan, tiny_cache, "--features", "mel,mfcc,chroma,cqt,wave",
                                          "--augment", "1"))
    assert summary.up_to_date and summary.first_result_s is None
    assert "up to date" in capsys.readouterr().out
    assert tiny_cache.stat().st_mtime_ns == before


def test_other_settings_are_refused_then_overwritten(tiny_gtzan, tmp_path):
    out = tmp_path / "c.h5"
    build_cache.main(build_args(tiny_gtzan, out, "--features", "mel"))
    with pytest.raises(SettingsMismatch, match=r"features\.mel\.n_mels: file has 128, now asked for 64"):
        build_cache.main(build_args(tiny_gtzan, out, "--features", "mel", "--n-mels", "64"))
    build_cache.main(build_args(tiny_gtzan, out, "--features", "mel", "--n-mels", "64", "--overwrite"))
    with h5py.File(out, "r") as f:
        assert f["train/features/mel"].shape[1] == 64


def test_undecodable_file_is_skipped_and_reported(gtzan_copy, tmp_path, capsys):
    lists = read_split_lists(gtzan_copy)
    bad = lists.clips["test"][2]
    bad.path.write_bytes(b"this is not audio at all" * 10)
    out = tmp_path / "c.h5"
    summary = build_cache.main(build_args(gtzan_copy, out, "--features", "mel"))
    assert [s["path"] for s in summary.skipped] == [bad.listed]
    err = capsys.readouterr().err
    assert bad.listed in err and "skipped" in err
    with h5py.File(out, "r") as f:
        status = f["test/status"][...]
        assert status[2] == STATUS_SKIPPED and (np.delete(status, 2) == STATUS_DONE).all()
        recorded = json.loads(f.attrs["skipped"])
        assert recorded[0]["path"] == bad.listed and recorded[0]["reason"]
        assert not f["test/features/mel"][2].any()  # zeroed, and marked skipped, never served
    assert bad.listed in summarize(out)


def test_missing_data_folder_gives_split_list_error(tmp_path):
    with pytest.raises(SplitListError, match="python -m synthetic DIR"):
        build_cache.main(build_args(tmp_path / "nowhere", tmp_path / "c.h5"))


@pytest.mark.parametrize("flags, message", [
    (["--features", "mel,nope"], "nope"),
    (["--features", "mel", "--n-mfcc", "13"], "n-mfcc"),
    (["--features", "mel", "--set", "mfcc.n_mfcc=13"], "not in --features"),
    (["--features", "mel", "--set", "mel"], "FEATURE.KEY=VALUE"),
    (["--features", "mel", "--augment", "1", "--effects", "pitch,reverb"], "reverb"),
    (["--features", "mel", "--jobs", "0"], "--jobs"),
])
def test_bad_flags_are_refused_with_a_message(tiny_gtzan, tmp_path, flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_cache.main(build_args(tiny_gtzan, tmp_path / "c.h5", *flags))


def test_killed_build_resumes_to_identical_file(tiny_gtzan, tmp_path):
    flags = ["--data", str(tiny_gtzan), "--duration", str(TINY_SECONDS), "--features", "mel,cqt",
             "--augment", "2", "--jobs", "1"]
    reference = tmp_path / "reference.h5"
    build_cache.main(build_cache.get_args_parser().parse_args([*flags, "--out", str(reference), "--no-progress"]))

    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "build_cache.py", *flags, "--out", str(out)], cwd=REPO,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        seen += proc.stderr.read1(256)
        done = [int(n) for n in re.findall(rb"(\d+)/\d+ \[", seen)]
        if done and max(done) >= 5:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.with_name(out.name + ".partial")
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as f:
        done_before = int((f["train/status"][...] == STATUS_DONE).sum())
    total_clips = 8 * TINY_CLIPS_PER_GENRE
    assert 0 < done_before < total_clips * 3  # it really stopped part-way

    summary = build_cache.main(build_cache.get_args_parser().parse_args([*flags, "--out", str(out), "--no-progress"]))
    assert summary.resumed and not partial.exists()
    assert_same_content(reference, out)


def test_inspect_summary_names_splits_features_and_settings(tiny_cache):
    text = summarize(tiny_cache)
    for word in ("train", "valid", "test", "mel", "wave", "complete", "fingerprint", "versions"):
        assert word in text
