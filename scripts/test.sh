#!/usr/bin/env bash
# Installs what the tests need, then runs every check and test: formatting, clippy, unit,
# integration (real binary, real libvirtd) and system tests (real QEMU migrations).
#   bash scripts/test.sh setup   only the set-up: the test set of packages and tools, every crate
#                                of Cargo.lock, cargo deny (scripts/check-fresh.sh runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/as-root.sh
. scripts/as-root.sh
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-deps.sh test
echo "== cargo fetch (every crate of Cargo.lock, all platforms': cargo deny reads them offline)"
cargo fetch --locked
echo "== cargo deny (licences, duplicate versions, sources)"
# Advisories need RustSec's database from GitHub; set CARGO_DENY_ADVISORIES=1 where it can be
# fetched (it is not reachable from the machines this suite was built on).
if [ "${CARGO_DENY_ADVISORIES:-0}" = 1 ]; then
  cargo deny --locked check advisories licenses bans sources
else
  cargo deny --locked --offline check licenses bans sources
fi
# `test.sh setup`: only the set-up (packages, tools, crates) and the checks that need no build;
# scripts/check-fresh.sh runs it on a fresh root.
if [ "${1:-}" = setup ]; then
  echo "== test.sh setup: done"
  exit 0
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== alert rules (promtool check + unit tests, runbooks)"
bash scripts/check-alerts.sh
echo "== dashboards (in sync, PromQL parses, metrics exported, @grafana/schema types)"
bash scripts/check-dashboards.sh
echo "== cargo build (the packaging checks use the binary)"
cargo build --workspace --locked --bins
echo "== helm chart (lint, render, kubernetes-validate, prometheus-operator models, promtool, bad values)"
bash scripts/check-helm.sh
echo "== .deb (build, dpkg -i, systemd-analyze verify, run as the unit would, scrape, purge)"
bash scripts/check-deb.sh
echo "== container image (mmdebstrap base, podman build, run; a lab migration watched from the container)"
bash scripts/check-container.sh
echo "== cargo test"
cargo test --workspace --locked
