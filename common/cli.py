"""The one entry point of every command-line script.

``run(main, get_args_parser())`` parses the arguments and calls ``main(args)``. What the
user must fix (:class:`~common.errors.UserError`) is printed as one ``error:`` line with
exit status 1; Ctrl-C and SIGTERM (what ``timeout``, SLURM and ``docker stop`` send) end
the job with one line and the shell's usual status (130, 143); anything else is a bug
and keeps its traceback. Under ``torchrun`` only rank 0 prints, since every rank fails
alike.

>>> def main(args):
...     raise UserError(f"--lr {args.lr}: must be > 0")
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--lr", type=float)
>>> run(main, parser, ["--lr", "-1"])  # doctest: +SKIP
error: --lr -1.0: must be > 0
"""
from __future__ import annotations

import os
import signal
import sys

from common.errors import UserError

RESUME_HINT = "what was finished is kept; run the same command again to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so ``finally`` blocks and ``with`` exits run.

    A :class:`KeyboardInterrupt` (not an ``Exception``) so that no ``except Exception``
    on the way swallows it.
    """


def _raise_terminated(signum, frame):
    raise Terminated()


def handle_sigterm() -> None:
    """From now on, SIGTERM in this process raises :class:`Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def run(main, parser, argv=None, *, interrupted: str = RESUME_HINT):
    """Parse ``argv``, call ``main(args)`` and return its result, or exit with one line.

    ``interrupted`` is what the line after Ctrl-C or SIGTERM tells the user to do.
    """
    handle_sigterm()
    loud = os.environ.get("RANK", "0") == "0"
    try:
        return main(parser.parse_args(argv))
    except UserError as exc:
        if loud:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        name, status = ("SIGTERM", 128 + signal.SIGTERM) if isinstance(exc, Terminated) else \
            ("Ctrl-C", 128 + signal.SIGINT)
        if loud:
            print(f"\nstopped by {name}; {interrupted}", file=sys.stderr, flush=True)
        sys.exit(status)
