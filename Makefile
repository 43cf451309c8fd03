# Two entry points: `make demo` and `make test`. Both create .venv on first use and install the kit into it.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# nbval re-executes the committed notebooks (in this order: test/caption need train1/train2's checkpoints) and
# compares the cells marked "# NBVAL_CHECK_OUTPUT" (those that print the same on every machine) with their saved
# outputs; what they write goes to outputs/nbval. tests/notebook_results.py then checks the numbers they achieved.
NOTEBOOKS := notebooks/train1.ipynb notebooks/train2.ipynb notebooks/test.ipynb notebooks/caption.ipynb
NBVAL := --nbval-lax --nbval-current-env --nbval-cell-timeout 900 $(NOTEBOOKS)
NBVAL_ENV := CAPTIONING_NBVAL_OUTPUT=$(CURDIR)/outputs/nbval

.PHONY: demo test notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m instructor demo

test: $(STAMP)
	rm -f outputs/nbval/*.metrics.json outputs/nbval/*checkpoint_*.pth.tar  # train afresh: a kept run is continued
	$(NBVAL_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25 tests $(NBVAL)
	$(NBVAL_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider tests/notebook_results.py

notebooks: $(STAMP)
	$(BIN)/python -m instructor notebooks

clean:
	rm -rf outputs .pytest_cache
