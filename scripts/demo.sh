#!/usr/bin/env bash
# Installs what is needed, builds the exporter and runs it against the local libvirt
# (starting libvirtd if it is not running; there is no systemd here). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh
echo "== building vm-migration-exporter (release)"
cargo build --release --locked -p vm-migration-exporter
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  echo "== starting virtlogd and libvirtd"
  virtlogd -d || true
  libvirtd -d
fi
echo "== vm-migration-exporter on http://127.0.0.1:9745/ (metrics at /metrics)"
exec ./target/release/vm-migration-exporter --libvirt.uri qemu:///system --web.listen-address 127.0.0.1:9745
