"""Building the feature cache: the application that joins audio work and storage.

:func:`build` reads the split lists, computes every clip's features with
:func:`pipeline.clip.process_clip` on local processes or a Dask cluster
(:mod:`builder.engines`), and hands the arrays to the one writer of the file
(:class:`cache.writer.CacheWriter`). ``build_cache.py`` is its command line.

>>> from builder import build
>>> from pipeline.features import build_feature
>>> summary = build(data="gtzan", out="cache.h5", features={"mel": build_feature("mel")})  # doctest: +SKIP
>>> print(summary.describe())  # doctest: +SKIP

Every refusal is a :class:`~common.errors.UserError`; the ones a build adds are
:class:`BackendError` (and its :class:`DataNotVisible`), :class:`WorkersLost`, and
from the writer :class:`SettingsMismatch` and :class:`NothingUsable`.
"""
from builder.cache_build import RETRY_FLAG, BuildSummary, build, check_build_numbers
from builder.engines import BACKENDS, BackendError, DataNotVisible, WorkersLost
from cache.writer import NothingUsable, SettingsMismatch

__all__ = ["BACKENDS", "RETRY_FLAG", "BackendError", "BuildSummary", "DataNotVisible", "NothingUsable",
           "SettingsMismatch", "WorkersLost", "build", "check_build_numbers"]
