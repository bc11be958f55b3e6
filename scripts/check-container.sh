#!/usr/bin/env bash
# Builds the container image from this checkout as a user would (podman build -f
# packaging/Containerfile .), without a registry, checks its labels and size, and runs it:
#  1. the builder (the Containerfile's BUILDER argument): Debian 12 made with mmdebstrap from this
#     machine's Debian mirror, with the packages in packaging/container/builder-packages.txt and
#     this machine's Rust toolchain (cargo, rustc and their libraries from `rustc --print sysroot`)
#     in /usr/local/rust, imported into podman; cached under a tag keyed on the package list, the
#     mirror and the toolchain's version, so later runs reuse it;
#  2. the image: podman build --pull=never from the checkout (the build context is the repository
#     root, .dockerignore keeps target/ out); cargo fetches crates from crates.io into a buildah
#     cache mount, target/ is another, so a rebuild compiles only what changed. Its OCI labels
#     must be the ones passed (version: the workspace's) and its size within
#     CONTAINER_SIZE_BUDGET_MB (60); the size is printed next to the budget;
#  3. a smoke run: read-only root, all capabilities dropped, libvirt's test driver, /metrics;
#  4. unless CONTAINER_LAB=0: the system test tests/tests/container_lab.rs, a live migration in
#     the lab watched by the image run as the Helm chart's DaemonSet container (its security
#     context, host namespaces, hostPath mounts and args, translated to podman by
#     packaging/container/podman-exporter), with the lab's real libvirtd socket directory mounted
#     read-only. The lab is machine-wide: run this under flock /tmp/vm-migration-lab.lock, as
#     the other lab tests.
# CONTAINER_PROFILE=dev builds the binary with cargo's dev profile (faster; larger image, so
# the size budget is then not checked). Needs root (podman, mmdebstrap); tools from
# scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CONTAINERS_CONF="$root/packaging/container/containers.conf"
image=localhost/vm-migration-exporter:check
profile=${CONTAINER_PROFILE:-release}
budget_mb=${CONTAINER_SIZE_BUDGET_MB:-60}
tmp=$(mktemp -d)
smoke=""
cleanup() {
  [ -n "$smoke" ] && podman rm -f -t 1 "$smoke" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "check-container: $*" >&2; exit 1; }
case "$profile" in release | dev) ;; *) echo "check-container: CONTAINER_PROFILE=$profile is not release or dev" >&2; exit 2 ;; esac

# The Debian mirror this machine uses (as install-deps.sh finds it).
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
  2>/dev/null | awk '($1 == "URIs:" || $1 == "deb") && $2 !~ /security/ && $2 ~ /debian\/?$/ {print $2; exit}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
packages=$(grep -v '^#' packaging/container/builder-packages.txt | grep . | paste -sd, -)
sysroot=$(rustc --print sysroot) || fail "rustc not found: install Rust with rustup (https://rustup.rs)"
toolchain=$(rustc -V)
key=$( { cat packaging/container/builder-packages.txt; echo "$mirror"; echo "$toolchain"; } | sha256sum | cut -c1-16)
builder=localhost/vm-migration-exporter-builder:$key
if podman image exists "$builder"; then
  echo "check-container: builder $builder ($toolchain) cached"
else
  echo "check-container: making builder $builder with mmdebstrap (bookworm, minbase, $packages) from $mirror, $toolchain copied in"
  # cargo and rustc find their libraries and the standard library relative to their own path.
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --customize-hook="mkdir -p \"\$1/usr/local/rust/bin\" && cp -a '$sysroot/bin/cargo' '$sysroot/bin/rustc' \"\$1/usr/local/rust/bin/\" && cp -a '$sysroot/lib' \"\$1/usr/local/rust/\"" \
    bookworm "$tmp/builder.tar" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    || fail "mmdebstrap could not make the builder from $mirror: check the mirror is reachable (apt-get update)"
  podman import --quiet --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'CMD ["/bin/bash"]' "$tmp/builder.tar" "$builder" >/dev/null \
    || fail "podman import of the builder failed"
  rm -f "$tmp/builder.tar"
  # Older builders (another package list, mirror or toolchain) go.
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/vm-migration-exporter-builder \
    | { grep -vxF "$builder" || true; } | while read -r old; do podman rmi "$old" >/dev/null 2>&1 || true; done
fi

# The image, from the checkout. The previous image of this tag goes once the new one has it.
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=$(git remote get-url origin 2>/dev/null || echo "file://$root")
# cargo in the builder reaches crates.io with this machine's CA bundle (which has any CA that a
# TLS-inspecting proxy here needs), mounted read-only over the builder's own.
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
ca_mount=()
[ -f "$ca" ] && ca_mount=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
echo "check-container: podman build -f packaging/Containerfile . (BUILDER=$builder, PROFILE=$profile)"
t0=$(date +%s)
podman build --quiet --pull=never --layers=false --network=host "${ca_mount[@]}" --build-arg BUILDER="$builder" \
  --build-arg PROFILE="$profile" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
  --build-arg SOURCE="$source_url" -f packaging/Containerfile -t "$image" . >"$tmp/build.log" 2>&1 \
  || { tail -30 "$tmp/build.log" >&2; fail "podman build -f packaging/Containerfile . failed (the end of its log is above)"; }
build_s=$(( $(date +%s) - t0 ))
new_id=$(podman image inspect --format '{{.Id}}' "$image")
[ -n "$old_id" ] && [ "$old_id" != "$new_id" ] && { podman rmi "$old_id" >/dev/null 2>&1 || true; }

for pair in "version=$version" "revision=$revision" "created=$created" "source=$source_url"; do
  want=${pair#*=}
  have=$(podman image inspect --format "{{index .Labels \"org.opencontainers.image.${pair%%=*}\"}}" "$image")
  [ "$have" = "$want" ] || fail "label org.opencontainers.image.${pair%%=*} is '$have', not '$want'"
done
size=$(podman image inspect --format '{{.Size}}' "$image")
size_mb=$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')
echo "check-container: built $image in ${build_s} s: labels version $version, revision ${revision:0:12}, created $created, source $source_url"
echo "check-container: image size ${size_mb} MB (budget ${budget_mb} MB, profile $profile)"
if [ "$profile" = release ]; then
  awk -v s="$size" -v b="$budget_mb" 'BEGIN { exit !(s <= b * 1e6) }' \
    || fail "the image is ${size_mb} MB, over the ${budget_mb} MB budget: see what the runtime stage of packaging/Containerfile copies"
fi
timeout 120 podman run --rm --read-only --cap-drop all "$image" --version | grep -q '^vm-migration-exporter ' \
  || fail "the image's binary does not run: podman run --rm $image --version"

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
  [ -x helm/check/bin/helm ] || fail "helm/check/bin/helm is missing: run bash scripts/install-deps.sh"
  helm/check/bin/helm template vmx helm/vm-migration-exporter --set image.registry=localhost \
    --set image.repository=vm-migration-exporter --set image.tag=check >"$render"
  echo "check-container: live migration in the lab watched by the chart's DaemonSet container (podman)"
  VM_MIGRATION_EXPORTER_CHART_RENDER=$render \
    cargo test -q --locked -p system-tests --features container-lab --test container_lab -- --nocapture
fi
