# Two commands do everything on a fresh Debian 12 machine:
#   make demo   the story end to end on a throwaway cluster
#   make test   all setup, then every test
# Everything else here is a step of those two.

# PG picks the PostgreSQL major version (15, 17 or 18); PG_CONFIG overrides where it lives.
PG          ?= 15
ifeq ($(origin PG_CONFIG),undefined)
PG_CONFIG   := $(shell bash scripts/pg-config-path $(PG))
endif
FEATURES    := --no-default-features --features pg$(PG)
VENV        ?= $(HOME)/.cache/kinde_rls/venv
PY          := $(VENV)/bin/python
PGRX_DATA   ?= /tmp/kinde_rls-pgrx-test-$(PG)
export PG PG_CONFIG
export KINDE_RLS_VENV := $(VENV)

.PHONY: setup install test test-all lint unit pgtest integration dev-test demo bench fuzz fuzz-check \
	soak package package-one install-package clean

# Versions `make test-all` and `make package` cover; .ci/run tests all three.
VERSIONS    ?= 15 17 18

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

# The integration suite runs against the extension as a user installs it: from this version's
# package tarball, through its install.sh (test_package.py checks the files are the package's).
integration: install-package
	KINDE_RLS_FULL_SUITE=1 $(PY) -m pytest -q -rs -p no:cacheprovider tests/integration

package-one: setup
	bash scripts/package.sh $(PG) $(PG_CONFIG)

install-package: package-one
	rm -rf dist/.install-check && mkdir -p dist/.install-check
	tar -C dist/.install-check -xzf "$$(cat dist/pg$(PG)/tarball)"
	dist/.install-check/kinde_rls-*/install.sh --pg-config $(PG_CONFIG)

test: lint unit fuzz-check pgtest integration

# The fast loop, not the truth: reinstall the debug build and run the chosen integration tests,
# e.g. `make dev-test K=anonymous` (pytest -k) or `make dev-test T=tests/integration/test_jwks.py`.
# No setup, no package, no count of the tests: run `make test` (or `make setup`) once first.
T ?= tests/integration
K ?=
dev-test:
	cargo pgrx install --pg-config $(PG_CONFIG) $(FEATURES)
	env -u KINDE_RLS_FULL_SUITE $(PY) -m pytest -q -rs -p no:cacheprovider $(if $(K),-k '$(K)') $(T)

# The whole suite once per version, each with its own build and clusters.
test-all:
	set -e; for v in $(VERSIONS); do env -u PG_CONFIG $(MAKE) test PG=$$v; done

demo: install
	$(PY) scripts/demo.py

# Performance, side by side in one run; writes bench/RESULTS.md. BENCH_ARGS=--quick for a smoke run.
bench: install
	cargo build --release --manifest-path bench/core/Cargo.toml
	$(PY) bench/bench.py --write bench/RESULTS.md $(BENCH_ARGS)

# cargo-fuzz targets on the pure core, FUZZ_SECONDS each (default 300); prints a results table.
FUZZ_SECONDS ?= 300
fuzz: setup
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# No fuzzing time: the fuzz targets and the bench compile, every verify_token seed is accepted,
# and every committed fuzz corpus passes its target's properties once (-runs=0).
fuzz-check: setup
	bash scripts/fuzz.sh --check
	cargo check --locked --all-targets --manifest-path bench/core/Cargo.toml

# A bounded concurrency soak: SOAK_CLIENTS sessions for SOAK_SECONDS, valid and bad tokens mixed.
SOAK_CLIENTS ?= 16
SOAK_SECONDS ?= 60
soak: install
	$(PY) scripts/soak.py --clients $(SOAK_CLIENTS) --seconds $(SOAK_SECONDS)

# Per version: the `cargo pgrx package` tree and a tarball with an install script, in dist/.
package:
	set -e; for v in $(VERSIONS); do env -u PG_CONFIG $(MAKE) package-one PG=$$v; done

clean:
	cargo clean
