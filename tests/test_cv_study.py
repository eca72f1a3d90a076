"""Track-grouped cross-validation: fold folders (bench/cv_folds.py make), the pooled summary
(bench/cv_folds.py summary) and the resumable study driver (bench/cv_study.py)."""
from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


import cv_folds
import sweep
from pipeline.splits import LIST_FILES, SplitListError, read_split_lists
from tests.conftest import TINY_SECONDS

# Imported inside the tests that need them (cv_study, common), so that this file also runs
# against older code, where they do not exist and the other tests fail on behaviour.

GENRES = ("disco", "jazz", "metal")


def grouped_set(tiny_gtzan: Path, root: Path, *, groups: bool = True, crossing: bool = False) -> Path:
    """Three genres of the tiny set (linked, not copied), with two clips per group.

    Groups pair clips within one split, so none crosses; ``crossing`` makes one training
    group own a valid clip as well (leakage).
    """
    source = read_split_lists(tiny_gtzan)
    root.mkdir(parents=True)
    for genre in GENRES:
        os.symlink(tiny_gtzan / genre, root / genre)
    pairs = []
    for split in ("train", "valid", "test"):
        clips = [c for c in source.clips[split] if c.label in GENRES]
        (root / LIST_FILES[split]).write_text("".join(c.listed + "\n" for c in clips))
        for genre in GENRES:
            mine = [c for c in clips if c.label == genre]
            pairs += [(c.listed, f"{genre}/{split}-track{i // 2}") for i, c in enumerate(mine)]
    if crossing:
        first_train = next(g for p, g in pairs if "/train-" in g)
        genre = first_train.split("/")[0]
        pairs = [(p, first_train if g == f"{genre}/valid-track0" else g) for p, g in pairs]
    if groups:
        (root / "tracks.tsv").write_text("".join(f"{p}\t{g}\n" for p, g in pairs))
    return root


def make(source, out, *extra):
    return cv_folds.main(cv_folds.get_args_parser().parse_args(["make", str(source), str(out), *extra]))


def summarise(*roots):
    return cv_folds.main(cv_folds.get_args_parser().parse_args(["summary", *map(str, roots)]))


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


# -- make ----------------------------------------------------------------------------------
def test_folds_are_grouped_stratified_and_never_list_test(tiny_gtzan, tmp_path, capsys):
    source = grouped_set(tiny_gtzan, tmp_path / "src")
    lists = read_split_lists(source)
    pool = {c.listed: c.group for split in ("train", "valid") for c in lists.clips[split]}
    paths = make(source, tmp_path / "folds", "--folds", "3", "--seed", "0")

    assert [p.name for p in paths] == ["fold0", "fold1", "fold2"]
    folds = [read_split_lists(p) for p in paths]  # each a data folder whose leakage check passes
    held_out = [fold.listed("test") for fold in folds]
    assert sorted(sum(held_out, [])) == sorted(pool)  # every train + valid clip held out once
    for k, fold in enumerate(folds):
        assert fold.has_groups
        assert fold.listed("valid") == held_out[(k + 1) % 3]
        listed = {c.listed: c.group for split in fold.clips.values() for c in split}
        assert listed == {p: pool[p] for p in listed} and len(listed) == len(pool)  # the source's groups
        assert not set(listed) & set(lists.listed("test"))  # the source's test is never touched
        roles = {split: {c.group for c in fold.clips[split]} for split in fold.clips}
        assert not roles["train"] & roles["valid"] and not roles["train"] & roles["test"]
        assert {c.label for c in fold.clips["test"]} == set(GENRES)  # stratified: each class held out
        for genre in GENRES:
            assert (paths[k] / genre).resolve() == (tiny_gtzan / genre).resolve()
            assert (paths[k] / genre).is_symlink()
    out = capsys.readouterr().out
    assert "| fold | disco | jazz | metal | all |" in out
    assert out.count(" | 2 (1) | 2 (1) | 2 (1) | 6 (3) |") == 3  # clips (groups) held out per class


def test_folds_are_deterministic_and_make_again_changes_nothing(tiny_gtzan, tmp_path):
    source = grouped_set(tiny_gtzan, tmp_path / "src")
    make(source, tmp_path / "a", "--folds", "3", "--seed", "4")
    make(source, tmp_path / "b", "--folds", "3", "--seed", "4")
    first = tree_bytes(tmp_path / "a")
    assert first == tree_bytes(tmp_path / "b")
    (tmp_path / "a" / "fold1" / "tracks.tsv").unlink()  # an interrupted make: written again, same bytes
    make(source, tmp_path / "a", "--folds", "3", "--seed", "4")
    assert tree_bytes(tmp_path / "a") == first


