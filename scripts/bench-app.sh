#!/usr/bin/env bash
# Cost of application probing: vm-migration-exporter probing N HTTP services every 20 ms (the
# rate it uses during a migration) against blackbox_exporter, the reference, made to probe the
# same services at the same rate (one request in flight per service) in the same run. Prints CPU
# time per 1000 probes, probes per second and resident memory of each, and the ratio.
#
#   bash scripts/bench-app.sh [SECONDS]        (default 30; N=100 targets, INTERVAL_MS=20)
#
# Needs curl and prometheus-blackbox-exporter (installed when missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-30}
N=${N:-100}
INTERVAL_MS=${INTERVAL_MS:-20}
case "$SECS" in ''|*[!0-9]*) echo "bench-app.sh: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;; esac
if ! command -v prometheus-blackbox-exporter >/dev/null; then
  apt-get install -y -q prometheus-blackbox-exporter >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q prometheus-blackbox-exporter >/dev/null; }
fi
echo "bench-app: building (release)" >&2
cargo build -q --release -p vm-migration-exporter --bin vm-migration-exporter --example app_bench_peer
T=${CARGO_TARGET_DIR:-target}/release
BIN=$T/vm-migration-exporter
PEER=$T/examples/app_bench_peer
WORK=$(mktemp -d)
pids=()
cleanup() {
  exec 3>&- 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

TCK=$(getconf CLK_TCK)
cpu() { awk -v t="$TCK" '{printf "%.3f", ($14 + $15) / t}' "/proc/$1/stat"; }
calc() { awk "BEGIN {printf \"%.6f\", $1}"; }
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
wait_for() { # wait_for SECONDS CMD...: poll until CMD succeeds
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# The services, serving until their stdin (a FIFO this script holds open) closes.
mkfifo "$WORK/hold"
"$PEER" serve "$N" < "$WORK/hold" > "$WORK/ports" &
pids+=($!)
exec 3> "$WORK/hold"
ports_ready() { [ "$(wc -l < "$WORK/ports")" -ge "$N" ]; }
wait_for 10 ports_ready || { echo "bench-app: the services did not start" >&2; exit 1; }
mapfile -t PORTS < "$WORK/ports"

# 1. vm-migration-exporter: N targets of libvirt's test driver's domain, probed every 20 ms.
{
  echo "app:"
  echo "  interval: ${INTERVAL_MS}ms"
  echo "  migration_interval: ${INTERVAL_MS}ms"
  echo "  targets:"
  for i in "${!PORTS[@]}"; do
    echo "    - {domain: test, name: t$i, http: {url: \"http://127.0.0.1:${PORTS[$i]}/\"}}"
  done
} > "$WORK/app.yml"
EXP=127.0.0.1:19821
"$BIN" --libvirt.uri test:///default --web.listen-address "$EXP" --config.file "$WORK/app.yml" \
  --storage.path "$WORK/records" --log.level warn 2>"$WORK/exporter.log" &
EPID=$!; pids+=("$EPID")
probes_total() { curl -sf "http://$EXP/metrics" | awk '/^vm_migration_app_probes_total\{/ {s += $NF} END {printf "%d", s}'; }
up_count() { curl -sf "http://$EXP/metrics" | grep -cE '^vm_migration_app_up\{.*\} 1(\.0)?$' || true; }
all_up() { [ "$(up_count)" -ge "$N" ]; }
wait_for 30 all_up || { echo "bench-app: the exporter did not probe all $N targets" >&2; cat "$WORK/exporter.log" >&2; exit 1; }
echo "bench-app: vm-migration-exporter probing $N targets every ${INTERVAL_MS} ms for ${SECS} s" >&2
p0=$(probes_total); c0=$(cpu "$EPID")
sleep "$SECS"
p1=$(probes_total); c1=$(cpu "$EPID")
E_PROBES=$((p1 - p0)); E_CPU=$(calc "$c1 - $c0"); E_RSS=$(rss_mib "$EPID")
kill "$EPID"; wait "$EPID" 2>/dev/null || true

# 2. blackbox_exporter, driven at the same rate (the driver's own CPU is not counted).
cat > "$WORK/blackbox.yml" <<'YML'
modules:
  http_2xx:
    prober: http
    timeout: 2s
YML
BB=127.0.0.1:19822
prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" --web.listen-address "$BB" --log.level=warn 2>"$WORK/blackbox.log" &
BPID=$!; pids+=("$BPID")
wait_for 30 curl -sf -o /dev/null "http://$BB/metrics" || { echo "bench-app: blackbox_exporter did not start" >&2; exit 1; }
echo "bench-app: blackbox_exporter probing the same $N targets every ${INTERVAL_MS} ms for ${SECS} s" >&2
c0=$(cpu "$BPID")
read -r B_OK B_FAILED < <("$PEER" drive "$BB" "$SECS" "$INTERVAL_MS" "${PORTS[@]}")
c1=$(cpu "$BPID")
B_PROBES=$((B_OK + B_FAILED)); B_CPU=$(calc "$c1 - $c0"); B_RSS=$(rss_mib "$BPID")

per_k() { calc "1000 * $1 / $2"; }
E_PK=$(per_k "$E_CPU" "$E_PROBES"); B_PK=$(per_k "$B_CPU" "$B_PROBES")
echo
echo "| prober | probes | probes/s | CPU s | CPU ms per 1000 probes | ratio to reference | RSS MiB |"
echo "|---|---|---|---|---|---|---|"
printf '| blackbox_exporter (reference; %d failed) | %d | %.0f | %.2f | %.1f | 1.00 | %s |\n' \
  "$B_FAILED" "$B_PROBES" "$(calc "$B_PROBES / $SECS")" "$B_CPU" "$(calc "$B_PK * 1000")" "$B_RSS"
printf '| vm-migration-exporter | %d | %.0f | %.2f | %.1f | %.2f | %s |\n' \
  "$E_PROBES" "$(calc "$E_PROBES / $SECS")" "$E_CPU" "$(calc "$E_PK * 1000")" "$(calc "$E_PK / $B_PK")" "$E_RSS"
