#!/usr/bin/env bash
# Runs the README's commands on a genuinely fresh Debian 12: a minbase root made with mmdebstrap
# (python3 without pip, curl, ca-certificates; no sudo), this checkout copied in (tracked files
# only, uncommitted changes included), rustup's toolchain and an empty CARGO_HOME (no crate cache,
# no cargo-deny), then chroot in a private mount + PID namespace (all mounts and processes go
# with it, whatever happens).
#   check-fresh.sh setup   bash scripts/test.sh setup (install-deps test, cargo fetch, cargo deny),
#                          then cargo build of the workspace's binaries
#   check-fresh.sh ci      bash scripts/test.sh setup only (what .ci/run runs)
#   check-fresh.sh demo    bash scripts/demo.sh end to end (libvirtd, netns, the TUN delay link)
#   check-fresh.sh user    ci and demo as the user dev with sudo (installed for this mode)
#   check-fresh.sh all     setup, demo and user, each in a root of its own
#   check-fresh.sh run CMD CMD (bash) in the checkout in a fresh root (to reproduce a failure)
# FRESH_AS=dev runs setup, ci or demo as that user (with sudo) in place of root.
# Environment: FRESH_REF (a commit to copy in place of the working tree), FRESH_KEEP=1 (keep the
# root), FRESH_DIR (where roots go, /var/tmp), FRESH_TIMEOUT (seconds per step, 2400).
# Debian packages are cached in /var/cache/vm-migration-exporter-fresh (crates are not: a crate
# cache would hide a missing `cargo fetch`). Needs root, mmdebstrap, unshare, git.
# The whole script is one compound command: bash reads it all before running it, so editing
# the file during a run (a long one) cannot change what that run does (hence the `exit` on
# the closing line). shellcheck takes the functions in it for unreachable code (SC2317).
# shellcheck disable=SC2317
{
set -Eeuo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
mode=${1:-setup}
case "$mode" in
  setup|ci|demo|user|all) ;;
  run) [ -n "${2:-}" ] || { echo "check-fresh: run needs a command: check-fresh.sh run 'CMD'" >&2; exit 2; } ;;
  *) echo "check-fresh: usage: check-fresh.sh setup|ci|demo|user|all|run 'CMD'" >&2; exit 2 ;;
esac
say() { echo "check-fresh: $*"; }
die() { echo "check-fresh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, chroot, namespaces): run it as root or with sudo"
if ! command -v mmdebstrap >/dev/null 2>&1; then
  say "installing mmdebstrap"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap; } \
    >/dev/null || die "apt-get install mmdebstrap failed: see apt (apt-get install mmdebstrap), then re-run"
fi
for t in mmdebstrap unshare chroot git flock timeout; do
  command -v "$t" >/dev/null 2>&1 || die "no $t: install it (bash scripts/install-deps.sh test)"
done
step_timeout=${FRESH_TIMEOUT:-2400}
cache=/var/cache/vm-migration-exporter-fresh/apt-archives
mkdir -p "$cache/partial"

# rustup's active toolchain on this machine, brought in read-only; the proxies are rustup itself.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
sysroot=$(rustc --print sysroot 2>/dev/null) || die "no rustc on this machine: install rustup's toolchain"
toolchain=$(basename "$sysroot")
rustup_bin=$(command -v rustup 2>/dev/null || echo "${CARGO_HOME:-$HOME/.cargo}/bin/rustup")
{ [ -x "$rustup_bin" ] && [ -d "$sysroot/lib/rustlib" ]; } ||
  die "the toolchain at $sysroot is not rustup's (no rustup binary): install Rust with rustup"

mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
  2>/dev/null | awk '($1 == "URIs:" || $1 == "deb") && $2 !~ /security/ && $2 ~ /debian\/?$/ {print $2; exit}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
[ "$security" != "$mirror" ] || security=http://deb.debian.org/debian-security

ref=${FRESH_REF:-}
if [ -z "$ref" ]; then
  ref=$(git stash create 2>/dev/null || true)
  ref=${ref:-HEAD}
fi
ref_name=$(git rev-parse --short "$ref") || die "FRESH_REF=$ref is no commit here"

