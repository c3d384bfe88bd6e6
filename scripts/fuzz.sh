#!/usr/bin/env bash
# make fuzz: run every cargo-fuzz target on the pure core for FUZZ_SECONDS each (default 300)
# and print executions and findings per target. The committed seed corpus (fuzz/corpus) is read,
# never written: new inputs go to a scratch corpus under /tmp; crashes to fuzz/artifacts.
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
#
# make fuzz-check (`fuzz.sh --check`): build the targets, check that every verify_token seed is
# accepted (fuzz/tests/seeds.rs), and run every committed corpus once (-runs=0) through its
# target, so that a broken property or a rotten seed fails without any fuzzing time.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
scratch="${FUZZ_SCRATCH:-/tmp/kinde_rls-fuzz}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build -O
if [ "$seconds" = --check ]; then
  cargo test --locked --manifest-path fuzz/Cargo.toml
  for t in $targets; do
    # An empty scratch directory first: whatever libFuzzer writes goes there, not to the corpus.
    rm -rf "$scratch/replay/$t" && mkdir -p "$scratch/replay/$t"
    echo "== replaying fuzz/corpus/$t ($(ls "fuzz/corpus/$t" | wc -l) inputs)"
    cargo fuzz run -O "$t" "$scratch/replay/$t" "fuzz/corpus/$t" -- -runs=0 -max_len=20000
  done
  exit 0
fi
status=0
summary=""
for t in $targets; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  echo "== fuzzing $t for ${seconds}s"
  if cargo fuzz run -O "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
       -max_total_time="$seconds" -print_final_stats=1 -max_len=20000 >"$log" 2>&1; then
    result="no crash, no panic"
  else
    result="FAILED (see $log and fuzz/artifacts/$t)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  summary+=$(printf '| %s | %s s | %s | %s |' "$t" "$seconds" "${execs:-?}" "$result")$'\n'
done
echo
echo "| target | time | executions | result |"
echo "|---|---|---|---|"
printf '%s' "$summary"
exit $status
