"""Tests for pipeline.splits: parsing and refusing GTZAN-style split lists."""
from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from pipeline.splits import LIST_FILES, SPLITS, Clip, SplitListError, read_split_lists

SR = 8000


def write_clip(root, relative, *, seed=0):
    """A 0.1 s noise file at root/relative (format from the suffix)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, int(0.1 * SR))
    sf.write(path, noise, SR)
    return path


def make_dataset(root, lists, *, files=None):
    """Write the list files (split -> lines) and, unless given, every listed file."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (root / LIST_FILES[split]).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    if files is None:
        files = [line.strip() for lines in lists.values() for line in lines if line.strip()]
    for seed, relative in enumerate(dict.fromkeys(files)):
        write_clip(root, relative, seed=seed)
    return root


def valid_lists():
    return {
        "train": ["rock/rock.00001.wav", "blues/blues.00001.wav", "jazz/jazz.00001.wav"],
        "valid": ["jazz/jazz.00002.wav", "rock/rock.00002.wav"],
        "test": ["blues/blues.00003.wav"],
    }


def problem_lines(error: SplitListError) -> list[str]:
    """The '<list file>:<line>: ...' lines of an error message."""
    return [line.strip() for line in str(error).splitlines()
            if re.match(r"\s+\w+_filtered\.txt:\d+: ", line)]


