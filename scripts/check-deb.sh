#!/usr/bin/env bash
# Builds the .deb with scripts/build-deb.sh (cargo-deb, with the unit, the defaults file, the
# maintainer scripts and the man page rendered by packaging/man), installs it on this machine,
# checks the unit (systemd-analyze verify prints nothing; security exposure), starts the installed
# binary the way the unit does (its user, ambient capabilities, umask, LimitNOFILE,
# EnvironmentFile) and scrapes it, checks each capability is the one its feature needs, then
# purges the package.
#
# The test package carries the debug binary (--profile dev; the test run has built it already):
# cargo-deb warns that the dev profile is not for releases. A release package:
#   bash scripts/build-deb.sh
# Needs root (dpkg -i). Machine-wide (the package, its user): one run at a time (flock).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
exec 9>/tmp/vm-migration-exporter-deb.lock
flock -w 1200 9 || { echo "check-deb: another check-deb.sh has held /tmp/vm-migration-exporter-deb.lock for 20 minutes: end it (see fuser /tmp/vm-migration-exporter-deb.lock) and run again" >&2; exit 1; }

pkg=vm-migration-exporter
user=vm-migration-exporter
unit=/lib/systemd/system/$pkg.service
port=${DEB_CHECK_PORT:-19745}
tmp=$(mktemp -d)
pids=()
# gone PID: it has exited (or is a zombie, to be reaped).
gone() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 0; [[ $s == Z* ]]; }
# group_gone PGID: no live process is left in the process group.
group_gone() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit f}'; }
# stop PID: SIGTERM to the process and its process group (a traced exporter that its tracer
# would leave behind goes with it), SIGKILL after 5 s, reaped; it returns within 7 s, even
# when something outlives SIGKILL (then it says so and does not wait for it).
stop() {
  local p=$1
  kill -TERM -- "-$p" "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do gone "$p" && group_gone "$p" && break; sleep 0.1; done
  kill -KILL -- "-$p" "$p" 2>/dev/null || true
  for _ in $(seq 1 20); do gone "$p" && group_gone "$p" && break; sleep 0.1; done
  if gone "$p"; then wait "$p" 2>/dev/null || true; else echo "check-deb: process $p outlived SIGKILL; not waiting for it" >&2; fi
  group_gone "$p" || echo "check-deb: process group $p outlived SIGKILL; not waiting for it" >&2
}
cleanup() {
  for p in "${pids[@]}"; do stop "$p"; done
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q installed; then
    dpkg --purge "$pkg" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "check-deb: $*" >&2; [ -f "$tmp/log" ] && tail -20 "$tmp/log" >&2; exit 1; }

deb=$(bash scripts/build-deb.sh --profile dev | tail -1) || fail "bash scripts/build-deb.sh --profile dev failed (above)"
dpkg-deb -c "$deb" | awk '{sub(/^\.?\//, "", $6); print $6}' | sort > "$tmp/contents"
for f in usr/bin/$pkg lib/systemd/system/$pkg.service etc/default/$pkg \
  usr/share/man/man1/$pkg.1.gz usr/share/doc/$pkg/copyright; do
  grep -qxF "$f" "$tmp/contents" || fail "$deb lacks $f"
done
dpkg-deb -f "$deb" Depends | grep -q libvirt0 || fail "$deb does not depend on libvirt0"
echo "check-deb: built $deb ($(du -h "$deb" | cut -f1)): binary, unit, defaults, man page"

# A package left by an interrupted run goes first, so postinst runs as on a fresh host.
dpkg --purge "$pkg" >/dev/null 2>&1 || true
dpkg -i "$deb" >"$tmp/dpkg" 2>&1 || { cat "$tmp/dpkg"; fail "dpkg -i failed"; }
getent passwd "$user" | grep -q ':/usr/sbin/nologin$' || fail "postinst made no system user $user with nologin"
[ "$(id -u "$user")" -lt 1000 ] || fail "$user is not a system user"
grep -q '^ARGS=""$' /etc/default/$pkg || fail "/etc/default/$pkg has no ARGS=\"\""
man -w $pkg >/dev/null || fail "man $pkg finds no page"
page=$(MANWIDTH=100 man $pkg 2>/dev/null) || fail "man $pkg failed"
grep -q -- '--probe.discovery' <<<"$page" || fail "the man page lacks --probe.discovery"
echo "check-deb: installed: user $user ($(id -u "$user")), /etc/default/$pkg, man $pkg"

