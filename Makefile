# Common paths: `make demo` (install + the bundled example), `make test` (install + the suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
comma  := ,
# CPU machines take the pinned torch/torchaudio/torchvision triple; on a GPU pod use EXTRAS=test
# so the pod's own CUDA torch stays.
EXTRAS ?= cpu,test
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

# make train DATASET=ironman [MODEL=preset GPUS=2 STAGE=z3 LAUNCHER=deepspeed]
DATASET ?= ironman
RUN_DIR ?= runs/$(DATASET)
TRAIN_OPTS = $(if $(MODEL),--preset $(MODEL)) $(if $(GPUS),--gpus $(GPUS)) $(if $(STAGE),--zero-stage $(STAGE)) $(if $(LAUNCHER),--launcher $(LAUNCHER))

.PHONY: install demo train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@# The tests lint every rendered script with Debian's shellcheck.
	command -v shellcheck > /dev/null || apt-get install -y -q shellcheck > /dev/null \
		|| (apt-get update -q > /dev/null && apt-get install -y -q shellcheck > /dev/null) \
		|| echo "warning: could not install shellcheck (apt-get install shellcheck as root)"
	touch $@

# The generated launcher, end to end, on CPU: 2 gloo processes, ZeRO-3, the tiny local model.
demo: install
	$(BIN)/lfx tiny-model llama3 runs/demo/tiny-llama3
	$(BIN)/lfx render launch/demo.yaml -o runs/demo/run
	PATH="$(abspath $(BIN)):$$PATH" LFX_DEVICE=cpu MIN_FREE_DISK_GB=1 MERGE=1 runs/demo/run/train_sft.sh
	$(BIN)/lfx chat runs/demo/run/merged -m "토니, 자기소개 해줘" --max-new-tokens 16 --show-prompt
	@echo "Demo done (a random tiny model: the answer is noise, the prompt is the persona's)."
	@echo "  runs/demo/run/output/  LoRA adapter, tokenizer with the persona chat template, trainer_log.jsonl, training_loss.png"
	@echo "  runs/demo/run/merged/  the adapter merged into the base (lfx merge), ready for lfx upload"

train: install
	$(BIN)/lfx render launch/$(DATASET).yaml -o $(RUN_DIR) $(TRAIN_OPTS)
	@if command -v nvidia-smi > /dev/null 2>&1; then PATH="$(abspath $(BIN)):$$PATH" $(RUN_DIR)/train_sft.sh; \
	else echo "No GPU here: rendered $(RUN_DIR)/train_sft.sh; run it on a GPU pod (or LFX_DEVICE=cpu for a CPU smoke run)."; fi

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_cli_startup.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_check.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_merge.py

clean:
	rm -rf runs .pytest_cache
