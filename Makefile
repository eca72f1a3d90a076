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

# End to end on the synthetic set, scaled down so it takes a few minutes on 2 cores.
demo: setup
	$(PY) -m pipeline.synthetic $(DATA) --clips-per-genre 24 --seconds 30 --seed 0
	$(PY) build_cache.py --data $(DATA) --out $(CACHE) --features mel --augment 1
	$(PY) -m cache.inspect $(CACHE)
	$(PY) train.py --cache $(CACHE) --feature mel --model cnn1d --epochs 30 --out-dir $(RUN)

test: setup setup-dist
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(CACHE) $(CACHE).partial runs