@pytest.mark.parametrize("change", [["--seed", "1"], ["--folds", "4"]])
def test_other_folds_into_the_same_folder_are_refused(tiny_gtzan, tmp_path, change):
    source = grouped_set(tiny_gtzan, tmp_path / "src")
    clips = [c for split in read_split_lists(source).clips.values() for c in split]
    (source / "tracks.tsv").write_text("".join(f"{c.listed}\t{c.listed}\n" for c in clips))  # 6 groups a genre
    make(source, tmp_path / "folds", "--folds", "3", "--seed", "0")
    before = tree_bytes(tmp_path / "folds")
    with pytest.raises(ValueError) as info:
        make(source, tmp_path / "folds", *change)
    message = str(info.value)
    assert f"{tmp_path / 'folds'} already holds other folds (it holds --folds 3 --seed 0 of" in message
    assert "fold0/train_filtered.txt" in message and "nothing was changed" in message
    assert tree_bytes(tmp_path / "folds") == before


def test_class_with_fewer_groups_than_folds_is_refused(tiny_gtzan, tmp_path):
    source = grouped_set(tiny_gtzan, tmp_path / "src")  # 3 groups per genre in train + valid
    with pytest.raises(ValueError, match=r"--folds 4: every class needs at least 4 groups \(tracks.tsv\) "
                       r"in train \+ valid, but disco has 3, jazz has 3, metal has 3; use --folds 3 or fewer"):
        make(source, tmp_path / "folds", "--folds", "4")
    with pytest.raises(ValueError, match="--folds 2: need at least 3"):
        make(source, tmp_path / "folds", "--folds", "2")
    assert not (tmp_path / "folds").exists()  # refused before writing anything


def test_source_with_a_group_in_two_splits_is_refused(tiny_gtzan, tmp_path):
    source = grouped_set(tiny_gtzan, tmp_path / "src", crossing=True)
    with pytest.raises(SplitListError, match=r"group '\w+/train-track0' is in train and valid"):
        make(source, tmp_path / "folds", "--folds", "3")
    assert not (tmp_path / "folds").exists()


def test_without_groups_the_folds_say_they_may_share_recordings(tiny_gtzan, tmp_path, capsys):
    source = grouped_set(tiny_gtzan, tmp_path / "src", groups=False)
    paths = make(source, tmp_path / "folds", "--folds", "3")
    err = capsys.readouterr().err
    assert "warning: The source" in err and "has no tracks.tsv" in err and "may share recordings" in err
    for path in paths:
        assert "may share recordings" in (path / "NOTE.txt").read_text()
        assert not (path / "tracks.tsv").exists()
        assert not read_split_lists(path).has_groups


# -- summary -------------------------------------------------------------------------------
def write_result(root: Path, fold: int, run: str, correct: int, clips: int) -> None:
    folder = root / f"fold{fold}" / run
    folder.mkdir(parents=True)
    matrix = [[correct, 0], [clips - correct, 0]]  # its trace is the correct clips
    (folder / "results.json").write_text(json.dumps({"test_acc": correct / clips, "valid_acc": 0.0,
                                                     "test": {"clips": clips, "confusion_matrix": matrix}}))


def test_summary_pools_held_out_clips_per_seed_and_averages_over_sets(tmp_path, capsys):
    gm, mm = tmp_path / "gm" / "runs", tmp_path / "mm"
    (gm).mkdir(parents=True)
    (gm / "cv.json").write_text(json.dumps({"name": "gamemusic", "folds": 2}))
    (mm / "fold1").mkdir(parents=True)  # no cv.json: folds from the fold<k> folders
    for seed, (a, b) in enumerate([(5, 27), (7, 29)]):
        write_result(gm, 0, f"cnn_s{seed}", a, 10)
        write_result(gm, 1, f"cnn_s{seed}", b, 30)
        write_result(mm, 0, f"cnn_s{seed}", 10, 20)
        write_result(mm, 1, f"cnn_s{seed}", 10, 20)
    write_result(gm, 0, "slow_s0", 10, 10)       # complete in gamemusic only
    write_result(gm, 1, "slow_s0", 30, 30)
    write_result(mm, 0, "slow_s0", 20, 20)
    (gm / "fold0" / "cnn_s2.unfinished-20250101-000000").mkdir()  # moved aside: ignored

    summary = summarise(tmp_path / "gm", mm)
    cnn = summary["sets"]["gamemusic"]["cnn"]
    assert cnn["pooled"] == {0: 32 / 40, 1: 36 / 40}
    assert cnn["mean"] == pytest.approx(0.85) and cnn["sd"] == pytest.approx(0.0707107, abs=1e-6)
    assert cnn["folds"] == {"fold0": pytest.approx(0.6), "fold1": pytest.approx(28 / 30)}
    assert summary["sets"][str(mm)]["cnn"]["mean"] == 0.5
    assert summary["average"] == {"cnn": pytest.approx(0.675)}
    assert summary["incomplete"] == {"slow": [f"seed 0: {mm} fold1"]}
    out = capsys.readouterr().out
    assert "| cnn | 2 | 0.600 | 0.933 | 0.850 ± 0.071 |" in out
    assert "| **best** | cnn | 2 | 0.850 ± 0.071 | 0.500 ± 0.000 | 0.675 |" in out
    assert f"- slow: seed 0: {mm} fold1" in out
    assert "gamemusic: held-out clip accuracy of 2-fold grouped cross-validation (pooled over 40 clips" in out