def test_reads_clips_in_list_order(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    lists = read_split_lists(root)

    assert lists.root == root.resolve()
    assert set(lists.clips) == set(SPLITS)
    for split in SPLITS:
        assert lists.listed(split) == valid_lists()[split]
        for clip, listed in zip(lists.clips[split], valid_lists()[split]):
            assert isinstance(clip, Clip)
            assert clip.split == split
            assert clip.path.is_absolute() and clip.path == (root / listed).resolve()
            assert clip.label == listed.split("/")[0]


def test_labels_sorted_and_only_those_used(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    # Genre folders present on disk but unused by the lists must not become labels.
    write_clip(root, "metal/metal.00000.wav")
    write_clip(root, "pop/pop.00000.wav")
    lists = read_split_lists(root)

    assert lists.labels == ("blues", "jazz", "rock")
    assert [lists.label_index(label) for label in ("blues", "jazz", "rock")] == [0, 1, 2]
    with pytest.raises(ValueError, match="metal.*blues, jazz, rock"):
        lists.label_index("metal")


def test_listed_unknown_split_raises(tmp_path):
    root = make_dataset(tmp_path / "data", {"test": ["blues/blues.00000.wav"]})
    lists = read_split_lists(root, splits=("test",))
    with pytest.raises(ValueError, match="'train'.*test"):
        lists.listed("train")


def test_reads_only_the_requested_splits(tmp_path):
    # No train/valid list files exist: reading only "test" must not need them.
    root = make_dataset(tmp_path / "data", {"test": ["jazz/jazz.00000.wav", "pop/pop.00000.wav"]})
    lists = read_split_lists(root, splits=("test",))
    assert list(lists.clips) == ["test"]
    assert lists.labels == ("jazz", "pop")


@pytest.mark.parametrize("splits", [("train", "dev"), (), "training"])
def test_unknown_split_name_raises(tmp_path, splits):
    root = make_dataset(tmp_path / "data", valid_lists())
    with pytest.raises(ValueError, match="choose from: train, valid, test"):
        read_split_lists(root, splits=splits)


def test_tolerates_crlf_blank_lines_spaces_and_bom(tmp_path):
    root = tmp_path / "data"
    files = ["blues/blues.00000.wav", "jazz/jazz.00000.wav", "rock/rock.00000.wav"]
    make_dataset(root, {"valid": ["pop/pop.00000.wav"], "test": ["metal/metal.00000.wav"]},
                 files=files + ["pop/pop.00000.wav", "metal/metal.00000.wav"])
    messy = ("\ufeff  blues/blues.00000.wav \r\n\r\n   \r\n"
             "\tjazz\\jazz.00000.wav\r\n./rock//rock.00000.wav  \r\n\r\n")
    (root / LIST_FILES["train"]).write_bytes(messy.encode("utf-8"))

    lists = read_split_lists(root)
    assert lists.listed("train") == files
    assert all(clip.path.is_file() for clip in lists.clips["train"])


def test_listed_wav_resolves_to_au(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_clip(root, "blues/blues.00004.au")
    write_clip(root, "jazz/jazz.00004.au")
    write_clip(root, "jazz/jazz.00004.wav")  # both exist: the listed one wins
    (root / LIST_FILES["test"]).write_text("blues/blues.00004.wav\njazz/jazz.00004.wav\n")

    (blues, jazz) = read_split_lists(root).clips["test"]
    assert blues.listed == "blues/blues.00004.wav"
    assert blues.path == (root / "blues/blues.00004.au").resolve()
    assert jazz.path.suffix == ".wav"


@pytest.mark.parametrize("make_root", ["missing", "file"])
def test_missing_root_says_what_was_expected(tmp_path, make_root):
    root = tmp_path / "gtzan"
    if make_root == "file":
        root.write_text("not a folder")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    message = str(info.value)
    assert str(root) in message
    assert "python -m pipeline.synthetic DIR" in message
    assert "<genre>" in message and "train_filtered.txt" in message


@pytest.mark.parametrize("split", SPLITS)
def test_missing_list_file(tmp_path, split):
    root = make_dataset(tmp_path / "data", valid_lists())
    (root / LIST_FILES[split]).unlink()
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    message = str(info.value)
    assert f"{LIST_FILES[split]}: list file not found" in message
    assert "1 problem" in message


@pytest.mark.parametrize("split", SPLITS)
def test_empty_list(tmp_path, split):
    root = make_dataset(tmp_path / "data", valid_lists())
    (root / LIST_FILES[split]).write_text("\n  \r\n\n")
    with pytest.raises(SplitListError, match=rf"{LIST_FILES[split]}: the list is empty"):
        read_split_lists(root)


def test_reports_every_missing_file_with_count(tmp_path):
    lists = valid_lists()
    present = ["rock/rock.00001.wav", "jazz/jazz.00002.wav"]
    make_dataset(tmp_path / "data", lists, files=present)
    with pytest.raises(SplitListError) as info:
        read_split_lists(tmp_path / "data")

    message = str(info.value)
    expected = {"train_filtered.txt:2", "train_filtered.txt:3", "valid_filtered.txt:2",
                "test_filtered.txt:1"}
    reported = {line.split(": ")[0] for line in problem_lines(info.value)}
    assert reported == expected
    assert "4 listed file(s) do not exist" in message
    assert "also tried .au" in message
    assert "blues/blues.00003.wav" in message


@pytest.mark.parametrize("bad", ["{root}/blues/blues.00001.wav", "../data/blues/blues.00001.wav",
                                 "blues/../../data/blues/blues.00001.wav",
                                 "C:\\gtzan\\blues\\blues.00001.wav"])
def test_path_escaping_root_is_refused(tmp_path, bad):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_clip(root, "blues/blues.00001.wav")  # exists, so only the form of the path is wrong
    bad = bad.format(root=root)
    (root / LIST_FILES["valid"]).write_text(f"jazz/jazz.00002.wav\n{bad}\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    expected = f"valid_filtered.txt:2: path {bad!r} points outside the dataset root"
    assert problem_lines(info.value) == [expected]
    assert "relative to the dataset root" in str(info.value)


def test_path_without_genre_folder_is_refused(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_clip(root, "blues.00009.wav")
    (root / LIST_FILES["test"]).write_text("blues/blues.00003.wav\nblues.00009.wav\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert problem_lines(info.value) == ["test_filtered.txt:2: path 'blues.00009.wav' has no genre folder"]


def test_file_listed_twice_in_one_list(tmp_path):
    lists = valid_lists()
    lists["train"] += ["blues/blues.00009.wav", "blues/blues.00001.wav"]
    root = make_dataset(tmp_path / "data", lists)
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    (line,) = problem_lines(info.value)
    assert line.startswith("train_filtered.txt:5: blues/blues.00001.wav is listed twice")
    assert "train_filtered.txt:2" in line


def test_file_in_two_splits_is_leakage(tmp_path):
    lists = valid_lists()
    lists["test"] += ["jazz/jazz.00001.wav"]
    root = make_dataset(tmp_path / "data", lists)
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    (line,) = problem_lines(info.value)
    assert line.startswith("test_filtered.txt:2: jazz/jazz.00001.wav is also in train_filtered.txt:3")
    assert "leakage" in line


def test_wav_and_au_spelling_of_one_clip_is_leakage(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_clip(root, "pop/pop.00000.au")
    (root / LIST_FILES["valid"]).write_text("pop/pop.00000.wav\n")
    (root / LIST_FILES["test"]).write_text("pop/pop.00000.au\n")
    with pytest.raises(SplitListError, match=r"test_filtered.txt:1: .* valid_filtered.txt:1"):
        read_split_lists(root)


def test_collects_all_problems_before_raising(tmp_path):
    lists = {
        "train": ["blues/blues.00001.wav", "blues/blues.00001.wav", "/etc/passwd", "lonely.wav"],
        "valid": ["blues/blues.00001.wav", "rock/rock.00404.wav"],
        "test": [],
    }
    make_dataset(tmp_path / "data", lists, files=["blues/blues.00001.wav", "lonely.wav"])
    with pytest.raises(SplitListError) as info:
        read_split_lists(tmp_path / "data")

    message = str(info.value)
    located = problem_lines(info.value)
    assert {line.split(": ")[0] for line in located} == {
        "train_filtered.txt:2", "train_filtered.txt:3", "train_filtered.txt:4",
        "valid_filtered.txt:1", "valid_filtered.txt:2"}
    assert "test_filtered.txt: the list is empty" in message
    assert "have 6 problem(s)" in message
    # One hint per kind of problem: empty, duplicate, escapes, no genre, leakage, missing.
    assert message.count("\n  - ") == 6
