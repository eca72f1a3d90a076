"""A seeded synthetic data set laid out like GTZAN, for the demo, the tests and the benches.

Real GTZAN cannot be downloaded everywhere, so this package synthesises short "songs"
for eight genres named like the course subset (:mod:`synthetic.music`) and writes them
as GTZAN does, with its split lists (:mod:`synthetic.dataset`). It is demo data, not
part of the pipeline: only the demo, tests and benches use it.

    python -m synthetic OUT_DIR [--clips-per-genre N] [--seconds S]
        [--seed S] [--sr HZ] [--au-fraction F] [--jobs N]

>>> import tempfile
>>> generate_dataset(tempfile.mkdtemp(), clips_per_genre=4, seconds=0.5)["splits"]
{'train': 16, 'valid': 8, 'test': 8}
"""
from synthetic.dataset import generate_dataset
from synthetic.music import (DRUM_PATTERNS, GENRE_STYLES, GENRES, INSTRUMENTS, KITS, PARTS, build_instrument,
                             build_kit, build_part, build_style, synthesize_clip)

__all__ = ["DRUM_PATTERNS", "GENRE_STYLES", "GENRES", "INSTRUMENTS", "KITS", "PARTS", "build_instrument",
           "build_kit", "build_part", "build_style", "generate_dataset", "synthesize_clip"]
