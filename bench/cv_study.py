"""The grouped cross-validation study of one data set, in one resumable command.

    python bench/cv_study.py --data data/gamemusic --seeds 0,1,2 --parallel 2 --nice
    python bench/cv_study.py --data data/moremusic --seeds 0,1,2 --parallel 2 --nice
    python bench/cv_folds.py summary runs/cv/gamemusic runs/cv/moremusic

For a data set this makes the track-grouped folds (``bench/cv_folds.py make``) if they
are missing, builds each fold's caches (``build_cache.py``, one per fold and cache name
of bench/sweep.py's CACHES table that the recipes need) and trains every (recipe, fold,
seed) (``train.py``), skipping what is finished: run the same command again after an
interruption and it goes on where it stopped (a killed training resumes from its
``last.pt``). Layout under ``--out`` (default ``runs/cv/<data set name>``)::

    folds/fold<k>/          the fold data folders (links to the data set's genre folders)
    caches/fold<k>/<c>.h5   the caches (or under --caches)
    runs/fold<k>/<recipe>_s<seed>/    the run folders; runs/cv.json says which folds

Test of the data set is never used: fold k is scored on its held-out clips (the fold's
``test``), picks its best epoch on fold k+1 and trains on the others. Only one study
runs on a folder at a time (a lock). The default recipes are the study's candidates
(``--list`` shows them with their flags); it takes hours on a CPU: use ``--nice`` to
leave the machine usable.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


import cv_folds
import sweep
from common.atomic import write_text
from common.cli import run
from common.errors import UserError
from common.locks import FileLock

# The caches of the study's candidates in bench/sweep.py's tables.
STUDY_CACHES = ("mc_a0", "mc_a4")


def study_recipes() -> list[str]:
    """The study's candidates: mel vs cqt, 0 vs 4 copies, masks off/on, the time-boxed larger
    models; not those that need a train.py feature that is not there yet."""
    return [name for name, (cache, _) in sweep.RECIPES.items() if cache in STUDY_CACHES and name not in sweep.NEEDS]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/gamemusic", help="GTZAN-style data set with tracks.tsv "
                   "(default: %(default)s)")
    p.add_argument("--out", default=None, help="study folder: folds/, caches/, runs/ (default: runs/cv/<name of "
                   "--data>)")
    p.add_argument("--caches", default=None, help="folder of this study's fold caches, fold<k>/<name>.h5; one per "
                   "data set, since fold k of each set differs (default: OUT/caches)")
    p.add_argument("--folds", type=int, default=cv_folds.DEFAULT_FOLDS, help="folds (default: %(default)s)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (default: %(default)s)")
    sweep.add_run_flags(p, default_only="the study's candidates, see --list")
    return p


def study_folder(args) -> Path:
    return Path(args.out) if args.out else Path("runs/cv") / Path(args.data).resolve().name


def write_study_file(runs: Path, info: dict) -> None:
    """``runs/cv.json``: which folds the runs were trained on; refuses runs of other folds."""
    path = runs / cv_folds.STUDY_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != info:
            raise UserError(f"{path} says its runs were trained on other folds ({old}); this study would make "
                            f"{info}. Use another --out, or the settings recorded there")
        return
    write_text(path, json.dumps(info, indent=2) + "\n")


def plan_trainings(names: list[str], seeds: list[int], *, folds: list[Path], runs: Path,
                   caches: Path) -> tuple[list[sweep.Training], dict[tuple[int, str], Path]]:
    """The unfinished trainings, seed by seed (so whole seeds finish first), and the caches they need."""
    todo, needed = [], {}
    for seed in seeds:
        for name in names:
            cache_name = sweep.RECIPES[name][0]
            for k in range(len(folds)):
                out_dir = runs / f"fold{k}" / f"{name}_s{seed}"
                if sweep.finished(out_dir):
                    continue
                cache = needed.setdefault((k, cache_name), caches / f"fold{k}" / f"{cache_name}.h5")
                todo.append(sweep.Training(f"fold{k}/{out_dir.name}", out_dir,
                                           sweep.train_command(name, seed, cache, out_dir)))
    return todo, needed


def main(args):
    names = sweep.selected(args.only, default=study_recipes())
    if args.list:
        sweep.describe(names)
        return None
    seeds = sweep.parse_seeds(args.seeds)
    sweep.check_parallel(args.parallel)
    cv_folds.check_fold_count(args.folds)
    study = study_folder(args)
    study.mkdir(parents=True, exist_ok=True)
    with FileLock(study, what="study folder", hint="one bench/cv_study.py per study folder"):
        folds = cv_folds.write_folds(args.data, study / "folds", folds=args.folds, seed=args.fold_seed)
        runs = study / "runs"
        runs.mkdir(exist_ok=True)
        write_study_file(runs, {"name": Path(args.data).resolve().name, "data": str(Path(args.data).resolve()),
                                "folds_dir": str((study / "folds").resolve()), "folds": args.folds,
                                "fold_seed": args.fold_seed})
        caches = Path(args.caches) if args.caches else study / "caches"
        trainings, needed = plan_trainings(names, seeds, folds=folds, runs=runs, caches=caches)
        print(f"{len(trainings)} training(s) to do, {len(needed)} cache(s) to check or build", flush=True)
        for (k, cache_name), path in sorted(needed.items()):
            sweep.ensure_cache(cache_name, data=folds[k], path=path, nice=args.nice)
        failed = sweep.run_trainings(trainings, parallel=args.parallel, nice=args.nice)
        sweep.refuse_failures(failed, rerun="run the same command again")
    print(f"all done; summary: python bench/cv_folds.py summary {study}")
    return runs


if __name__ == "__main__":
    run(main, get_args_parser())
