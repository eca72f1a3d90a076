"""``python -m synthetic OUT_DIR [flags]``: write the demo data set (see :mod:`synthetic.cli`)."""
from synthetic.cli import run

run()
