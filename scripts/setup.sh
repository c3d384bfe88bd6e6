#!/usr/bin/env bash
# Installs everything kinde_rls needs on a bare Debian 12 machine; safe to run again.
set -euo pipefail
PG="${PG:-15}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PGCONFIG="${PG_CONFIG:-$(bash "$HERE/pg-config-path" "$PG")}"
# PostgreSQL 15 comes from Debian 12's packages; 17 and 18 are built from source (pg-from-source).
pkgs=(libclang-dev clang sudo python3-venv pgbouncer)
# (Debian's client package alone also puts tools under /usr/lib/postgresql/15/bin.)
if [ "$PGCONFIG" = /usr/lib/postgresql/15/bin/pg_config ]; then
  pkgs+=(postgresql-15 postgresql-server-dev-15)
fi
need_apt=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's package starts a cluster of its own; we use throwaway clusters only.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' | while read -r v c; do
    pg_ctlcluster "$v" "$c" stop 2>/dev/null || true
  done
fi
if ! cargo pgrx --version 2>/dev/null | grep -q '0\.18\.0'; then
  echo "setup: installing cargo-pgrx 0.18.0 (several minutes)"
  cargo install cargo-pgrx --version 0.18.0 --locked
fi
if ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.2'; then
  echo "setup: installing cargo-fuzz 0.13.2 (make fuzz-check, make fuzz)"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
# A version built from source is (re)built when missing, or when it lacks what the tests need
# (PostgreSQL 18's libpq with libcurl, for the OAuth sign-in tests): pg-from-source decides.
if [[ "$PGCONFIG" != /usr/lib/postgresql/* ]] &&
  { [ ! -x "$PGCONFIG" ] || [ "$PGCONFIG" = "$(bash "$HERE/pg-config-path" "$PG")" ]; }; then
  bash "$HERE/pg-from-source" "$PG"
fi
"$PGCONFIG" --version | grep -q "^PostgreSQL $PG\." ||
  { echo "setup: $PGCONFIG is not PostgreSQL $PG" >&2; exit 1; }
for f in "$("$PGCONFIG" --bindir)/postgres" "$("$PGCONFIG" --includedir-server)/postgres.h"; do
  [ -e "$f" ] || { echo "setup: $f is missing: $PGCONFIG needs the server and its headers" >&2; exit 1; }
done
bash "$HERE/pgrx-init.sh"
# Independent JOSE implementation for minting test tokens.
VENV="${KINDE_RLS_VENV:-$HOME/.cache/kinde_rls/venv}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import jwt, cryptography, psycopg, pytest' 2>/dev/null; then
  echo "setup: creating python venv with PyJWT, cryptography, psycopg"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'PyJWT[crypto]==2.10.1' 'cryptography>=42' 'psycopg[binary]>=3.1' 'pytest>=8'
fi
echo "setup: ready ($("$PGCONFIG" --version) at $PGCONFIG, cargo-pgrx $(cargo pgrx --version | awk '{print $2}'))"