roots=()
cleanup() {
  local r
  for r in "${roots[@]}"; do
    # The namespace took every mount and process along; a live mount here would mean
    # something escaped: then leave the root rather than delete through it.
    if grep -qF " $r/" /proc/self/mounts; then
      echo "check-fresh: $r still has mounts; not deleting it" >&2
    elif [ "${FRESH_KEEP:-0}" = 1 ]; then
      echo "check-fresh: kept $r"
    else
      rm -rf --one-file-system "$r"
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s; }
timings=()
# timed NAME CMD...: runs CMD, prints and records its time; a failure names the step.
timed() {
  local name=$1 t0 rc=0 n
  shift
  t0=$(now)
  say "== $name"
  # Each line of output with the seconds since the step began: where the time goes.
  "$@" 2>&1 | while IFS= read -r line; do
    printf -v n '%(%s)T' -1
    printf '[%4ss] %s\n' "$((n - t0))" "$line"
  done || rc=$?
  timings+=("$(printf '%-44s %5ss %s' "$name" "$(( $(now) - t0 ))" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
  if [ $rc != 0 ]; then
    say "step \"$name\" failed (exit $rc) after $(( $(now) - t0 ))s; the output above says why"
    report
    exit 1
  fi
}
report() {
  say "timings ($mode, $ref_name):"
  local l
  for l in "${timings[@]}"; do echo "  $l"; done
}

# make_root DIR USER: a fresh minbase root with the checkout and the toolchain in USER's home.
make_root() {
  local r=$1 user=$2 home=/root uid=0
  mmdebstrap --quiet --variant=minbase --dpkgopt=force-unsafe-io --include=python3,curl,ca-certificates \
    --skip=essential/unlink --setup-hook="mkdir -p \"\$1/var/cache/apt/archives/\"" \
    --setup-hook="find $cache -maxdepth 1 -name '*.deb' -exec cp -l -t \"\$1/var/cache/apt/archives/\" {} +" \
    --customize-hook="find \"\$1/var/cache/apt/archives\" -maxdepth 1 -name '*.deb' -exec cp -nl -t $cache/ {} +" \
    bookworm "$r" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main"
  # This machine's CAs: the registries are reached through them here.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/"
    chroot "$r" update-ca-certificates >/dev/null
  fi
  # pip's and npm's settings for those CAs (sudo drops the environment's).
  local f
  for f in /etc/pip.conf /etc/npmrc; do
    [ ! -f "$f" ] || cp "$f" "$r$f"
  done
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  # dpkg without fsync (as container images do): the root is thrown away anyway.
  echo force-unsafe-io > "$r/etc/dpkg/dpkg.cfg.d/check-fresh-unsafe-io"
  # The Debian packages fetched before, as hard links (each root keeps its own apt lock).
  find "$cache" -maxdepth 1 -name '*.deb' -exec cp -l -t "$r/var/cache/apt/archives/" {} +
  if [ "$user" != root ]; then
    uid=1000 home=/home/$user
    chroot "$r" useradd --create-home --uid "$uid" --shell /bin/bash "$user"
  fi
  # Only rustup's toolchain: proxies in an otherwise empty CARGO_HOME; the toolchain itself is
  # bind-mounted read-only at run time.
  mkdir -p "$r$home/.cargo/bin" "$r$home/.rustup/toolchains/$toolchain" "$r$home/src"
  cp "$rustup_bin" "$r$home/.cargo/bin/rustup"
  for p in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
    ln -s rustup "$r$home/.cargo/bin/$p"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "default"\nauto_self_update = "disable"\n' \
    "$toolchain" > "$r$home/.rustup/settings.toml"
  git -C "$src" archive "$ref" | tar -x -C "$r$home/src"
  chroot "$r" chown -R "$uid:$uid" "$home"
}

# in_root DIR USER COMMAND: runs COMMAND (bash) in DIR's home/src as USER, in a private mount and
# PID namespace; bounded by FRESH_TIMEOUT.
in_root() {
  local r=$1 user=$2 cmd=$3 home=/root spec=0:0 rc=0
  [ "$user" = root ] || { home=/home/$user; spec=1000:1000; }
  local env_vars=(HOME="$home" USER="$user" LOGNAME="$user" TERM=dumb LANG=C.UTF-8
    PATH="$home/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    CARGO_HOME="$home/.cargo" RUSTUP_HOME="$home/.rustup" RUSTUP_AUTO_INSTALL=0)
  # The CA settings of this machine's environment (they all name the system bundle).
  local v
  for v in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE; do
    [ -z "${!v:-}" ] || env_vars+=("$v=${!v}")
  done
  # shellcheck disable=SC2016
  timeout --kill-after=20 "$step_timeout" \
    unshare --mount --propagation private --pid --fork --kill-child=SIGKILL \
    bash -c '
      set -e
      r=$1 spec=$2 home=$3 sysroot=$4 toolchain=$5 cmd=$6; shift 6
      # / a mount point of its own inside: ip netns (ip -n) makes it rslave.
      mount --bind "$r" "$r"
      mount -t proc proc "$r/proc"
      mount --rbind /sys "$r/sys"
      mount --rbind /dev "$r/dev"
      mount -t tmpfs tmpfs "$r/run"
      mount -t tmpfs tmpfs "$r/tmp"
      tc=$r$home/.rustup/toolchains/$toolchain
      if [ -d "$tc" ]; then
        mount --bind "$sysroot" "$tc"
        mount -o remount,bind,ro "$tc"
      fi
      exec chroot --userspec="$spec" "$r" env -i "$@" bash -c "if [ -d ~/src ]; then cd ~/src; fi && $cmd"
    ' in_root "$r" "$spec" "$home" "$sysroot" "$toolchain" "$cmd" "${env_vars[@]}" || rc=$?
  # New packages go to the cache for the next root.
  find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -nl -t "$cache/" {} + || true
  return "$rc"
}

mkdir -p "${FRESH_DIR:-/var/tmp}"
r=""
# new_root: a new directory for a root in $r (not a command substitution: cleanup needs roots).
new_root() {
  r=$(mktemp -d "${FRESH_DIR:-/var/tmp}/vme-fresh.XXXXXX")
  roots+=("$r")
}

# The lab's veths, addresses and netns names are machine-wide: one lab at a time, as the other
# lab runs on this machine (flock /tmp/vm-migration-lab.lock).
# Not through timed: its pipe would run this in a subshell, and the lock would go with it.
lab_lock() {
  local t0
  t0=$(now)
  exec 9>>/tmp/vm-migration-lab.lock
  flock -w "$step_timeout" 9 || die "the lab lock /tmp/vm-migration-lab.lock stayed taken for ${step_timeout}s"
  timings+=("$(printf '%-44s %5ss %s' "wait for the lab lock" "$(( $(now) - t0 ))" ok)")
}
lab_unlock() { exec 9>&-; }

# fresh_root USER: a new root made for USER; a user other than root gets sudo (NOPASSWD), as a
# developer's machine would have it.
fresh_root() {
  local user=$1
  new_root
  say "fresh root $r ($user; checkout $ref_name; toolchain $toolchain; mirror $mirror)"
  timed "mmdebstrap minbase + checkout ($user)" make_root "$r" "$user"
  [ "$user" = root ] || timed "apt-get install sudo; $user may sudo" in_root "$r" root \
    "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends sudo >/dev/null && echo '$user ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/$user"
}
run_setup() { # USER LEAN
  local user=$1 lean=$2
  fresh_root "$user"
  timed "bash scripts/test.sh setup ($user)" in_root "$r" "$user" "bash scripts/test.sh setup"
  [ "$lean" = 1 ] || timed "cargo build --workspace --bins ($user)" \
    in_root "$r" "$user" "cargo build --locked --workspace --bins"
}
run_demo() { # USER
  local user=$1
  fresh_root "$user"
  lab_lock
  timed "bash scripts/demo.sh ($user)" in_root "$r" "$user" \
    "bash scripts/demo.sh && test -s lab-out/results.md && ls lab-out/plots"
  lab_unlock
}

as=${FRESH_AS:-root}
case "$mode" in
  setup) run_setup "$as" 0 ;;
  ci) run_setup "$as" 1 ;;
  demo) run_demo "$as" ;;
  user) run_setup dev 1; run_demo dev ;;
  all) run_setup root 0; run_demo root; run_setup dev 1; run_demo dev ;;
  run) fresh_root "$as"; timed "$2 ($as)" in_root "$r" "$as" "$2" ;;
esac
report
say "PASS: $mode on a fresh Debian 12 root ($ref_name)"
}; exit
