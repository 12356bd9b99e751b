# The two commands a new machine needs (README): `make run` and `make test`.
# Everything else here is a convenience around them.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip arguments for torch, e.g. `--index-url https://download.pytorch.org/whl/cpu`
# on a machine whose pip would otherwise fetch the CUDA build.
TORCH_PIP_ARGS ?=
EXTRAS ?= cpu,eval,dev,milvus
# The shipped default's epochs (the CLI default is 8; models/default/MODEL_CARD.md says why it differs).


.PHONY: help install browser run serve test test-long lint bench bench-index bench-encoder bench-http bench-wrk wrk \
        evaluate train-default calibrate-default model-variants clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

$(BIN)/.teacher: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[$(EXTRAS),teacher]"
	touch $@

install: $(BIN)/.installed  ## create .venv and install qsim with its CPU, eval and dev extras

# The desk page's browser tests (tests/web) drive Debian's chromium through Playwright (never a
# downloaded browser). Installed here when missing and apt-get can (as root, or with sudo); where it
# cannot, those tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
APT_CHROMIUM = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
browser:  ## install Debian's chromium for the browser tests when it is missing
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  { apt-get update -qq && $(APT_CHROMIUM); } || echo "could not install chromium: the browser tests will skip"; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "installing chromium for the browser tests (sudo apt-get)"; \
	  { sudo apt-get update -qq && sudo $(APT_CHROMIUM); } || echo "could not install chromium: the browser tests will skip"; \
	else \
	  echo "no $(CHROMIUM), and apt-get cannot install it here: the browser tests will skip"; \
	fi

run: install  ## set up and run the service on its embedded defaults (SQLite, CPU FAISS, shipped model, bundled questions)
	PATH="$(abspath $(BIN)):$$PATH" ./docker/entrypoint.sh

serve: run

test: $(BIN)/.teacher browser  ## set up and run the test suite (PostgreSQL tests skip when no server answers)
	$(BIN)/python -m pytest

test-long: install  ## the long reliability variants (soak, many crash trials)
	QSIM_LONG_TESTS=1 $(BIN)/python -m pytest tests/reliability

lint: install
	$(BIN)/ruff check app tests bench

bench: bench-index bench-encoder bench-http bench-wrk  ## all benchmarks; each prints a table

bench-index: install  ## exact/approximate index at 10k, 100k, 1M questions
	$(BIN)/python -m bench.index_bench

bench-encoder: $(BIN)/.teacher  ## encoder throughput and latency against MiniLM
	$(BIN)/python -m bench.encoder_bench

bench-http: install  ## HTTP latency and throughput against a running service
	$(BIN)/python -m bench.http_bench

# wrk (Debian's package) drives the HTTP latency-floor benchmark; installed here when missing and
# apt-get can (as root, or with sudo), like chromium for the browser tests.
WRK ?= wrk
APT_WRK = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
WRK_BENCH_ARGS ?= --json bench/out/wrk_bench.json
wrk:  ## install Debian's wrk for bench-wrk when it is missing
	@if command -v $(WRK) >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing wrk for bench-wrk (apt-get)"; \
	  { apt-get update -qq && $(APT_WRK); } || echo "could not install wrk"; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "installing wrk for bench-wrk (sudo apt-get)"; \
	  { sudo apt-get update -qq && sudo $(APT_WRK); } || echo "could not install wrk"; \
	else \
	  echo "no wrk, and apt-get cannot install it here: install wrk to run bench-wrk"; \
	fi

bench-wrk: $(BIN)/.teacher wrk  ## wrk against qsim and the peer (FastAPI + MiniLM + FAISS flat) side by side
	@command -v $(WRK) >/dev/null 2>&1 || { echo "bench-wrk needs wrk (make wrk)"; exit 1; }
	$(BIN)/python -m bench.wrk_bench --wrk "$$(command -v $(WRK))" $(WRK_BENCH_ARGS)

evaluate: $(BIN)/.teacher  ## quality report of the shipped model on BANKING77 (writes models/default/report)
	$(BIN)/qsim evaluate --model models/default --corpus data/banking77/train.csv \
	    --queries data/banking77/test.csv --text-column text --label-column category \
	    --out models/default/report

calibrate-default: install  ## choose the shipped model's threshold on its BANKING77 validation rows (stored in config.json)
	$(BIN)/qsim calibrate --model models/default --corpus data/banking77/train.csv --text-column text \
	    --label-column category

train-default: $(BIN)/.teacher  ## retrain the shipped default model (its differences from the CLI in models/default.train.json)
	$(BIN)/qsim train --corpus data/banking77/train.csv --text-column text --label-column category \
	    --transfer data/questions/transfer.txt --config models/default.train.json --out models/default --seed 13 --overwrite

model-variants: $(BIN)/.teacher  ## the recipe table of models/README.md (BANKING77 validation rows and SNIPS)
	$(BIN)/python -m bench.recipes --baselines --only regression-init-augment --epochs 6

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
