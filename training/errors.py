"""The user-facing errors of training, evaluation, prediction and reports.

All derive from :class:`common.errors.UserError`: the scripts print their message as
one ``error:`` line. Kept apart from the modules that raise them so that the torch-free
modules (run folders, reports) and the scripts share them without importing torch.
"""
from __future__ import annotations

from common.errors import UserError


class TrainError(UserError):
    """Bad input to training: reported as a message, not a traceback."""


class Diverged(TrainError):
    """The training loss or the valid predictions stopped being finite."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable, unsafe or not one of ours."""


class EvaluateError(UserError):
    """Checkpoints or a cache that cannot be evaluated together; the message says why."""


class PredictError(UserError):
    """Unusable checkpoints or arguments: nothing can be classified."""


class ClipError(UserError):
    """One file cannot be classified (too short, ...); the others still are."""


class ReportError(UserError):
    """A run folder that cannot be reported; the message names it and says what to do."""
