# lhrcnn: `make install` (venv + pinned deps + ops), `make test`, `make demo`, `make bench`.
# Every target is idempotent: a second run with nothing changed takes seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
PKG_STAMP := $(VENV)/.lhrcnn-stamp
OPS_LIB := lhrcnn/_lhrcnn_ops.so
OPS_SOURCES := $(wildcard ops/kernels/*.h ops/kernels/*.cc)
PYTEST_ARGS ?=
# Parallel test workers (pytest-xdist): one per core, at most 4; TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install ops test demo bench clean

install: $(PKG_STAMP) ops

$(DEPS_STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	@# make the repository importable from the venv (scripts, tests, notebooks)
	$(PY) -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'lhrcnn-repo.pth'), 'w').write(os.getcwd() + '\n')"
	@touch $@

# lhrcnn itself as an editable install (its metadata and the `lhrcnn` command), redone only when the
# packaging changes. pip runs setup.py's build_ext step, i.e. the same op build as `ops` below, against
# the venv's TensorFlow (--no-build-isolation); LHRCNN_REQUIRE_OPS=1 makes a failed op build an error.
$(PKG_STAMP): $(DEPS_STAMP) pyproject.toml setup.py
	LHRCNN_REQUIRE_OPS=1 $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# setup.py itself decides what is stale (sources, headers, flags); this rule only gates the call.
ops: $(PKG_STAMP)
	@$(PY) setup.py -q build_ops

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS) tests

demo: install
	$(PY) scripts/run_main_job.py

bench: install
	$(PY) scripts/benchmark.py

clean:
	rm -rf build dist $(OPS_LIB) lhrcnn/_lhrcnn_ops.json lhrcnn.egg-info
