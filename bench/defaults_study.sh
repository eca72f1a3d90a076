#!/usr/bin/env bash
# The experiments behind README's "Choosing the defaults", in one resumable command (run it
# again after an interruption: finished runs are skipped, killed ones resume).
#
#   bash ../shared/datasets/make_gamemusic.sh data/gamemusic
#   bash ../shared/datasets/make_moremusic.sh data/moremusic
#   bash bench/defaults_study.sh            # results: the real splits; cv: the grouped CV
#
# "results": on each set's own train/valid/test split, the default recipe and the course
# recipe (3 seeds each) and MFCC+SVM, tabled by report.py. "cv": the track-grouped 5-fold
# cross-validation over train + valid of the chosen recipe and the cheapest candidate, one
# seed after another (test is never used); bench/cv_folds.py summary pools it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SETS=${SETS:-gamemusic moremusic}
STEPS=${STEPS:-results cv}
CV_RECIPES=${CV_RECIPES:-crnn_mel_a0_short,cnn1d_mel_a0}
CV_SEEDS=${CV_SEEDS:-0 1 2}
for step in $STEPS; do
  if [ "$step" = results ]; then
    for set in $SETS; do
      $PY bench/sweep.py --data data/$set --caches data/caches/$set --runs runs/final/$set \
          --only default,course --seeds 0,1,2 || exit 1
      [ -f runs/final/$set/mfcc_svm/results.json ] || \
        $PY bench/mfcc_svm.py --cache data/caches/$set/a0.h5 --out-dir runs/final/$set/mfcc_svm || exit 1
      $PY report.py runs/final/$set/mfcc_svm runs/final/$set/course_s* runs/final/$set/default_s* \
          --out runs/final/$set/report.md || exit 1
    done
  elif [ "$step" = cv ]; then
    for seed in $CV_SEEDS; do
      for set in $SETS; do
        $PY bench/cv_study.py --data data/$set --only "$CV_RECIPES" --seeds $seed || exit 1
      done
    done
    $PY bench/cv_folds.py summary $(for set in $SETS; do echo runs/cv/$set; done)
  fi
done
