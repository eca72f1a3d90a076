"""report.py on tiny finished runs: the table, the figures, the choice by valid accuracy, the flags."""
from __future__ import annotations

import json
import math
import shutil

import pytest

import report
from models import count_parameters
from tests.test_predict import tiny_runs
from training import report as reporting
from training import runs as run_folders
from training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def runs(tiny_gtzan, tmp_path_factory):
    return tiny_runs(tmp_path_factory, tiny_gtzan)


def copy_run(source, folder, **results):
    """A copy of a finished run with some results.json values replaced."""
    shutil.copytree(source, folder)
    path = folder / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **results}))
    return folder


def set_fingerprint(folder, fingerprint):
    """As if the run had been trained on another cache (report.py reads run.json, never checkpoints)."""
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(folder / name)
        ckpt["cache_fingerprint"] = fingerprint
        save_checkpoint(ckpt, folder / name)
    path = folder / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "cache_fingerprint": fingerprint}))


def table_rows(text: str) -> list[list[str]]:
    """Cells of the data rows of every runs table in a Markdown report."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == len(reporting.TABLE_HEADER) and cells[1] not in ("run", "---"):
            rows.append(cells)
    return rows


@pytest.fixture
def two_runs(runs, tmp_path):
    """Run "steady" has the higher valid accuracy, run "lucky" the higher test accuracy."""
    steady = copy_run(runs["mel"], tmp_path / "steady", valid_acc=0.75, test_acc=0.50)
    lucky = copy_run(runs["mfcc"], tmp_path / "lucky", valid_acc=0.625, test_acc=0.875)
    return lucky, steady


def test_report_tables_runs_and_picks_the_higher_valid_accuracy(two_runs, tmp_path, capsys):
    lucky, steady = two_runs
    out = tmp_path / "out" / "report.md"
    summary = report.main(report.get_args_parser().parse_args([str(lucky), str(steady), "--out", str(out)]))
    text = out.read_text()
    assert summary["chosen"] == ["steady"]  # by valid accuracy, never by test
    assert "chosen by valid accuracy: steady" in capsys.readouterr().out
    rows = table_rows(text)
    assert [r[1] for r in rows] == ["steady", "lucky"]  # sorted by valid accuracy
    assert rows[0][0] == "**chosen**" and rows[1][0] == ""
    header = list(reporting.TABLE_HEADER)
    steady_row = dict(zip(header, rows[0]))
    args = json.loads((steady / "args.json").read_text())
    epochs = len((steady / "metrics.jsonl").read_text().splitlines())
    assert (steady_row["model"], steady_row["feature"]) == ("cnn1d", "mel")
    assert steady_row["segment (s)"] == str(args["segment_seconds"])
    assert (steady_row["optimizer"], steady_row["lr"]) == ("adam", str(args["lr"]))
    assert steady_row["epochs"] == f"{epochs}/{args['epochs']}"
    params = count_parameters(model_from_checkpoint(load_checkpoint(steady / "best.pt")))
    assert steady_row["parameters"] == f"{params:,}"
    assert steady_row["aug. versions"] == "0"  # read from the run's cache, built without augmentation
    assert steady_row["train time"] != "?"
    # Test accuracy with its 95% Wilson interval over the run's test clips.
    clips = json.loads((steady / "results.json").read_text())["test"]["clips"]
    low, high = wilson_reference(0.5, clips)
    assert (steady_row["valid acc"], steady_row["test acc [95% interval]"]) == \
        ("0.7500", f"0.5000 [{low:.2f}, {high:.2f}]")
    assert f"test 0.5000 (95% interval [{low:.2f}, {high:.2f}] over {clips} clips)" in text
    assert "95% Wilson score interval over the test clips" in text
    # Figures beside the report, linked by name; the chosen run's confusion matrix and classes.
    assert [f.parent for f in summary["figures"]] == [out.parent] * 2
    for figure in summary["figures"]:
        assert figure.read_bytes()[:4] == PNG and f"]({figure.name})" in text
    labels = json.loads((steady / "results.json").read_text())["labels"]
    for label in labels:
        assert f"| {label} |" in text
    assert "Warning" not in text


def test_run_trained_on_valid_is_never_chosen(two_runs, tmp_path):
    lucky, steady = two_runs
    merged = copy_run(steady, tmp_path / "merged", valid_acc=1.0, valid_trained_on=True)
    summary = reporting.write_report(run_folders.read_runs([merged, lucky, steady]), tmp_path / "r.md")
    assert summary["chosen"] == ["steady"]
    assert "(trained on)" in (tmp_path / "r.md").read_text()


def test_runs_on_other_clips_are_flagged_and_ranked_apart(two_runs, tmp_path):
    lucky, steady = two_runs
    results = json.loads((lucky / "results.json").read_text())
    (lucky / "results.json").write_text(json.dumps({**results, "data_fingerprint": "0" * 64}))
    summary = reporting.write_report(run_folders.read_runs([lucky, steady]), tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "Warning" in text and "0" * 12 in text
    assert summary["groups"] == [["lucky"], ["steady"]]
    assert summary["chosen"] == ["lucky", "steady"]
    assert len(summary["figures"]) == 3  # curves + one confusion matrix per group
    assert all(f.read_bytes()[:4] == PNG for f in summary["figures"])


def test_caches_of_the_same_clips_are_compared(two_runs, tmp_path):
    # Another cache (other features or augmentation) of the same clips scores the same clips.
    lucky, steady = two_runs
    set_fingerprint(lucky, "0" * 64)
    results = json.loads((lucky / "results.json").read_text())
    (lucky / "results.json").write_text(json.dumps({**results, "cache_fingerprint": "0" * 64}))
    summary = reporting.write_report(run_folders.read_runs([lucky, steady]), tmp_path / "r.md")
    assert summary["groups"] == [["lucky", "steady"]] and summary["chosen"] == ["steady"]
    assert "Warning" not in (tmp_path / "r.md").read_text()


def seeded_runs(source, tmp_path, accuracies: dict) -> list:
    """Copies of a run named ``<recipe>_s<seed>`` with the given (valid, test) accuracies."""
    return [copy_run(source, tmp_path / f"{recipe}_s{seed}", valid_acc=valid, test_acc=test)
            for recipe, pairs in accuracies.items() for seed, (valid, test) in enumerate(pairs)]


def test_recipes_are_summarised_over_seeds_and_chosen_by_mean_valid(runs, tmp_path, capsys):
    folders = seeded_runs(runs["mel"], tmp_path, {
        "lucky": [(0.90, 0.60), (0.40, 0.60), (0.50, 0.60)],   # the best single run, a worse mean
        "steady": [(0.70, 0.50), (0.70, 0.40), (0.76, 0.30)],
    })
    out = tmp_path / "report.md"
    summary = report.main(report.get_args_parser().parse_args([*map(str, folders), "--out", str(out)]))
    assert summary["chosen"] == ["lucky_s0"] and summary["chosen_recipes"] == ["steady"]
    assert "recipe chosen by mean valid accuracy: steady" in capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("|") and len(line.split("|")) == len(reporting.RECIPE_HEADER) + 2]
    body = {row[1]: row for row in rows if row[1] not in ("recipe", "---")}
    assert list(body) == ["steady", "lucky"]
    assert body["steady"][0] == "**chosen**" and body["steady"][2] == "3"
    # The seed-mean test accuracy's interval counts the clips of one split, not one per seed.
    clips = json.loads((folders[0] / "results.json").read_text())["test"]["clips"]
    low, high = wilson_reference(0.4, clips)
    assert body["steady"][-2] == "0.720 ± 0.035" and body["steady"][-1] == f"0.400 ± 0.100 [{low:.2f}, {high:.2f}]"
    assert body["lucky"][-2] == "0.600 ± 0.265"
    assert "pooling them would overstate n" in out.read_text()


def test_recipe_trained_on_valid_is_not_chosen(runs, tmp_path):
    folders = seeded_runs(runs["mel"], tmp_path, {"final": [(1.0, 0.7), (1.0, 0.7)],
                                                  "held_out": [(0.6, 0.6), (0.6, 0.6)]})
    for folder in folders[:2]:
        results = json.loads((folder / "results.json").read_text())
        (folder / "results.json").write_text(json.dumps({**results, "valid_trained_on": True}))
    summary = reporting.write_report(run_folders.read_runs(folders), tmp_path / "r.md")
    assert summary["chosen_recipes"] == ["held_out"]
    assert "1.000 ± 0.000 (trained on)" in (tmp_path / "r.md").read_text()


def test_runs_with_other_labels_are_flagged(two_runs, tmp_path):
    lucky, steady = two_runs
    results = json.loads((lucky / "results.json").read_text())
    (lucky / "results.json").write_text(json.dumps({**results, "labels": results["labels"][::-1]}))
    summary = reporting.write_report(run_folders.read_runs([lucky, steady]), tmp_path / "r.md")
    assert len(summary["groups"]) == 2 and "Warning" in (tmp_path / "r.md").read_text()


def wilson_reference(accuracy: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of ``accuracy`` on ``n`` clips, as Wilson (1927) wrote it: a reference
    the report's own is checked against (and which is itself checked against SciPy's below)."""
    z = 1.959963984540054
    centre, spread = accuracy + z * z / (2 * n), z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


