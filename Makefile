# Common paths: `make demo` (install + the bundled example), `make test` (install + the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
comma  := ,
# CPU machines take the pinned torch/torchaudio/torchvision triple; on a GPU pod use EXTRAS=test
# so the pod's own CUDA torch stays.
EXTRAS ?= cpu,test
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/lfx tiny-model llama3 runs/demo/tiny-llama3
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/lfx train launch/demo.yaml --nproc-per-node 2
	$(BIN)/lfx templates show llama3-persona --tokenizer runs/demo/ironman-lora
	@echo "Demo done. LoRA adapter, tokenizer with the persona chat template, loss log and plot:"
	@echo "  runs/demo/ironman-lora/ (adapter_model.safetensors, chat_template.jinja, trainer_log.jsonl, training_loss.png)"

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_cli_startup.py

clean:
	rm -rf runs .pytest_cache
