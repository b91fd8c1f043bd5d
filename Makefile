# The two commands a user needs: `make demo` and `make test` (both set everything up once first).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export WANDB_MODE ?= offline
CORES ?= 2

.PHONY: setup demo test test-fast lint dag bench clean

setup:
	@bash workflow/scripts/setup.sh

demo: setup
	snakemake --cores $(CORES)

test: setup
	pytest -q

test-fast: setup
	pytest -q -m "not slow"

# The venv is the deployment (README), so lint's per-rule "specify a conda environment" is expected.
lint: setup
	@out=$$(snakemake --lint --cores 1 2>&1) || true; \
	  if grep -E '^\s+\* ' <<<"$$out" | grep -vq 'Specify a conda environment'; then echo "$$out"; exit 1; fi; \
	  echo "snakemake --lint: nothing beyond the per-rule conda recommendation"
	snakefmt --check workflow/
	ruff check --select F,E9 src tests bench

dag: setup
	snakemake --dag --cores 1 | dot -Tsvg > results/dag.svg && echo "wrote results/dag.svg"

bench: setup
	python bench/probe.py && python bench/dag.py && python bench/train_step.py && python bench/hybrid_vs_full.py

clean:
	rm -rf data/raw data/shards data/clips results/logs results/benchmarks .snakemake