@pytest.mark.parametrize("accuracy, n, expected", [
    (0.5, 10, (0.2366, 0.7634)), (0.0, 10, (0.0, 0.2775)), (1.0, 10, (0.7225, 1.0)),
    (0.9, 100, (0.8256, 0.9448)),
])
def test_wilson_interval_known_values(accuracy, n, expected):
    assert reporting.wilson_interval(accuracy, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("k, n", [(1, 1), (3, 16), (95, 133), (133, 133), (81, 263), (0, 1000)])
def test_wilson_interval_is_scipys(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert reporting.wilson_interval(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert wilson_reference(k / n, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_interval_of_a_seed_mean_takes_a_share_of_clips():
    # 0.4 of 16 clips is no whole count: the interval is still Wilson's formula at that share.
    assert reporting.wilson_interval(0.4, 16) == pytest.approx(wilson_reference(0.4, 16), abs=1e-12)
    assert reporting.wilson_interval(6 / 16, 16)[0] < reporting.wilson_interval(0.4, 16)[0] < \
        reporting.wilson_interval(7 / 16, 16)[0]


def test_133_clips_cannot_separate_accuracies_3_points_apart():
    # The case: two recipes 3 points apart on 133 test clips overlap almost entirely.
    a, b = reporting.wilson_interval(0.717, 133), reporting.wilson_interval(0.747, 133)
    assert a[1] > b[0] and b[1] - b[0] > 0.14
    assert reporting.wilson_interval(0.5, 400)[1] - reporting.wilson_interval(0.5, 400)[0] < \
        reporting.wilson_interval(0.5, 100)[1] - reporting.wilson_interval(0.5, 100)[0]


@pytest.mark.parametrize("accuracy, n", [(0.5, 0), (0.5, 2.5), (1.5, 10), (-0.1, 10)])
def test_wilson_interval_refuses_what_is_no_measurement(accuracy, n):
    with pytest.raises(ValueError, match="wilson_interval"):
        reporting.wilson_interval(accuracy, n)


def test_run_that_records_no_clips_shows_its_accuracy_alone(runs, tmp_path):
    folder = copy_run(runs["mel"], tmp_path / "bare", test_acc=0.5)
    results = json.loads((folder / "results.json").read_text())
    results["test"] = {key: value for key, value in results["test"].items() if key not in ("confusion_matrix", "clips")}
    (folder / "results.json").write_text(json.dumps(results))
    run = run_folders.read_run(folder)
    row = reporting.describe(run)
    assert row["test_interval"] is None and row["test_clips"] is None
    cells = dict(zip(reporting.TABLE_HEADER, table_rows(reporting.runs_table([run], None))[0]))
    assert cells["test acc [95% interval]"] == "0.5000"
    recipe = reporting.Recipe("bare", [run])
    assert recipe.test_interval() is None


def test_table_shows_what_training_recorded(two_runs):
    lucky, _ = two_runs
    results = json.loads((lucky / "results.json").read_text())
    row = reporting.describe(run_folders.read_run(lucky))
    assert row["parameters"] == results["parameters"] > 0
    assert row["train_seconds"] == results["train_seconds"] > 0
    assert row["augment_versions"] == results["augment_versions"]
    assert reporting.format_seconds(725.0) == "12m 05s"


@pytest.mark.parametrize("remove", ["results.json", "metrics.jsonl", "args.json"])
def test_unfinished_run_is_refused_by_name(runs, tmp_path, remove):
    folder = copy_run(runs["mel"], tmp_path / "unfinished")
    (folder / remove).unlink()
    with pytest.raises(report.ReportError, match=f"unfinished.*{remove}"):
        run_folders.read_runs([folder])


def test_run_older_than_run_json_is_reported_with_unknowns(runs, tmp_path):
    folder = copy_run(runs["mel"], tmp_path / "old")
    (folder / "run.json").unlink()
    results = json.loads((folder / "results.json").read_text())
    for key in ("labels", "cache_fingerprint", "data_fingerprint", "parameters"):
        results.pop(key)
    (folder / "results.json").write_text(json.dumps(results))
    summary = report.main(report.get_args_parser().parse_args([str(folder), "--out", str(tmp_path / "r.md")]))
    row = summary["runs"][0]
    assert row["model"] == "cnn1d" and row["cache_fingerprint"] is None and row["parameters"] is None
    assert "| ? |" in (tmp_path / "r.md").read_text()


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(report.ReportError, match="nowhere"):
        run_folders.read_runs([tmp_path / "nowhere"])
