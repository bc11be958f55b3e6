#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is needed, build, then run the lab's
# smoke preset: two libvirt hosts on this machine, a real QEMU guest live-migrated between them
# while vm-migration-exporter watches it and serves /metrics. Prints where the results went.
#   PRESET=ci bash scripts/demo.sh     # the system-test set (about 3 minutes)
#   PRESET=paper bash scripts/demo.sh  # the full matrix
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/as-root.sh
. scripts/as-root.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh demo
# The demo profile (Cargo.toml) is unoptimised: on a fresh 2-core machine it builds in about 2.5
# minutes where a release build takes 6; PROFILE=release for the optimised binaries.
profile=${PROFILE:-demo}
echo "== building vm-migration-exporter and migration-lab (profile $profile)"
cargo build --profile "$profile" --locked -p vm-migration-exporter -p migration-lab || {
  echo "demo: cargo build failed (its errors are above): check the Rust toolchain (rustup update stable) and that install-deps.sh demo ran" >&2
  exit 2
}
exec "./target/$profile/migration-lab" run --preset "${PRESET:-smoke}" --out "${OUT:-lab-out}" \
  --exporter "./target/$profile/vm-migration-exporter"
