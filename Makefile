# fedstock: every target installs what it needs first, so a fresh machine needs only `make`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := $(VENV)/.packages
PROTOS := $(wildcard proto/fedstock/v1/*.proto)

MODEL ?= lr
ROUNDS ?= 3
ROWS ?= 270000

.PHONY: install proto demo test unit integration lint bench test-compose test-under-load up down up-he he-keys base-image clean

install: $(STAMP)

$(PACKAGES): pyproject.toml
	@command -v python3 >/dev/null || (apt-get update && apt-get install -y python3 python3-venv)
	@python3 -c 'import ensurepip, venv' 2>/dev/null || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,baselines]'
	touch $(PACKAGES)

# The trees' kernels built ahead of time (common/models/ahead.py), with the C compiler Python
# was built with and its headers; rebuilt when a kernel's code changes.
$(STAMP): $(PACKAGES) common/models/compiled.py common/models/ahead.py common/models/ahead_cli.py common/models/histtree.py common/models/forest.py
	@command -v "$$($(PY) -c 'import sysconfig; print(sysconfig.get_config_var("CC").split()[0])')" >/dev/null \
		&& test -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" \
		|| (apt-get update && apt-get install -y gcc python3-dev)
	$(PY) -m common.models.ahead
	touch $(STAMP)

# Regenerates the committed stubs; tests/test_stubs.py fails when they are stale.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# The whole federation on localhost: a server and nine province client processes.
demo: $(STAMP)
	$(PY) -m server.localrun --model $(MODEL) --rounds $(ROUNDS) --rows $(ROWS) --out runs/demo

# Everything CI runs: lint, unit and integration tests, then the containers on a real engine.
test: java lint unit integration test-compose

# In-process tests: the round loop over the in-memory channel, strategies, codecs, data.
unit: $(STAMP) java
	$(PY) -m pytest -q -ra -m "not integration"

# Real server and client processes over localhost (tests marked `integration`).
integration: $(STAMP) chromium java
	$(PY) -m pytest -q -ra -m integration

# The suite with two CPU-bound processes beside it, as on a busy two-core machine; it must pass.
test-under-load: $(STAMP) chromium java
	PY=$(PY) bash tests/under_load.sh

# The live view's test renders the server's page in headless Chromium.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Installs and starts a Docker engine when none answers, builds the images, runs the federation.
test-compose:
	bash tests/compose/run.sh

# The federation in containers; results stay in the `results` volume (see the README).
# Without a registry: `make base-image`, then `make up BASE_IMAGE=fedstock-base:bookworm`.
BASE_IMAGE ?= python:3.11-slim
up:
	bash docker/engine.sh
	source docker/env.sh && BASE_IMAGE=$(BASE_IMAGE) $$DOCKER compose up --build --abort-on-container-failure

down:
	source docker/env.sh && $$DOCKER compose down -v

# The federation in containers under --privacy he: a dealer container gives each province only
# its own key share (docker/compose.he.yml, docs/he.md).
up-he:
	bash docker/engine.sh
	source docker/env.sh && BASE_IMAGE=$(BASE_IMAGE) $$DOCKER compose -f docker-compose.yml -f docker/compose.he.yml up --build --abort-on-container-failure

# Deal a threshold Paillier key outside containers: HE_DIR/<province>.key for each province,
# HE_DIR/he.pub for the server (python -m client.he_keys --help for the threshold and provinces).
HE_DIR ?= he-keys
he-keys: $(STAMP)
	$(PY) -m client.he_keys $(HE_DIR)

base-image:
	bash docker/engine.sh
	bash docker/base-image.sh fedstock-base:bookworm

# docs/cli.md: every program's --help, from the parsers; tests/test_cli.py fails when it is stale.
.PHONY: cli-docs
cli-docs: $(STAMP)
	$(PY) -m tests.cli_docs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -u -m tests.bench

# fedstock beside Flower 1.42's legacy gRPC runtime on the same job, in one run, then on the
# 10 MB-per-message variant (train-free FedAvg of 1.25M float64): median rounds, the servers'
# peak RSS and the ratios. Flower lives in its own virtual environment (.venv-flower), never in
# the project's. `tests.bench_flower --only 10mb` runs the variant alone.
FLOWER_VENV ?= .venv-flower
.PHONY: bench-flower
bench-flower: $(STAMP)
	@test -x $(FLOWER_VENV)/bin/python || python3 -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet 'flwr==1.42.0' numpy 'numba==0.68.1'
	$(PY) -u -m tests.bench_flower --flower-python $(FLOWER_VENV)/bin/python --out runs/flower

# Federated gbdt beside XGBoost's own federated mode (its gRPC server, tree_method=hist) on the
# same provinces, rows and settings, and beside centralised XGBoost and LightGBM: MSE and seconds,
# trees.json in runs/trees. XGBoost and LightGBM live in .venv-bench, never in the project's.
BENCH_VENV ?= .venv-bench
.PHONY: bench-trees
bench-trees: $(STAMP)
	@test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet 'xgboost==3.2.0' 'lightgbm==4.7.0' scikit-learn numpy
	$(PY) -u -m tests.bench_trees --rows $(ROWS) --bench-python $(BENCH_VENV)/bin/python --out runs/trees

# Each --privacy mode's MSE, seconds and bytes per round; privacy.json and the MSE/ε plot
# in runs/privacy. First, secure aggregation against plain for lr at 9, 50 and 100 members,
# their sessions multiplexed into four processes (docs/privacy.md, Figures).
# Then rf under dp-local's floor beside the clear forest: MSE and ε.
.PHONY: bench-privacy
bench-privacy: $(STAMP)
	$(PY) -u -m tests.bench_privacy --out runs/privacy --secagg-members 9 50 100
	$(PY) -u -m tests.bench_forest_dp

# Each --strategy's rounds to a target MSE and per-province spread, and each --compression's
# bytes per round and MSE; strategies.json in runs/strategies. Then async rounds against sync with
# one province ten times slower: versions per minute and final MSE, async.json.
.PHONY: bench-strategies
bench-strategies: $(STAMP)
	$(PY) -u -m tests.bench_strategies --out runs/strategies
	$(PY) -u -m tests.bench_async --out runs/strategies

# What hostile callers cost a server process: RSS before/after 100,000 fuzzed messages, with
# 1,000 idle connections and 100 idle streams; honest round seconds during each attack; the
# outcome checks' cost per round (docs/hardening.md).
# A round of 10 MB updates from nine client processes, each kept whole until the round ends or
# folded into the running sum as it counts: the server's peak RSS and median round of each.
# FOLD_FLAGS picks runs, e.g. "--keep folded --allocator given-back --max-inflight-mb 4096 10".
FOLD_FLAGS ?=
.PHONY: bench-fold
bench-fold: $(STAMP)
	$(PY) -u -m tests.bench_fold --out runs/fold $(FOLD_FLAGS)

# A 1,000-round run with nine clients on tiny data: server RSS every 50 rounds, and round time.
.PHONY: bench-soak
bench-soak: $(STAMP)
	$(PY) -u -m tests.bench_soak --rounds 1000

# What starting costs: each program's imports, and make demo's processes from launch to
# listening, joined and final metrics (wall and CPU seconds).
.PHONY: bench-launch
bench-launch: $(STAMP)
	$(PY) -u -m tests.bench_launch

# 100 and 1,000 members' sessions (client daemons as threads of four processes) against one
# server over localhost: rounds completed, round seconds, server RSS, threads and CPU per session.
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -u -m tests.bench_scale run --sessions 100 1000

# Where a framework-only round goes (nine clients, 300 rows each): median round, wall time a
# round with the recording between rounds, CPU a round of the server's threads and the clients.
.PHONY: bench-overhead
bench-overhead: $(STAMP)
	$(PY) -u -m tests.bench_overhead

# The floor gRPC's Python APIs set an exchange (nine client processes, one raw message each
# way, no fedstock code): synchronous and asyncio servers and clients, all four pairings.
.PHONY: bench-transport
bench-transport: $(STAMP)
	$(PY) -u -m tests.bench_transport

.PHONY: bench-hostile
bench-hostile: $(STAMP)
	$(PY) -u -m tests.bench_hostile

# The live view's response times and sizes while it is polled, and the rounds' seconds with and
# without it.
# Each model's MSE beside persistence, last close and the market's oracle: skill and achieved
# skill, federated, centralised and on Spark (SCALE=paper for the paper's 2.7M rows).
.PHONY: bench-forecast
bench-forecast: $(STAMP)
	$(PY) -u -m tests.bench_forecast --scale $(SCALE) --forecast $(FORECAST) \
		--out runs/forecast$(if $(filter-out price,$(FORECAST)),-$(FORECAST))

.PHONY: bench-liveview
bench-liveview: $(STAMP)
	$(PY) -u -m tests.bench_liveview

# Each province's leave-one-out and Shapley value, the features the model leans on, personalised
# against global MSE, and the seconds the analysis adds (LR and SVM on the default market).
.PHONY: bench-analysis
bench-analysis: $(STAMP)
	$(PY) -u -m tests.bench_analysis --out runs/analysis

# The seed paper's comparison: federated, centralised and Spark for LR, RF and SVM, written as
# Tables 2 and 3 beside the paper's, charts, LR's and SVM's MSE against the DP ε, and report.md
# in runs/reproduce. SCALE=paper runs the paper's 2,699,730 rows (hours on two cores).
# SETTING=paper: the paper's random split, cross-validation and SVM grid, with the default
# setting beside it (runs/reproduce/next-day) and the agreement section (docs/reproduce.md).
SCALE ?= small
SETTING ?= next-day
# FORECAST=change|return: every run forecasts that quantity instead of the price (docs/forecasting.md).
FORECAST ?= price
.PHONY: reproduce java
reproduce: $(STAMP) java
	$(PY) -m baselines.reproduce --scale $(SCALE) --setting $(SETTING) --forecast $(FORECAST) --out runs/reproduce \
		$(if $(filter paper,$(SETTING)),--beside next-day)

# Spark needs a Java runtime, 17 or newer.
java:
	@java -version >/dev/null 2>&1 || (apt-get update && apt-get install -y default-jre-headless)

clean:
	rm -rf runs .pytest_cache .ruff_cache
