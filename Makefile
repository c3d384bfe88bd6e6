# Two commands do everything on a fresh Debian 12 machine:
#   make demo   the story end to end on a throwaway cluster
#   make test   all setup, then every test
# Everything else here is a step of those two.

PG          ?= 15
PG_CONFIG   ?= /usr/lib/postgresql/$(PG)/bin/pg_config
FEATURES    := --no-default-features --features pg$(PG)
VENV        ?= $(HOME)/.cache/kinde_rls/venv
PY          := $(VENV)/bin/python
PGRX_DATA   ?= /tmp/kinde_rls-pgrx-test-$(PG)
export PG PG_CONFIG KINDE_RLS_VENV=$(VENV)

.PHONY: setup install test lint unit pgtest integration demo bench fuzz soak clean

setup:
	bash scripts/setup.sh

install: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG) $(FEATURES)

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets $(FEATURES) -- -D warnings

unit: setup
	cargo test -p kinde_rls_core

pgtest: setup
	mkdir -p $(PGRX_DATA) && chown postgres $(PGRX_DATA) 2>/dev/null || true
	cargo pgrx test pg$(PG) --runas postgres --pgdata $(PGRX_DATA)/data

integration: install
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

test: lint unit pgtest integration

demo: install
	$(PY) scripts/demo.py

# Performance, side by side in one run; writes bench/RESULTS.md. BENCH_ARGS=--quick for a smoke run.
bench: install
	cargo build --release --manifest-path bench/core/Cargo.toml
	$(PY) bench/bench.py --write bench/RESULTS.md $(BENCH_ARGS)

# cargo-fuzz targets on the pure core, FUZZ_SECONDS each (default 300); prints a results table.
FUZZ_SECONDS ?= 300
fuzz: setup
	cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# A bounded concurrency soak: SOAK_CLIENTS sessions for SOAK_SECONDS, valid and bad tokens mixed.
SOAK_CLIENTS ?= 16
SOAK_SECONDS ?= 60
soak: install
	$(PY) scripts/soak.py --clients $(SOAK_CLIENTS) --seconds $(SOAK_SECONDS)

clean:
	cargo clean
