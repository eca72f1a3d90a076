# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= gtzan
CACHE ?= cache.h5
RUN ?= runs/demo

.PHONY: setup setup-dev demo test clean

# The project, installed editable with its runtime dependencies (pyproject.toml).
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Plus pytest and dask + distributed (optional for users: build_cache.py --backend dask).
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# End to end on the synthetic set with the default recipe (README, "Choosing the defaults"),
# scaled down to a small set (24 clips per genre) so it takes a few minutes on 2 cores.
demo: setup
	$(PY) -m synthetic $(DATA) --clips-per-genre 24 --seconds 30 --seed 0
	$(PY) build_cache.py --data $(DATA) --out $(CACHE)
	$(PY) -m cache.inspect $(CACHE)
	$(PY) train.py --cache $(CACHE) --out-dir $(RUN) --overwrite

test: setup-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(CACHE) $(CACHE).partial runs
