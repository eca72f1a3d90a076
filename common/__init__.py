"""Small pieces every package of the project may use, and which import none of them.

- :mod:`common.errors`: :class:`UserError`, the base of every "you gave something we
  cannot use" error; CLIs print its message instead of a traceback.
- :mod:`common.locks`: advisory file locks that name the process holding them.
- :mod:`common.atomic`: files written whole or not at all.
- :mod:`common.cli`: the entry point every script's ``__main__`` uses.
"""