# systemd-analyze verify must print nothing at all.
verify=$(systemd-analyze verify "$unit" 2>&1) || true
[ -z "$verify" ] || { echo "$verify"; fail "systemd-analyze verify $unit printed the above"; }
exposure=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.5) }' || fail "security exposure $exposure is above 2.5 (README says 2.2)"
echo "check-deb: systemd-analyze verify prints nothing; security exposure $exposure"

# Start it as the unit does: its user and group, ambient capabilities from the unit, bounding
# set, no new privileges, UMask, LimitNOFILE, the StateDirectory, ARGS from the defaults file.
caps=$(sed -n 's/^AmbientCapabilities=//p' "$unit")
[ "$caps" = "CAP_NET_RAW CAP_SYS_PTRACE CAP_DAC_READ_SEARCH" ] || fail "unexpected AmbientCapabilities=$caps"
capflags=$(for c in $caps; do printf '+%s,' "$(tr '[:upper:]' '[:lower:]' <<<"${c#CAP_}")"; done); capflags=${capflags%,}
nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
umask_=$(sed -n 's/^UMask=//p' "$unit")
state=/var/lib/$(sed -n 's/^StateDirectory=//p' "$unit")
mode=$(sed -n 's/^StateDirectoryMode=//p' "$unit")
# StateDirectory=: created, or its owner fixed recursively when it is not the service user's
# (a record file left by a root run would otherwise stop the service).
install -d -o "$user" -g "$user" -m "$mode" "$state"
chown -R "$user:$user" "$state"
as_unit() { # as_unit CAPS CMD...: run like the unit, with the given capability list (may be empty)
  local c=$1; shift
  local capargs=(--bounding-set=-all)
  [ -n "$c" ] && capargs=(--inh-caps="$c" --ambient-caps="$c" "--bounding-set=-all,$c")
  (umask "$umask_"; prlimit --nofile="$nofile" setpriv --reuid="$user" --regid="$user" --init-groups \
    "${capargs[@]}" --no-new-privs "$@")
}
(
  set -a
  # shellcheck disable=SC1090
  . /etc/default/$pkg
  set +a
  # Test settings through the environment, as a drop-in's Environment= would add them: libvirt's
  # in-process test driver (no libvirtd needed), a loopback port, ICMP to a loopback peer.
  export VM_MIGRATION_EXPORTER_LIBVIRT_URI=test:///default
  export VM_MIGRATION_EXPORTER_WEB_LISTEN_ADDRESS=127.0.0.1:$port
  export VM_MIGRATION_EXPORTER_PROBE_PEER=lo=127.0.0.1
  # Its own process group (setsid: this subshell is no group leader, so no fork), which
  # cleanup ends whole.
  # shellcheck disable=SC2086
  exec setsid strace -f -qq -o "$tmp/strace" prlimit --nofile="$nofile" setpriv --reuid="$user" --regid="$user" --init-groups \
    --inh-caps="$capflags" --ambient-caps="$capflags" --bounding-set=-all,"$capflags" --no-new-privs \
    sh -c "umask $umask_; exec /usr/bin/$pkg $ARGS"
) >"$tmp/log" 2>&1 &
pids+=($!)
for _ in $(seq 1 20); do [ "$(ps -o pgid= -p "${pids[0]}" | tr -d ' ')" = "${pids[0]}" ] && break; sleep 0.1; done
[ "$(ps -o pgid= -p "${pids[0]}" | tr -d ' ')" = "${pids[0]}" ] || fail "strace (pid ${pids[0]}) did not get its own process group"
# scrape [curl args]: /metrics, bounded; read into a variable, not piped into grep -q (which
# exits at its match, failing curl on SIGPIPE under pipefail).
scrape() { curl -fsS --max-time 5 "$@" "http://127.0.0.1:$port/metrics"; }
for _ in $(seq 1 100); do
  curl -fs --max-time 2 "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
scrape >"$tmp/metrics" || fail "no /metrics on 127.0.0.1:$port"
grep -q '^vm_migration_libvirt_up 1' "$tmp/metrics" || fail "vm_migration_libvirt_up is not 1"
grep -q '^vm_migration_exporter_build_info{' "$tmp/metrics" || fail "no build_info"
# strace (for the system-call check below) runs prlimit -> setpriv -> sh -> the exporter, one pid.
pid=""
for _ in $(seq 1 20); do pid=$(pgrep -P "${pids[0]}" || true); [ -n "$pid" ] && break; sleep 0.1; done
[ "$(readlink "/proc/$pid/exe")" = "/usr/bin/$pkg" ] || fail "process $pid is not /usr/bin/$pkg"
status=/proc/$pid/status
[ "$(awk '/^Uid:/ {print $2}' "$status")" = "$(id -u "$user")" ] || fail "not running as $user"
[ "$(awk '/^NoNewPrivs:/ {print $2}' "$status")" = 1 ] || fail "NoNewPrivs not set"
eff=$(capsh --decode="$(awk '/^CapEff:/ {print $2}' "$status")" | sed 's/.*=//')
[ "$eff" = "cap_dac_read_search,cap_net_raw,cap_sys_ptrace" ] || fail "effective capabilities $eff"
[ "$(awk '/Max open files/ {print $4}' "/proc/$pid/limits")" = "$nofile" ] || fail "LimitNOFILE not applied"
up=""
for _ in $(seq 1 50); do
  m=$(scrape) && grep -q '^vm_migration_peer_up{peer="lo",probe="icmp".*} 1' <<<"$m" && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || fail "the ICMP probe of 127.0.0.1 did not answer under CAP_NET_RAW"
echo "check-deb: running as $user (uid $(id -u "$user")), capabilities $eff, NoNewPrivs, nofile $nofile: /metrics answers, libvirt_up 1, ICMP probe up"
scrape -H 'Accept: application/openmetrics-text' >/dev/null || fail "no OpenMetrics /metrics"
curl -fsS --max-time 5 "http://127.0.0.1:$port/" >/dev/null || fail "no landing page"
curl -fsS --max-time 5 "http://127.0.0.1:$port/api/v1/migrations" >/dev/null || fail "no /api/v1/migrations"
# systemctl reload runs the unit's ExecReload= with $MAINPID: the exporter reloads, not exits.
reload=$(sed -n 's/^ExecReload=//p' "$unit")
# shellcheck disable=SC2016
[ "$reload" = '/bin/kill -HUP $MAINPID' ] || fail "unexpected ExecReload=$reload"
# The time of the last successful load: the start, then the reload (the success gauge alone is
# 1 before the reload too).
loaded() { sed -n 's/^vm_migration_exporter_config_last_reload_success_timestamp_seconds //p' <<<"$1"; }
m=$(scrape) || fail "no /metrics before ExecReload"
before=$(loaded "$m")
[ -n "$before" ] || fail "no vm_migration_exporter_config_last_reload_success_timestamp_seconds"
# shellcheck disable=SC2034 # the eval'd ExecReload= reads it
MAINPID=$pid; eval "$reload"
for _ in $(seq 1 50); do grep -q 'message="configuration reloaded"' "$tmp/log" && break; sleep 0.1; done
grep -q 'message="configuration reloaded"' "$tmp/log" || fail "ExecReload did not reload: $(tail -3 "$tmp/log")"
# The exporter logs the reload once its metrics say so: one scrape after the line must show it.
m=$(scrape) || fail "no /metrics after ExecReload"
grep -qE '^vm_migration_exporter_config_last_reload_successful 1(\.0)?$' <<<"$m" \
  || fail "vm_migration_exporter_config_last_reload_successful is not 1 after ExecReload: $(grep reload_successful <<<"$m")"
awk -v a="$(loaded "$m")" -v b="$before" 'BEGIN { exit !(a > b) }' \
  || fail "the last successful load time did not advance with ExecReload ($before, then $(loaded "$m"))"
echo "check-deb: ExecReload= reloads the running exporter (SIGHUP), which keeps serving"
# The exporter stops on SIGTERM, then strace, which wrote the trace, ends by itself; whatever
# is left after 5 s goes with the process group.
kill "$pid"
for _ in $(seq 1 50); do gone "$pid" && gone "${pids[0]}" && break; sleep 0.1; done
gone "$pid" || echo "check-deb: note: the exporter did not stop within 5 s of SIGTERM; killing it"
stop "${pids[0]}"; pids=()

# The unit's SystemCallFilter= (@system-service, then ~@privileged) must allow every system call
# the exporter made (from its exec on; libvirt, HTTP, ICMP, records), or systemd would fail it
# with EPERM where this machine, which has no systemd, cannot show it.
expand() {
  systemd-analyze syscall-filter "$1" | sed -E 's/^[[:space:]]+//; /^#/d; /^$/d' | tail -n +2 \
    | while read -r x; do case "$x" in @*) expand "$x" ;; *) echo "$x" ;; esac; done
}
allowed=$(mktemp -p "$tmp"); denied=$(mktemp -p "$tmp"); used=$(mktemp -p "$tmp")
while read -r line; do
  for f in $line; do
    case "$line" in
      "~"*) expand "${f#\~}" >>"$denied" ;;
      *) expand "$f" >>"$allowed" ;;
    esac
  done
