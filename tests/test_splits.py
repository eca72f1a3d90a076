"""Tests for pipeline.splits: parsing and refusing GTZAN-style split lists."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import soundfile as sf

from pipeline.splits import LIST_FILES, SPLITS, Clip, SplitListError, read_split_lists

GROUPS = "tracks.tsv"

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


def group_lines(error: SplitListError) -> list[str]:
    """The 'tracks.tsv...: ...' lines of an error message."""
    return [line.strip() for line in str(error).splitlines() if re.match(r"\s+tracks\.tsv(:\d+)?: ", line)]


def write_groups(root, pairs, *, text=None):
    """tracks.tsv from (listed path, group) pairs, or the given raw text."""
    if text is None:
        text = "".join(f"{path}\t{group}\n" for path, group in pairs)
    (root / GROUPS).write_bytes(text.encode("utf-8"))


def track_groups():
    """A group per clip of valid_lists(): tracks never cross splits."""
    return [("rock/rock.00001.wav", "rock/t1"), ("blues/blues.00001.wav", "blues/t1"),
            ("jazz/jazz.00001.wav", "jazz/t1"), ("jazz/jazz.00002.wav", "jazz/t2"),
            ("rock/rock.00002.wav", "rock/t2"), ("blues/blues.00003.wav", "blues/t3")]


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
    assert "python -m synthetic DIR" in message
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


def test_split_list_error_is_a_user_error(tmp_path):
    from common.errors import UserError  # inside: older code has no common package

    with pytest.raises(UserError):
        read_split_lists(tmp_path / "nowhere")


# -- groups (tracks.tsv) ---------------------------------------------------------------
def test_without_groups_file_every_group_is_none(tmp_path):
    lists = read_split_lists(make_dataset(tmp_path / "data", valid_lists()))
    assert not lists.has_groups and lists.groups_file is None
    assert lists.groups("valid") == [None, None]
    # Clip stays constructible without a group, and frozen.
    clip = Clip(split="test", listed="a/a.wav", path=tmp_path / "a/a.wav", label="a")
    assert clip.group is None
    with pytest.raises(AttributeError):
        clip.group = "x"


def test_groups_are_read_with_the_lists_tolerance(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    (root / "blues/blues.00003.wav").rename(root / "blues/blues.00003.au")  # listed as .wav
    messy = ("\ufeff rock/rock.00001.wav \t rock/t1 \r\n\r\n   \r\n"
             "blues\\blues.00001.wav\tBob Marley & The Wailers\r\n"
             "./jazz//jazz.00001.wav\tjazz/t1\r\n"
             "jazz/jazz.00002.wav\tjazz/t2\r\nrock/rock.00002.wav\trock/t2\r\n"
             "blues/blues.00003.au\tblues/t3\r\n"       # the file's own spelling
             "blues/blues.00003.wav\tblues/t3\r\n")     # and the listed one, same group: fine
    write_groups(root, (), text=messy)

    lists = read_split_lists(root)
    assert lists.has_groups and lists.groups_file == root.resolve() / GROUPS
    assert lists.groups("train") == ["rock/t1", "Bob Marley & The Wailers", "jazz/t1"]
    assert lists.groups("valid") == ["jazz/t2", "rock/t2"]
    assert [clip.group for clip in lists.clips["test"]] == ["blues/t3"]


def test_listed_clip_without_group_names_its_list_and_line(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_groups(root, [pair for pair in track_groups() if pair[0] != "rock/rock.00002.wav"])
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert problem_lines(info.value) == ["valid_filtered.txt:2: rock/rock.00002.wav has no group in tracks.tsv"]
    assert "1 listed clip(s) have no group in tracks.tsv" in str(info.value)
    assert "Add a '<listed path><TAB><group id>' line to tracks.tsv" in str(info.value)


def test_groups_line_naming_an_unlisted_clip_is_refused(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_clip(root, "pop/pop.00000.wav")  # exists, but no list names it
    write_groups(root, track_groups() + [("pop/pop.00000.wav", "pop/t0"), ("pop/pop.00099.wav", "pop/t9")])
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert group_lines(info.value) == ["tracks.tsv:7: pop/pop.00000.wav is in no split list",
                                       "tracks.tsv:8: pop/pop.00099.wav is in no split list"]
    assert "must name a clip of a split list" in str(info.value)


@pytest.mark.parametrize("line, why", [
    ("rock/rock.00001.wav rock/t1", "expected <listed path><TAB><group id>, got 'rock/rock.00001.wav rock/t1' "
                                    "(1 tab-separated field(s))"),
    ("rock/rock.00001.wav\trock\tt1", "(3 tab-separated field(s))"),
    ("rock/rock.00001.wav\t  ", "(1 tab-separated field(s))"),
    ("\trock/t1", "(2 tab-separated field(s))"),
    ("../data/rock/rock.00001.wav\trock/t1", "path '../data/rock/rock.00001.wav' points outside the dataset root"),
    ("rock.00001.wav\trock/t1", "path 'rock.00001.wav' has no genre folder"),
])
def test_malformed_groups_line_is_refused(tmp_path, line, why):
    root = make_dataset(tmp_path / "data", valid_lists())
    write_groups(root, (), text="".join(f"{p}\t{g}\n" for p, g in track_groups()) + line + "\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    (reported,) = group_lines(info.value)
    assert reported.startswith("tracks.tsv:7: ") and why in reported
    assert "Write one '<listed path><TAB><group id>' line per clip" in str(info.value)


def test_clip_given_two_groups_is_refused(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    (root / "blues/blues.00003.wav").rename(root / "blues/blues.00003.au")
    write_groups(root, track_groups() + [("rock/rock.00001.wav", "rock/t1"),    # repeated: fine
                                         ("rock/rock.00001.wav", "rock/t9"),
                                         ("blues/blues.00003.au", "blues/t4")])  # another spelling
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert group_lines(info.value) == [
        "tracks.tsv:8: rock/rock.00001.wav is given group 'rock/t9', but tracks.tsv:1 gives it 'rock/t1'",
        "tracks.tsv:9: blues/blues.00003.au is given group 'blues/t4', but tracks.tsv:6 gives it 'blues/t3'"]
    assert "Give each clip one group" in str(info.value)


def test_group_in_two_splits_is_leakage(tmp_path):
    lists = valid_lists()
    lists["train"] += [f"jazz/jazz.{i:05d}.wav" for i in range(10, 15)]
    root = make_dataset(tmp_path / "data", lists)
    # jazz/t2 (a valid track) also owns five training clips.
    write_groups(root, track_groups() + [(f"jazz/jazz.{i:05d}.wav", "jazz/t2") for i in range(10, 15)])
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert group_lines(info.value) == [
        "tracks.tsv: group 'jazz/t2' is in train and valid (leakage between splits): "
        "train: 5 clip(s), jazz/jazz.00010.wav (train_filtered.txt:4), jazz/jazz.00011.wav (train_filtered.txt:5), "
        "jazz/jazz.00012.wav (train_filtered.txt:6) and 2 more; valid: 1 clip(s), jazz/jazz.00002.wav "
        "(valid_filtered.txt:1)"]
    assert "All clips of a group (track, album or artist) must be in one split" in str(info.value)


def test_artist_list_checks_an_artist_filtered_split(tmp_path):
    # GTZAN with an artist per clip: an artist in train and test is refused like a track.
    root = make_dataset(tmp_path / "data", valid_lists())
    artists = ["Led Zeppelin", "B.B. King", "Miles Davis", "Coltrane", "Queen", "B.B. King"]
    write_groups(root, [(path, artist) for (path, _), artist in zip(track_groups(), artists)])
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    (line,) = group_lines(info.value)
    assert line.startswith("tracks.tsv: group 'B.B. King' is in train and test")
    assert "blues/blues.00001.wav (train_filtered.txt:2)" in line and "blues/blues.00003.wav" in line


def test_reading_some_splits_checks_groups_of_those_only(tmp_path):
    lists = valid_lists()
    lists["test"] += ["jazz/jazz.00003.wav"]
    root = make_dataset(tmp_path / "data", lists)
    # jazz/t1 is in train and test, a leak that reading test alone cannot see; lines for
    # train and valid clips may name clips of the unread lists.
    write_groups(root, track_groups() + [("jazz/jazz.00003.wav", "jazz/t1")])
    test = read_split_lists(root, splits=("test",))
    assert test.groups("test") == ["blues/t3", "jazz/t1"]
    with pytest.raises(SplitListError, match="group 'jazz/t1' is in train and test"):
        read_split_lists(root)
    write_groups(root, track_groups())  # the test clip jazz.00003 has no group: still found
    with pytest.raises(SplitListError) as info:
        read_split_lists(root, splits=("test",))
    assert problem_lines(info.value) == ["test_filtered.txt:2: jazz/jazz.00003.wav has no group in tracks.tsv"]


@pytest.mark.parametrize("make, expected", [
    ("empty", "tracks.tsv: the groups file has no lines, so no listed clip has a group"),
    ("latin1", "tracks.tsv: cannot read the groups file"),
    ("folder", "tracks.tsv: the groups file {root}/tracks.tsv is not a file"),
    ("dangling", "tracks.tsv: the groups file {root}/tracks.tsv is a broken symbolic link to '/nonexistent/x.tsv'"),
])
def test_unusable_groups_file_is_one_problem(tmp_path, make, expected):
    root = make_dataset(tmp_path / "data", valid_lists())
    if make == "empty":
        write_groups(root, (), text="\n \r\n")
    elif make == "latin1":
        (root / GROUPS).write_bytes("rock/rock.00001.wav\tMot\xf6rhead\n".encode("latin-1"))
    elif make == "folder":
        (root / GROUPS).mkdir()
    else:
        os.symlink("/nonexistent/x.tsv", root / GROUPS)
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    message = str(info.value)
    assert "have 1 problem(s)" in message  # not one more per listed clip
    assert expected.format(root=root.resolve()) in message


def test_group_problems_are_collected_with_list_problems(tmp_path):
    lists = valid_lists()
    lists["valid"] += ["rock/rock.00404.wav"]  # missing file: its groups line is not "unlisted"
    root = make_dataset(tmp_path / "data", lists, files=[f for split in valid_lists().values() for f in split])
    groups = track_groups()[1:-1] + [("blues/blues.00003.wav", "blues/t1"),   # blues/t1 leaks into test
                                     ("rock/rock.00404.wav", "rock/t4"), ("bad line", ""),
                                     ("jazz/jazz.00002.wav", "jazz/t9")]
    write_groups(root, groups)
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    message = str(info.value)
    assert [line.split(": ")[0] for line in problem_lines(info.value)] == ["train_filtered.txt:1",
                                                                           "valid_filtered.txt:3"]
    assert [line.split(": ")[0] for line in group_lines(info.value)] == ["tracks.tsv:7", "tracks.tsv:8",
                                                                         "tracks.tsv"]
    assert "have 5 problem(s)" in message
    assert message.count("\n  - ") == 5  # missing, groups_missing, malformed, conflict, group leakage


# -- symbolic links -------------------------------------------------------------------
def test_symlinked_genre_folder_outside_the_root_is_followed(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    elsewhere = tmp_path / "other_disk" / "pop"
    write_clip(elsewhere.parent, "pop/pop.00000.wav")
    os.symlink(elsewhere, root / "pop")
    (root / LIST_FILES["test"]).write_text("blues/blues.00003.wav\npop/pop.00000.wav\n")
    (pop,) = [clip for clip in read_split_lists(root).clips["test"] if clip.label == "pop"]
    assert pop.path == root.resolve() / "pop/pop.00000.wav"  # the path inside the root
    assert sf.info(pop.path).frames == int(0.1 * SR)


def test_symlinked_file_is_followed(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    target = write_clip(tmp_path / "elsewhere", "song.flac")
    os.symlink(target, root / "blues/blues.00007.flac")
    (root / LIST_FILES["test"]).write_text("blues/blues.00007.flac\n")
    (clip,) = read_split_lists(root).clips["test"]
    assert clip.listed == "blues/blues.00007.flac" and clip.path.resolve() == target.resolve()


def test_dotdot_is_refused_even_when_it_stays_inside(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    (root / LIST_FILES["test"]).write_text("rock/../blues/blues.00003.wav\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert problem_lines(info.value) == [
        "test_filtered.txt:1: path 'rock/../blues/blues.00003.wav' points outside the dataset root"]


@pytest.mark.parametrize("broken", ["folder", "file", "loop", "au"])
def test_broken_link_is_a_missing_file_naming_the_link(tmp_path, broken):
    root = make_dataset(tmp_path / "data", valid_lists())
    if broken == "folder":
        os.symlink(tmp_path / "unplugged_disk" / "pop", root / "pop")
        link, target = "pop", str(tmp_path / "unplugged_disk" / "pop")
    elif broken == "file":
        (root / "pop").mkdir()
        os.symlink(tmp_path / "deleted.wav", root / "pop/pop.00000.wav")
        link, target = "pop/pop.00000.wav", str(tmp_path / "deleted.wav")
    elif broken == "loop":
        (root / "pop").mkdir()
        os.symlink("pop.00000.wav", root / "pop/pop.00000.wav")
        link, target = "pop/pop.00000.wav", "pop.00000.wav"
    else:  # the listed .wav is GTZAN's .au, and that is the broken link
        (root / "pop").mkdir()
        os.symlink(tmp_path / "deleted.au", root / "pop/pop.00000.au")
        link, target = "pop/pop.00000.au", str(tmp_path / "deleted.au")
    (root / LIST_FILES["test"]).write_text("blues/blues.00003.wav\npop/pop.00000.wav\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    assert problem_lines(info.value) == [
        f"test_filtered.txt:2: file not found: pop/pop.00000.wav ({link} is a broken symbolic link to "
        f"{target!r}, which does not exist)"]
    assert "1 listed file(s) do not exist" in str(info.value)
    assert "Repair the broken symbolic link" in str(info.value)


def test_two_links_to_one_file_are_one_clip(tmp_path):
    root = make_dataset(tmp_path / "data", valid_lists())
    os.symlink(root / "jazz", root / "smooth_jazz")  # the same clips under a second genre name
    (root / LIST_FILES["test"]).write_text("smooth_jazz/jazz.00001.wav\n")
    with pytest.raises(SplitListError) as info:
        read_split_lists(root)
    (line,) = problem_lines(info.value)
    assert line == ("test_filtered.txt:1: smooth_jazz/jazz.00001.wav is also in train_filtered.txt:3 "
                    "(leakage between train and test)")
