# Two entry points: `make demo` and `make test`. Both create .venv on first use and install the kit into it.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m captioning demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

notebooks: $(STAMP)
	$(BIN)/python -m captioning notebooks

clean:
	rm -rf outputs .pytest_cache