done < <(sed -n 's/^SystemCallFilter=//p' "$unit")
sed -n '\|execve("/usr/bin/'"$pkg"'"|,$p' "$tmp/strace" \
  | sed -nE 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p; s/^[0-9]+ +<\.\.\. ([a-z_0-9]+) resumed>.*/\1/p' | sort -u >"$used"
[ -s "$used" ] || fail "strace recorded no system calls of the exporter"
blocked=$( { comm -23 "$used" <(sort -u "$allowed"); comm -12 "$used" <(sort -u "$denied"); } | sort -u | paste -sd' ' -)
[ -z "$blocked" ] || fail "the unit's SystemCallFilter= would block: $blocked"
echo "check-deb: SystemCallFilter= allows all $(wc -l <"$used") system calls the exporter made"

# Each capability is what its feature needs. ping_group_range does not admit the user here, so
# ICMP needs CAP_NET_RAW; QEMU's /proc/<pid>/fd (QEMU runs as libvirt-qemu) needs
# CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH.
qemu_user=$(id -u libvirt-qemu >/dev/null 2>&1 && echo libvirt-qemu || echo nobody)
setpriv --reuid="$qemu_user" --regid="$qemu_user" --clear-groups sleep 60 &
other=$!; pids+=("$other")
# Until setpriv has become the user and exec'd sleep.
for _ in $(seq 1 50); do
  [ "$(readlink "/proc/$other/exe")" = "$(readlink -f "$(command -v sleep)")" ] \
    && [ "$(awk '/^Uid:/ {print $2}' "/proc/$other/status")" = "$(id -u "$qemu_user")" ] && break
  sleep 0.1
done
[ "$(awk '/^Uid:/ {print $2}' "/proc/$other/status")" = "$(id -u "$qemu_user")" ] || fail "setpriv did not start sleep as $qemu_user"
as_unit "$capflags" ls "/proc/$other/fd" >/dev/null 2>&1 || fail "with the unit's capabilities $user cannot read /proc/<pid>/fd of a $qemu_user process"
if as_unit "+net_raw" ls "/proc/$other/fd" >/dev/null 2>&1; then
  echo "check-deb: note: $user reads another user's /proc/<pid>/fd without CAP_SYS_PTRACE (kernel.yama or a lax /proc)"
else
  echo "check-deb: /proc/<pid>/fd of a $qemu_user process: readable with CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH, not without"
fi
stop "$other"; pids=()

dpkg --purge "$pkg" >/dev/null 2>&1 || fail "dpkg --purge failed"
for f in /usr/bin/$pkg "$state" /etc/default/$pkg; do [ ! -e "$f" ] || fail "purge left $f behind"; done
echo "check-deb: purged: binary, defaults file and $state removed (the system user stays, as Debian does)"
