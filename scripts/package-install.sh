#!/usr/bin/env bash
# Installs this kinde_rls package into an existing PostgreSQL (run as root, or as the owner of
# the PostgreSQL installation directories).
#
#   ./install.sh                                  pg_config on PATH, or Debian/Ubuntu's layout
#   ./install.sh --pg-config /usr/pgsql-17/bin/pg_config
#   ./install.sh --libdir DIR --sharedir DIR      no pg_config: give both directories
#   DESTDIR=/tmp/stage ./install.sh ...           stage the files under another root
#
# It refuses a server of another major version: an extension built for one major version does
# not load into another.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC1091
. <(grep -E '^(version|pg_major|glibc_required)=' "$HERE/BUILD_INFO")
PGC="${PG_CONFIG:-}"
LIBDIR=""
SHAREDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pg-config) PGC="$2"; shift 2 ;;
    --libdir) LIBDIR="$2"; shift 2 ;;
    --sharedir) SHAREDIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$LIBDIR$SHAREDIR" ]; then
  if [ -z "$PGC" ]; then
    # Debian/Ubuntu (apt.postgresql.org too): one directory per major version.
    if [ -x "/usr/lib/postgresql/$pg_major/bin/pg_config" ]; then
      PGC="/usr/lib/postgresql/$pg_major/bin/pg_config"
    elif [ -d "/usr/lib/postgresql/$pg_major/lib" ] && [ -d "/usr/share/postgresql/$pg_major" ]; then
      LIBDIR="/usr/lib/postgresql/$pg_major/lib"
      SHAREDIR="/usr/share/postgresql/$pg_major"
    elif command -v pg_config >/dev/null; then
      PGC="$(command -v pg_config)"
    else
      echo "install.sh: no pg_config found; pass --pg-config PATH or --libdir/--sharedir" >&2
      exit 1
    fi
  fi
  if [ -n "$PGC" ]; then
    server="$("$PGC" --version)"
    case "$server" in
      "PostgreSQL $pg_major."*) ;;
      *) echo "install.sh: this package is for PostgreSQL $pg_major; $PGC is $server" >&2; exit 1 ;;
    esac
    LIBDIR="$("$PGC" --pkglibdir)"
    SHAREDIR="$("$PGC" --sharedir)"
  fi
elif [ -z "$LIBDIR" ] || [ -z "$SHAREDIR" ]; then
  echo "install.sh: --libdir and --sharedir go together" >&2
  exit 2
fi

(cd "$HERE" && sha256sum --quiet -c SHA256SUMS)
# The library links against the C library of the system it was built on.
have_glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
if [ -z "$have_glibc" ] ||
  [ "$(printf '%s\n%s\n' "$glibc_required" "$have_glibc" | sort -V | head -1)" != "$glibc_required" ]; then
  echo "install.sh: this package needs glibc $glibc_required or newer; this system has ${have_glibc:-no glibc}" >&2
  echo "install.sh: build from source here instead: cargo pgrx install --pg-config <pg_config>" >&2
  exit 1
fi
DEST="${DESTDIR:-}"
install -d "$DEST$LIBDIR" "$DEST$SHAREDIR/extension"
install -m 0755 "$HERE/lib/kinde_rls.so" "$DEST$LIBDIR/kinde_rls.so"
# A full install script of another version (kinde_rls--X.sql, not an upgrade A--B) would let
# CREATE EXTENSION build that version's schema against this library: only this one stays.
for old in "$DEST$SHAREDIR"/extension/kinde_rls--*.sql; do
  base="$(basename "$old" .sql)"
  case "${base#kinde_rls--}" in
    *--*|"$version") ;;
    *) rm -f "$old" ;;
  esac
done
install -m 0644 "$HERE"/extension/kinde_rls* "$DEST$SHAREDIR/extension/"
echo "kinde_rls $version installed: $DEST$LIBDIR/kinde_rls.so, $DEST$SHAREDIR/extension/kinde_rls*"
echo "next: add kinde_rls to shared_preload_libraries, restart, then CREATE EXTENSION kinde_rls;"
