"""One rule for the ``KEY=VALUE`` settings given on the command line.

Used by ``build_cache.py --set FEATURE.KEY=VALUE`` and ``train.py --model-set KEY=VALUE``:
a value is JSON when it parses as JSON (numbers, ``true``/``false``, ``null``, ``[1, 2]``),
``none`` in any case is None too, a value with commas is a list of such values, and
anything else is text.

>>> parse_value("8000"), parse_value("0.5"), parse_value("None"), parse_value("valid")
(8000, 0.5, None, 'valid')
>>> parse_value("8,8,4")
[8, 8, 4]
"""
from __future__ import annotations

import json

from common.errors import UserError


def parse_value(text: str):
    """A setting's value from its command-line text (module doc)."""
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return [parse_value(part) for part in text.split(",")] if "," in text else text


def parse_assignment(item: str, *, flag: str, example: str) -> tuple[str, object]:
    """``"channels=64"`` -> ``("channels", 64)``; a UserError naming ``flag`` otherwise.

    >>> parse_assignment("dropout=0.3", flag="--model-set", example="channels=64")
    ('dropout', 0.3)
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
    return key.strip(), parse_value(text)
