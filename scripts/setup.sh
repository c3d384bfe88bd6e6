#!/usr/bin/env bash
# Installs everything kinde_rls needs on a bare Debian 12 machine; safe to run again.
set -euo pipefail
PG="${PG:-15}"
need_apt=()
for p in postgresql-$PG postgresql-server-dev-$PG libclang-dev clang sudo python3-venv pgbouncer; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's package starts a cluster of its own; we use throwaway clusters only.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster "$PG" main stop 2>/dev/null || true
fi
if ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.0'; then
  echo "setup: installing cargo-pgrx 0.18.0 (several minutes)"
  cargo install cargo-pgrx --version 0.18.0 --locked
fi
PGCONFIG=/usr/lib/postgresql/$PG/bin/pg_config
if ! grep -q "pg$PG" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  cargo pgrx init --pg$PG="$PGCONFIG"
fi
# Independent JOSE implementation for minting test tokens.
VENV="${KINDE_RLS_VENV:-$HOME/.cache/kinde_rls/venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import jwt, cryptography, psycopg, pytest' 2>/dev/null; then
  echo "setup: creating python venv with PyJWT, cryptography, psycopg"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'PyJWT[crypto]==2.10.1' 'cryptography>=42' 'psycopg[binary]>=3.1' 'pytest>=8'
fi
echo "setup: ready (PostgreSQL $PG, cargo-pgrx $(cargo pgrx --version | awk '{print $2}'))"
