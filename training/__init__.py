"""Training, evaluation and prediction: the one place where tensors, storage and features meet.

Scripts (``train.py``, ``evaluate.py``, ``predict.py``, ``report.py``) parse flags and
call these modules; each module has one job:

- :mod:`training.config`: the settings of each mode as dataclasses, validated in one place.
- :mod:`training.runtime`: device, mixed precision, torchrun (DDP) ranks.
- :mod:`training.segments`: where evaluation segments start, and cutting them.
- :mod:`training.data`: segment datasets over a cache (one feature, or spectrograms
  stacked along their bins), loaders, normalisation.
- :mod:`training.optim`: optimisers and learning-rate schedules.
- :mod:`training.augment`: batch augmentation (SpecAugment masks, mixup).
- :mod:`training.setup`: what a run checks and builds before its epochs (and on resume).
- :mod:`training.loop`: the epochs, what each saves, and the final evaluation of a run.
- :mod:`training.evaluation`: scoring every segment; a checkpoint on a cache (``--eval-only``).
- :mod:`training.ensemble`: several checkpoints on one cache (``evaluate.py``).
- :mod:`training.scoring`: segment probabilities to clip scores and reports.
- :mod:`training.checkpoint`: the checkpoint file schema (``weights_only`` loads) and members.
- :mod:`training.inference`: audio files to predictions.
- :mod:`training.folders`, :mod:`training.artifacts`, :mod:`training.plots`: run folders
  and what a run leaves in them (results.json, metrics.jsonl, run.json, figures).
- :mod:`training.runs`, :mod:`training.report`: reading finished run folders and ranking them.
- :mod:`training.errors`: the user-facing errors of all of them.

Importing this package imports nothing: ``report.py`` reads run folders through
:mod:`training.runs` and :mod:`training.report`, which (like :mod:`training.folders`,
:mod:`training.artifacts` and :mod:`training.plots`) never import torch.
"""
