# make book   execute every notebook with papermill (PROFILE, default `default`; JOBS chapters at
#             once, default 2), render the book
# make test   pytest (library tests and notebook smoke runs under the ci profile), then a
#             Sphinx build of the book with warnings as errors and the tests of the rendered
#             pages (offline math, no machine path, in headless Chromium at 400 and 1280 px)
# make run    NB=01_setting PROFILE=ci PARAMS="-p width 4096 -p tau 20": one notebook
# make bench  the performance benchmark (bench/run.py)
# make lint   ruff
# Every target first bootstraps .venv from requirements.txt and pyproject.toml.
# ACCEL=cuda (e.g. `make book ACCEL=cuda PROFILE=paper`) adds the CUDA 12 build of the same
# pinned jax (jax[cuda12]==<the jax pin in requirements.txt>) on a host with an NVIDIA GPU;
# ACCEL=cpu, the default, keeps the CPU build.

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp

PROFILE ?= default
NB      ?=
PARAMS  ?=
ACCEL   ?= cpu
# pytest workers (pytest-xdist), each pinned to its own share of the cores (tests/conftest.py):
# most of a test's time is one core compiling or running one small program
TEST_WORKERS ?= 2
# chapters executed at once by `make book`, a kernel each on its own share of the cores
# (localsgd_book.cores)
JOBS ?= 2

JAX_PIN := $(shell sed -n 's/^jax==\([^ ]*\).*/\1/p' requirements.txt)
UV_PIN  := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements.txt)
# the venv's packages are installed by uv (pinned in requirements.txt): on two cores with empty
# caches it installs the lock in seconds, where pip takes over two minutes
UV      := $(VENV)/bin/uv pip install --quiet --python $(PY)
ifeq ($(ACCEL),cuda)
ACCEL_REQ := jax[cuda12]==$(JAX_PIN)
else ifeq ($(ACCEL),cpu)
ACCEL_REQ :=
else
$(error ACCEL=$(ACCEL) is not known; allowed: cpu (default), cuda)
endif
ACCEL_STAMP := $(VENV)/.stamp-$(ACCEL)

.PHONY: all book test run bench lint clean venv accel-requirement

all: book

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q uv==$(UV_PIN)
	$(UV) -r requirements.txt
	$(UV) --no-deps -e .
	@# The kernel `python3` that papermill asks for runs this venv's interpreter
	@# (jupyter_client prefers the venv's kernelspec over a user's one in a venv).
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (localsgd)" >/dev/null
	$(PY) -c "from localsgd_book.pipeline import kernel_interpreter as k; import os, sys; \
	  assert os.path.abspath(k()) == os.path.abspath(sys.executable), (k(), sys.executable)"
	@touch $@

# the accelerator's build of jax, after the lock (which holds the CPU jaxlib)
$(VENV)/.stamp-cuda: $(STAMP)
	$(UV) "$(ACCEL_REQ)"
	$(PY) -c "import jax; print('jax', jax.__version__, 'devices:', jax.devices())"
	@touch $@

$(VENV)/.stamp-cpu: $(STAMP)
	@touch $@

# the requirement ACCEL adds (empty for cpu); a test resolves it with pip
accel-requirement:
	@echo '$(ACCEL_REQ)'

venv: $(ACCEL_STAMP)

book: $(ACCEL_STAMP)
	$(PY) -m localsgd_book.pipeline book --profile $(PROFILE) --jobs $(JOBS) $(PARAMS)

test: $(ACCEL_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
	$(PY) -m localsgd_book.pipeline render --warnings-as-errors
	@# checked once the book exists: math loads locally, no page shows a machine path, and in
	@# headless Chromium (the system's) nothing is wider than its column without a scroll cue
	$(PY) -m pytest -q tests/test_offline.py tests/test_pages.py

run: $(ACCEL_STAMP)
	@test -n "$(NB)" || { echo 'usage: make run NB=<notebook stem> [PROFILE=ci|default|paper] [PARAMS="-p name value ..."]' >&2; exit 2; }
	$(PY) -m localsgd_book.pipeline run $(NB) --profile $(PROFILE) $(PARAMS)

# FedJAX, the comparison, goes into its own venv (bench/fedjax/.venv) on the first run; where it
# cannot be installed the bench says so and goes on without it.
bench: $(ACCEL_STAMP)
	$(PY) bench/run.py --install-fedjax
	$(PY) bench/scaling.py

lint: $(ACCEL_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf book/_build book/executed book/_generated results bench/results.json bench/scaling.json .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
