# Two commands on a fresh machine:  make demo  (the sorter, simulated)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean pi-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.edge: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[edge]'
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[edge,convert,dev]'
	touch $@ $(VENV)/.edge

# The sorter on its embedded default: bundled photos as the camera, simulated pins, demo model.
demo: $(VENV)/.edge
	$(BIN)/ecosorter run --simulate

# Everything, slow and reliability tests included (CI runs exactly this).
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# The project on the Pi's platform without a Pi: Debian arm64 under qemu-user-static, installed by
# deploy/install.sh, run, and classify compared with this machine (needs root; tools/pi-check says more).
pi-check: $(VENV)/.edge
	tools/pi-check

bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build .pytest_cache
