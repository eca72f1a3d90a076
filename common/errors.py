"""The project's one error family.

Every error that means "the user gave something we cannot use" (a bad flag, a missing
or damaged file, a file in use, a full disk) derives from :class:`UserError`, and its
message names the file, flag or value and says how to fix it. Command-line entry points
catch :class:`UserError` alone and print its message; anything else is a bug and keeps
its traceback.

It subclasses :class:`ValueError` so that callers who caught the older per-package
errors as ``ValueError`` keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user gave or did that we cannot use; the message says how to fix it.

    >>> try:
    ...     raise UserError("--lr nan: must be a finite number > 0")
    ... except ValueError as exc:
    ...     print(exc)
    --lr nan: must be a finite number > 0
    """

