# Sourced by the README's commands: re-runs the calling script as root. As root (a minimal
# Debian install has no sudo) it does nothing; as a user it goes through sudo, keeping the
# user's Rust toolchain (sudo resets PATH and HOME, and rustup needs both homes).
# shellcheck shell=bash
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$0"): needs root (network namespaces, libvirtd, apt-get): run it as root, or install sudo" >&2
    exit 2
  fi
  exec sudo env "PATH=$HOME/.cargo/bin:$PATH" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
    "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" bash "$0" "$@"
fi
