# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= all,dev
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv test lint typecheck pytest test-all test-arm64 bench demo clean reliability

help:
	@echo "make test   - create .venv if missing, install, lint, type-check and run the tests"
	@echo "make demo   - run the main job end to end on embedded defaults"
	@echo "make bench  - run the benchmarks and rewrite benchmarks/RESULTS.md"
	@echo "make test-all - the tests including those marked slow"
	@echo "make test-arm64 - the edge agent on an emulated arm64 userland (as root; cached in .cache/arm64)"
	@echo "make reliability - faults, fuzzing, abuse and the 30-minute soak at full size"

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# tf_keras, which onnx2tf imports, requires `tensorflow`, which clashes with tensorflow-cpu: it is
# installed without its dependencies beside the extras that bring TensorFlow (docs/converter.md).
comma := ,
NO_DEPS := tf-keras>=2.21,<2.22
NEEDS_NO_DEPS := $(filter all onnx2tf,$(subst $(comma), ,$(EXTRAS)))

# Reinstall only when the project's metadata changed.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(if $(NEEDS_NO_DEPS),$(PY) -m pip install --quiet --no-deps '$(NO_DEPS)')
	touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(PY) scripts/run_pytest.py -m "not slow" $(PYTEST_ARGS)

test: lint typecheck pytest

test-all: venv
	$(PY) scripts/run_pytest.py $(PYTEST_ARGS)

# The edge agent as aarch64 under qemu-user-static, broker and hub on the host (docs/edge-agent.md).
test-arm64: venv
	bash scripts/arm64/lane.sh $(ARM64_ARGS)

# Full sizes of tests/reliability (CI runs them short); figures go to $(RELIABILITY_FIGURES).
RELIABILITY_FIGURES ?= .cache/reliability/figures.jsonl
reliability: venv
	HYBRID_RELIABILITY_SCALE=full HYBRID_RELIABILITY_FIGURES=$(RELIABILITY_FIGURES) \
		$(PY) -m pytest tests/reliability -m "" -s -q $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks $(BENCH_ARGS)

# Trains and converts the models once (cached in .cache/demo), then broker, hub, agent, report.
demo: venv
	$(PY) -m demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
