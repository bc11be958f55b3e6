#!/usr/bin/env bash
# Builds the container image (packaging/Containerfile) without a registry and runs it:
#  1. a Debian 12 base made with mmdebstrap from this machine's Debian mirror, with the packages
#     in packaging/container/base-packages.txt (libvirt0), imported into podman; cached under a
#     tag keyed on the Containerfile, the package list and the mirror, so later runs reuse it;
#  2. the image: that base + the exporter binary (target/debug, stripped; a release image takes
#     target/release), built with --pull=never;
#  3. a smoke run: read-only root, all capabilities dropped, libvirt's test driver, /metrics;
#  4. unless CONTAINER_LAB=0: the system test tests/tests/container_lab.rs, a live migration in
#     the lab watched by the image run as the Helm chart's DaemonSet container (its security
#     context, host namespaces, hostPath mounts and args, translated to podman by
#     packaging/container/podman-exporter), with the lab's real libvirtd socket directory mounted
#     read-only. The lab is machine-wide: run this under flock /tmp/vm-migration-lab.lock, as
#     the other lab tests.
# Needs root (podman, mmdebstrap); tools from scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CONTAINERS_CONF="$root/packaging/container/containers.conf"
image=localhost/vm-migration-exporter:check
tmp=$(mktemp -d)
smoke=""
cleanup() {
  [ -n "$smoke" ] && podman rm -f -t 1 "$smoke" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT

# The Debian mirror this machine uses (as install-deps.sh finds it).
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
  2>/dev/null | awk '($1 == "URIs:" || $1 == "deb") && $2 !~ /security/ && $2 ~ /debian\/?$/ {print $2; exit}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
packages=$(grep -v '^#' packaging/container/base-packages.txt | grep . | paste -sd, -)
key=$( { cat packaging/Containerfile packaging/container/base-packages.txt; echo "$mirror"; } | sha256sum | cut -c1-16)
base=localhost/vm-migration-exporter-base:$key
if podman image exists "$base"; then
  echo "check-container: base image $base cached"
else
  echo "check-container: making $base with mmdebstrap (bookworm, minbase, $packages) from $mirror"
  mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tmp/base.tar" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$base" >/dev/null
  rm -f "$tmp/base.tar"
  # Older bases (another Containerfile or package list) go.
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/vm-migration-exporter-base \
    | { grep -vxF "$base" || true; } | while read -r old; do podman rmi "$old" >/dev/null || true; done
fi

cargo build -q --locked --bin vm-migration-exporter
mkdir -p "$tmp/ctx"
strip -o "$tmp/ctx/vm-migration-exporter" target/debug/vm-migration-exporter
podman build --quiet --pull=never --build-arg BASE="$base" -f packaging/Containerfile -t "$image" "$tmp/ctx" >/dev/null
echo "check-container: built $image ($(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')) on $base"
timeout 120 podman run --rm --read-only --cap-drop all "$image" --version | grep -q '^vm-migration-exporter ' \
  || { echo "check-container: the image's binary does not run"; exit 1; }

port=${CONTAINER_CHECK_PORT:-19746}
smoke=vme-smoke-$$
podman run -d --name "$smoke" --label vm-migration-exporter-check=1 --network host --read-only --cap-drop all \
  "$image" "--web.listen-address=127.0.0.1:$port" --libvirt.uri=test:///default --storage.path= >/dev/null
ok=""
for _ in $(seq 1 100); do
  # Read whole, then matched: curl piped into grep -q fails on SIGPIPE under pipefail.
  if m=$(curl -fs --max-time 2 "http://127.0.0.1:$port/metrics") && grep -q '^vm_migration_libvirt_up 1' <<<"$m"; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { timeout 30 podman logs "$smoke" 2>&1 | tail -20; echo "check-container: no vm_migration_libvirt_up 1 from the container"; exit 1; }
podman rm -f -t 1 "$smoke" >/dev/null 2>&1; smoke=""
echo "check-container: the container (read-only root, no capabilities) serves /metrics with libvirt_up 1"

if [ "${CONTAINER_LAB:-1}" != 0 ]; then
  # The Helm chart's DaemonSet container (defaults, this image), which
  # packaging/container/podman-exporter runs with podman in place of the binary.
  render=$tmp/chart.yaml
  helm/check/bin/helm template vmx helm/vm-migration-exporter --set image.registry=localhost \
    --set image.repository=vm-migration-exporter --set image.tag=check >"$render"
  echo "check-container: live migration in the lab watched by the chart's DaemonSet container (podman)"
  VM_MIGRATION_EXPORTER_CHART_RENDER=$render \
    cargo test -q --locked -p system-tests --features container-lab --test container_lab -- --nocapture
fi