def test_summary_counts_only_seeds_with_every_fold(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cv.json").write_text(json.dumps({"name": "gm", "folds": 3}))
    for fold in range(3):
        write_result(tmp_path / "runs", fold, "cnn_s0", 1, 2)
    write_result(tmp_path / "runs", 0, "cnn_s1", 2, 2)   # fold1 and fold2 of seed 1 missing
    summary = summarise(tmp_path)          # a study folder: its runs/
    assert summary["sets"]["gm"]["cnn"]["seeds"] == [0] and summary["sets"]["gm"]["cnn"]["mean"] == 0.5
    assert summary["incomplete"] == {"cnn": ["seed 1: gm fold1, fold2"]}


def test_summary_refuses_no_runs_and_damaged_results(tmp_path):
    with pytest.raises(ValueError, match="no finished runs under"):
        summarise(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        summarise(tmp_path / "nowhere")
    (tmp_path / "fold0" / "cnn_s0").mkdir(parents=True)
    (tmp_path / "fold0" / "cnn_s0" / "results.json").write_text('{"valid_acc": 0.5}')
    with pytest.raises(ValueError, match=r"fold0/cnn_s0/results.json: not a results.json of train.py"):
        summarise(tmp_path)


# -- the study driver ----------------------------------------------------------------------
def test_study_folds_builds_trains_summarises_and_resumes(tiny_gtzan, tmp_path, monkeypatch, capsys):
    import cv_study

    source = grouped_set(tiny_gtzan, tmp_path / "src")
    monkeypatch.setattr(sweep, "CACHES", {"tiny": ["--features", "mel", "--duration", str(TINY_SECONDS),
                                                   "--jobs", "1", "--augment", "0"]})
    quick = ["--feature", "mel", "--epochs", "1", "--segment-seconds", "2", "--batch-size", "16",
             "--crops-per-clip", "1"]
    monkeypatch.setattr(sweep, "RECIPES", {"quick": ("tiny", quick)})
    study = tmp_path / "study"
    flags = ["--data", str(source), "--out", str(study), "--folds", "3", "--only", "quick", "--seeds", "0",
             "--parallel", "2", "--nice"]
    runs = cv_study.main(cv_study.get_args_parser().parse_args(flags))

    assert runs == study / "runs"
    assert json.loads((runs / "cv.json").read_text())["folds"] == 3
    for k in range(3):
        fold = read_split_lists(study / "folds" / f"fold{k}")
        assert (study / "caches" / f"fold{k}" / "tiny.h5").is_file()
        results = json.loads((runs / f"fold{k}" / "quick_s0" / "results.json").read_text())
        assert results["test"]["clips"] == len(fold.clips["test"])  # scored on the held-out fold
    summary = summarise(study)
    assert list(summary["sets"]) == ["src"] and summary["sets"]["src"]["quick"]["clips"] == 18
    capsys.readouterr()

    cv_study.main(cv_study.get_args_parser().parse_args(flags))  # finished: nothing built or trained
    out = capsys.readouterr().out
    assert "0 training(s) to do, 0 cache(s)" in out and "started" not in out

    # A training killed after its last checkpoint resumes from it (sweep's tests cover the rest).
    (runs / "fold1" / "quick_s0" / "results.json").unlink()
    cv_study.main(cv_study.get_args_parser().parse_args(flags))
    out = capsys.readouterr().out
    assert "1 training(s) to do, 1 cache(s)" in out and "started fold1/quick_s0 (resuming)" in out
    assert "--resume" in (runs / "fold1" / "quick_s0" / "train.log").read_text()
    assert summarise(study)["sets"]["src"]["quick"]["seeds"] == [0]


def test_study_checks_its_flags_before_any_work(tmp_path):
    import cv_study
    from common.errors import UserError

    for flags, message in [(["--only", "nope"], "unknown recipe"), (["--seeds", "0,x"], "--seeds '0,x'"),
                           (["--parallel", "0"], "--parallel 0"), (["--folds", "2"], "--folds 2")]:
        with pytest.raises(UserError, match=message):
            cv_study.main(cv_study.get_args_parser().parse_args(["--out", str(tmp_path / "s"), *flags]))
    assert not (tmp_path / "s").exists()


def test_study_default_recipes_are_the_candidates(capsys):
    import cv_study

    names = cv_study.study_recipes()
    assert {"cnn1d_mel_a0", "cnn1d_cqt_a4_mask", "cnn1d_mel_a4_mask", "crnn_mel_a0_short"} <= set(names)
    assert {"cnn1d_melcqt_a0", "cnn1d_melcqt_a4_mask", "crnn_mel_a0_mid"} <= set(names)
    assert "course" not in names
    cv_study.main(cv_study.get_args_parser().parse_args(["--list"]))
    out = capsys.readouterr().out
    assert "crnn_mel_a0_short: cache mc_a0 (--features mel,cqt --n-fft 2048 --augment 0)" in out
    assert "time-boxed" in out and "cnn1d_melcqt_a0: cache mc_a0" in out
    sweep.main(sweep.get_args_parser().parse_args(["--list", "--only", "cnn1d_melcqt_a0"]))
    assert "--feature mel+cqt" in capsys.readouterr().out


FAKE_TRAIN = """
import argparse, json, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--out-dir"); p.add_argument("--seed"); p.add_argument("--resume", action="store_true")
args, _ = p.parse_known_args()
os.makedirs(args.out_dir, exist_ok=True)
with open(os.path.join(args.out_dir, "calls.txt"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "nice": os.nice(0), "pid": os.getpid()}) + "\\n")
if os.environ.get("FAKE_SLEEP"):
    time.sleep(float(os.environ["FAKE_SLEEP"]))
with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump({"test_acc": 1.0, "test": {"clips": 1}}, f)
"""
FAKE_BUILD = """
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--out")
args, _ = p.parse_known_args()
os.makedirs(os.path.dirname(args.out), exist_ok=True)
with open(args.out, "w") as f:
    f.write(str(os.nice(0)))
"""


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """sweep.py's children replaced by scripts that record how they were started."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "train.py").write_text(FAKE_TRAIN)
    (tools / "build_cache.py").write_text(FAKE_BUILD)
    monkeypatch.setattr(sweep, "ROOT", tools)
    monkeypatch.setattr(sweep, "CACHES", {"c": []})
    monkeypatch.setattr(sweep, "RECIPES", {"r": ("c", ["--epochs", "1"])})
    return tools


def sweep_main(tmp_path, *extra):
    flags = ["--data", str(tmp_path / "data"), "--caches", str(tmp_path / "caches"), "--runs",
             str(tmp_path / "runs"), *extra]
    return sweep.main(sweep.get_args_parser().parse_args(flags))


def calls(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "calls.txt").read_text().splitlines()]


def test_nice_runs_builds_and_trainings_at_the_lowest_priority(fake_tools, tmp_path):
    sweep_main(tmp_path, "--nice", "--seeds", "0,1", "--parallel", "2")
    assert (tmp_path / "caches" / "c.h5").read_text() == "19"
    assert [calls(tmp_path / "runs" / f"r_s{s}")[0]["nice"] for s in (0, 1)] == [19, 19]
    sweep_main(tmp_path, "--seeds", "2")
    assert calls(tmp_path / "runs" / "r_s2")[0]["nice"] == os.nice(0)


def test_sweep_resumes_killed_runs_and_moves_aside_those_without_checkpoint(fake_tools, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "r_s0").mkdir(parents=True)
    (runs / "r_s0" / "last.pt").write_bytes(b"a checkpoint")        # killed after an epoch
    (runs / "r_s1").mkdir()
    (runs / "r_s1" / "args.json").write_text("{}")                  # killed before its first epoch
    sweep_main(tmp_path, "--seeds", "0,1")
    assert "--resume" in calls(runs / "r_s0")[0]["argv"]
    assert (runs / "r_s0" / "last.pt").read_bytes() == b"a checkpoint"
    assert "--resume" not in calls(runs / "r_s1")[0]["argv"]
    (aside,) = runs.glob("r_s1.unfinished-*")
    assert (aside / "args.json").read_text() == "{}"             # moved, not deleted
    assert f"moved {runs / 'r_s1'} (killed before its first checkpoint) to {aside}" in capsys.readouterr().out


def test_interrupt_stops_running_trainings(fake_tools, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    run_dir = tmp_path / "runs" / "r_s0"

    def ctrl_c_once_the_child_runs():
        while not (run_dir / "calls.txt").is_file() or not (run_dir / "calls.txt").read_text().endswith("\n"):
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c_once_the_child_runs, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep_main(tmp_path)
    pid = calls(run_dir)[0]["pid"]
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists()  # stopped (and reaped), not left training


def test_study_command_line_prints_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, "bench/cv_study.py", "--out", str(tmp_path / "s"), "--seeds", "-1"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --seeds '-1': expected distinct non-negative integers, "
                                                "e.g. --seeds 0,1,2"]
