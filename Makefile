# Two entry points that set everything up on a fresh machine with only Python:
#   make demo   environment + install + the tiny patch_proj grid + the report
#   make test   environment + install + the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo results lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: other versions download GBs or break torchvision.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python experiments/launch.py ablation=patch_proj
	$(BIN)/python analysis/report.py

# Study results like the committed ones (docs/results/mini/*): patch_proj, negatives,
# momentum, batch_size and the stability ladder's edge (5 seeds), the stability ladder
# (2 seeds), into docs/results/mini; hours on a CPU; not part of CI. The committed ladder
# page has its lr grid with 5 seeds: its RUN.md gives that command.
results: install
	$(BIN)/python experiments/results.py --scale mini

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs report
