#!/usr/bin/env bash
# Registers every PostgreSQL this machine has with cargo-pgrx in one `cargo pgrx init`, so that
# adding one version never drops another from ~/.pgrx/config.toml. Safe to run again.
set -euo pipefail
args=()
want=()
for v in 13 14 15 16 17 18; do
  cfg="$(bash "$(dirname "$0")/pg-config-path" "$v")"
  if [ -x "$cfg" ]; then
    args+=("--pg$v=$cfg")
    want+=("pg$v = \"$cfg\"")
  fi
done
[ ${#args[@]} -gt 0 ] || { echo "pgrx-init: no PostgreSQL found" >&2; exit 1; }
CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
missing=0
for line in "${want[@]}"; do grep -qF "$line" "$CONFIG" 2>/dev/null || missing=1; done
if [ "$missing" = 1 ]; then
  echo "pgrx-init: cargo pgrx init ${args[*]}"
  cargo pgrx init "${args[@]}"
fi
