#!/usr/bin/env bash
# Builds the installable artifacts for one PostgreSQL major version:
#   dist/pgMAJOR/tree/...                       what `cargo pgrx package` lays out (absolute paths)
#   dist/kinde_rls-VERSION-pgMAJOR-ARCH.tar.gz  the same files plus install.sh, path-independent
#
#   scripts/package.sh 17 /opt/kinde_rls/pg17/bin/pg_config
set -euo pipefail
V="${1:?usage: scripts/package.sh MAJOR PG_CONFIG}"
PGC="${2:?usage: scripts/package.sh MAJOR PG_CONFIG}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
ARCH="$(uname -m)"
NAME="kinde_rls-$VERSION-pg$V-linux-$ARCH"
OUT="$ROOT/dist"
TREE="$OUT/pg$V/tree"

rm -rf "$OUT/pg$V" "$OUT/$NAME" "$OUT/$NAME.tar.gz"
mkdir -p "$OUT"
cargo pgrx package --pg-config "$PGC" --no-default-features --features "pg$V" --out-dir "$TREE"

LIBDIR="$("$PGC" --pkglibdir)"
SHAREDIR="$("$PGC" --sharedir)"
STAGE="$OUT/$NAME"
mkdir -p "$STAGE/lib" "$STAGE/extension"
install -m 0755 "$TREE$LIBDIR/kinde_rls.so" "$STAGE/lib/"
install -m 0644 "$TREE$SHAREDIR"/extension/kinde_rls* "$STAGE/extension/"
install -m 0755 scripts/package-install.sh "$STAGE/install.sh"
# The install script checks the server it installs into against these.
cat > "$STAGE/BUILD_INFO" <<EOF
name=kinde_rls
version=$VERSION
pg_major=$V
built_against=$("$PGC" --version)
arch=$ARCH
built_on_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
glibc_required=$(objdump -T "$STAGE/lib/kinde_rls.so" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
EOF
(cd "$STAGE" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)
tar -C "$OUT" -czf "$OUT/$NAME.tar.gz" "$NAME"
rm -rf "$STAGE"

# Smoke check: the tarball installs into a scratch root laid out like this server.
CHECK="$(mktemp -d)"
trap 'rm -rf "$CHECK"' EXIT
tar -C "$CHECK" -xzf "$OUT/$NAME.tar.gz"
DESTDIR="$CHECK/root" "$CHECK/$NAME/install.sh" --pg-config "$PGC" >/dev/null
for f in "$LIBDIR/kinde_rls.so" "$SHAREDIR/extension/kinde_rls.control" \
  "$SHAREDIR/extension/kinde_rls--$VERSION.sql"; do
  [ -f "$CHECK/root$f" ] || { echo "package: $NAME did not install $f" >&2; exit 1; }
done
echo "$OUT/$NAME.tar.gz" > "$OUT/pg$V/tarball"
echo "package: $OUT/$NAME.tar.gz ($(du -h "$OUT/$NAME.tar.gz" | cut -f1)), tree in $TREE"
