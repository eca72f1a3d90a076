"""The classic reference: MFCC statistics and an RBF SVM, on a feature cache.

    python bench/mfcc_svm.py --cache cache.h5 --out-dir runs/mfcc_svm

Each clip (original rows only: augmented copies are left out, as the classic recipe
has none) becomes one vector: the mean and standard deviation over time of its
``n_mfcc`` MFCCs and their first deltas (``4 * n_mfcc`` numbers). The vectors are
standardised with train statistics, and an RBF SVM is fitted on train for every C and
gamma of a small grid; the pair with the best valid accuracy is chosen (test is
reported, never used to choose). The cache needs the ``mfcc`` feature
(``build_cache.py --features mel,mfcc``).

The run folder it writes (args.json, metrics.jsonl, results.json) has the fields
``report.py`` reads, so the reference sits in the same table as the trained models.
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np


from cache.reader import FeatureCache
from common.atomic import write_json
from common.cli import run
from training.artifacts import SPLITS, results_summary, write_metrics, write_results
from training.folders import check_output_folder
from training.scoring import clip_report

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
GAMMA_GRID = ("scale", 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="cache.h5", help="feature cache with an mfcc feature (default: %(default)s)")
    p.add_argument("--out-dir", default="runs/mfcc_svm",
                   help="run folder for args.json, metrics.jsonl and results.json (default: %(default)s)")
    return p


def clip_vectors(cache: FeatureCache, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip MFCC statistics of the original rows of ``split``.

    Returns
    -------
    X : (clips, 4 * n_mfcc) float64
        Mean and std over frames of the MFCCs, then of their first deltas.
    y : (clips,) int64
        Label indices into ``cache.labels``.
    """
    import librosa

    n_mfcc = int(cache.feature_settings("mfcc")["n_mfcc"])
    rows = cache.rows(split)
    originals = [i for i in cache.done_rows(split) if rows["version"][i] == 0]
    mfcc = cache.array(split, "mfcc")
    vectors = []
    for i in originals:
        coefficients = np.asarray(mfcc.row(i), dtype=np.float64)[:n_mfcc]
        deltas = librosa.feature.delta(coefficients)
        vectors.append(np.concatenate([coefficients.mean(1), coefficients.std(1), deltas.mean(1), deltas.std(1)]))
    return np.stack(vectors), rows["label"][originals].astype(np.int64)


def fit_and_choose(train, valid):
    """Fit every (C, gamma) of the grid on train; the fitted pipeline with the best valid accuracy."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    best = None
    for c, gamma in itertools.product(C_GRID, GAMMA_GRID):
        model = make_pipeline(StandardScaler(), SVC(C=c, gamma=gamma, kernel="rbf")).fit(*train)
        accuracy = float((model.predict(valid[0]) == valid[1]).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, c, gamma, model)
    return best


def main(args) -> dict:
    start = time.perf_counter()
    out_dir = check_output_folder(args.out_dir, flag="--out-dir")  # before any work
    cache = FeatureCache(args.cache)
    data = {split: clip_vectors(cache, split) for split in ("train", *SPLITS)}
    _, c, gamma, model = fit_and_choose(data["train"], data["valid"])
    labels = list(cache.labels)
    reports = {split: clip_report(data[split][1], model.predict(data[split][0]), labels) for split in SPLITS}
    facts = {"cache_fingerprint": cache.fingerprint, "data_fingerprint": cache.data_fingerprint,
             "model": "mfcc-svm", "feature": "mfcc", "svm": {"C": c, "gamma": gamma},
             "parameters": int(model[-1].support_vectors_.size), "augment_versions": 0,
             "train_seconds": time.perf_counter() - start}
    # The schema of a trained run's results.json, without segment scores: a clip is one vector.
    summary = results_summary(reports, labels=labels, trained_on_valid=False, facts=facts)
    write_json(out_dir / "args.json", {**vars(args), "model": "mfcc-svm", "feature": "mfcc"})
    write_metrics(out_dir / "metrics.jsonl", [])
    write_results(out_dir / "results.json", summary)
    print(f"MFCC statistics + RBF SVM (C={c}, gamma={gamma}, chosen on valid): "
          f"valid {summary['valid_acc']:.4f}  test {summary['test_acc']:.4f}")
    return summary


if __name__ == "__main__":
    run(main, get_args_parser(), interrupted="the reference was not written; run the same command again")
