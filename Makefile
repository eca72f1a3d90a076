# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= gtzan
CACHE ?= cache.h5
RUN ?= runs/demo

.PHONY: setup setup-dist demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# dask + distributed: optional for users (build_cache.py --backend dask), needed by the tests.
setup-dist: $(VENV)/.installed-dist

$(VENV)/.installed-dist: requirements-dist.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dist.txt
	touch $@

# End to end on the synthetic set with the default recipe (README, "Choosing the defaults"),
# scaled down so it takes a few minutes on 2 cores: 1 augmented copy instead of 4, 20 epochs
# instead of 30.
demo: setup
	$(PY) -m synthetic $(DATA) --clips-per-genre 24 --seconds 30 --seed 0
	$(PY) build_cache.py --data $(DATA) --out $(CACHE) --augment 1
	$(PY) -m cache.inspect $(CACHE)
	$(PY) train.py --cache $(CACHE) --epochs 20 --out-dir $(RUN) --overwrite

test: setup setup-dist
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(CACHE) $(CACHE).partial runs
