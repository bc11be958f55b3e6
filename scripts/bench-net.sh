#!/usr/bin/env bash
# Network-path accuracy and cost, measured side by side in one run and printed against the
# reference tools:
#   RTT:  ping vs vm-migration-exporter vs blackbox_exporter vs smokeping_prober on loopback,
#         across the lab's veth into its destination namespace, and over the lab's packet-level
#         delay link at 10 ms and 80 ms RTT (`migration-lab path`);
#   loss: a responder in a namespace of its own that ignores every echo whose sequence number is
#         a multiple of 4 (25 % for every tool, whatever its probing rate);
#   NIC:  our counters vs node_exporter's for the same quiet device, and the time of a
#         netdev-only scrape of each.
# Needs root, python3, curl, iproute2 and prometheus-blackbox-exporter,
# prometheus-smokeping-prober, prometheus-node-exporter (apt). Cleans up after itself.
# Usage: scripts/bench-net.sh [samples per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-60}
need=()
for pkg in prometheus-blackbox-exporter prometheus-smokeping-prober prometheus-node-exporter iputils-ping curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q "${need[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
fi
cargo build -q --release -p vm-migration-exporter -p migration-lab
BIN=${CARGO_TARGET_DIR:-target}/release/vm-migration-exporter
LAB=${CARGO_TARGET_DIR:-target}/release/migration-lab
NS=vmnetb-loss-$$
H=vhb$$; P=vpb$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  "$LAB" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() { curl -sf --retry 50 --retry-delay 0 --retry-connrefused --retry-max-time 10 -o /dev/null "$1"; }

# The lossy peer 10.233.0.2: the namespace's kernel answers no echo; a raw-socket responder
# answers every echo except those with seq % 4 == 0.
ip netns add "$NS"
ip link add "$H" type veth peer name "$P"
ip link set "$P" netns "$NS"
ip addr add 10.233.0.1/24 dev "$H"; ip link set "$H" up
ip -n "$NS" addr add 10.233.0.2/24 dev "$P"; ip -n "$NS" link set "$P" up
ip netns exec "$NS" sysctl -q -w net.ipv4.icmp_echo_ignore_all=1
ip netns exec "$NS" python3 - <<'EOF' &
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
while True:
    pkt, (src, _) = s.recvfrom(2048)
    icmp = pkt[(pkt[0] & 15) * 4:]
    if icmp[0] != 8 or struct.unpack("!H", icmp[6:8])[0] % 4 == 0:
        continue
    r = bytearray(b"\0\0\0\0" + icmp[4:]); struct.pack_into("!H", r, 2, csum(bytes(r)))
    s.sendto(bytes(r), (src, 0))
EOF
PIDS+=($!)

cat > "$WORK/blackbox.yml" <<'EOF'
modules:
  icmp:
    prober: icmp
    timeout: 1s
    icmp:
      preferred_ip_protocol: ip4
EOF

# One round: the lab path at RTT $1, every tool probing targets $2... at 200 ms for $N samples.
round() {
  local rtt=$1; shift
  local tag=rtt$rtt
  coproc PATHUP { "$LAB" path --rtt-ms "$rtt"; }
  read -r ready <&"${PATHUP[0]}"
  [ "$ready" = ready ] || { echo "migration-lab path did not come up" >&2; exit 1; }
  local peers="" hosts=""
  for t in "$@"; do peers+="${peers:+,}p$t=$t"; hosts+="${hosts:+, }$t"; done
  printf 'targets:\n- hosts: [%s]\n  interval: 200ms\n  network: ip4\n  protocol: icmp\n' "$hosts" >"$WORK/sp-$tag.yml"
  "$BIN" --web.listen-address 127.0.0.1:19801 --libvirt.uri test:///default --storage.path "" \
    --log.level debug --probe.peer "$peers" --probe.interval 200ms --probe.discovery=false \
    2>"$WORK/ours-$tag.log" & local ours=$!
  prometheus-blackbox-exporter --config.file "$WORK/blackbox.yml" --web.listen-address 127.0.0.1:19802 \
    2>"$WORK/bb.log" & local bb=$!
  prometheus-smokeping-prober --config.file "$WORK/sp-$tag.yml" --privileged \
    --web.listen-address 127.0.0.1:19803 2>"$WORK/sp.log" & local sp=$!
  wait_http http://127.0.0.1:19801/metrics; wait_http http://127.0.0.1:19802/metrics
  wait_http http://127.0.0.1:19803/metrics
  local jobs=()
  for t in "$@"; do
    ping -n -c "$N" -i 0.2 -W 1 "$t" >"$WORK/ping-$tag-$t.txt" 2>&1 & jobs+=($!)
    (for _ in $(seq "$N"); do
       curl -s "http://127.0.0.1:19802/probe?module=icmp&target=$t" \
         | grep -E '^probe_(icmp_duration_seconds\{phase="rtt"\}|success) ' | tr '\n' ' '; echo
       sleep 0.2
     done >"$WORK/bb-$tag-$t.txt") & jobs+=($!)
  done
  for j in "${jobs[@]}"; do wait "$j" || true; done
  curl -s http://127.0.0.1:19801/metrics >"$WORK/ours-$tag.prom"
  curl -s http://127.0.0.1:19803/metrics >"$WORK/sp-$tag.prom"
  kill "$ours" "$bb" "$sp"; wait "$ours" "$bb" "$sp" 2>/dev/null || true
  # Closing its stdin tears the path down.
  local w=${PATHUP[1]}
  exec {w}>&-
  wait "$PATHUP_PID" 2>/dev/null || true
}

echo "bench-net: $N samples per target and tool, 200 ms apart" >&2
round 10 127.0.0.1 10.77.0.2 10.78.0.2 10.233.0.2
round 80 10.78.0.2

# NIC counters: a netdev-only instance of ours and node_exporter, the veth of the loss
# namespace quiet (its responder only answers echoes, and none are sent now).
kill "${PIDS[0]}" 2>/dev/null || true
prometheus-node-exporter --collector.disable-defaults --collector.netdev \
  --web.listen-address 127.0.0.1:19804 2>"$WORK/ne.log" & PIDS+=($!)
"$BIN" --web.listen-address 127.0.0.1:19805 --libvirt.uri test:///default --storage.path "" \
  --probe.discovery=false 2>"$WORK/ours2.log" & PIDS+=($!)
wait_http http://127.0.0.1:19804/metrics; wait_http http://127.0.0.1:19805/metrics
curl -s http://127.0.0.1:19805/metrics >"$WORK/ours2.prom"
curl -s http://127.0.0.1:19804/metrics >"$WORK/ne.prom"
time_scrape() { python3 - "$1" <<'EOF'
import sys, time, urllib.request
u = sys.argv[1]; t = []
for _ in range(300):
    s = time.perf_counter(); urllib.request.urlopen(u).read(); t.append(time.perf_counter() - s)
t.sort(); print("%.3f" % (t[len(t)//2] * 1000))
EOF
}
# Alternate, so both see the same machine load.
OURS_MS=$(time_scrape http://127.0.0.1:19805/metrics); NE_MS=$(time_scrape http://127.0.0.1:19804/metrics)
OURS_MS2=$(time_scrape http://127.0.0.1:19805/metrics); NE_MS2=$(time_scrape http://127.0.0.1:19804/metrics)

python3 - "$WORK" "$H" "$OURS_MS" "$NE_MS" "$OURS_MS2" "$NE_MS2" <<'EOF'
import re, statistics, sys
work, host_dev = sys.argv[1:3]
ours_ms, ne_ms, ours_ms2, ne_ms2 = map(float, sys.argv[3:7])
def metric(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
med = lambda v: statistics.median(v) if v else float("nan")
mean = lambda v: statistics.mean(v) if v else float("nan")
us = lambda v: "%.1f µs" % (v * 1e6)
d = lambda a, b: "%+.1f µs" % ((a - b) * 1e6)
cases = [("rtt10", "127.0.0.1", "loopback"), ("rtt10", "10.77.0.2", "veth into the lab namespace"),
         ("rtt10", "10.78.0.2", "delay link, 10 ms RTT"), ("rtt80", "10.78.0.2", "delay link, 80 ms RTT"),
         ("rtt10", "10.233.0.2", "lossy responder (25 %)")]
print("RTT, medians of per-probe RTTs (smokeping exports only a histogram: its mean); Δ against ping in the same run")
print()
print("| path | ping median | ours median (Δ) | blackbox median (Δ) | ping mean | ours mean (Δ) | smokeping mean (Δ) |")
print("|---|---|---|---|---|---|---|")
loss_rows = []
for tag, ip, label in cases:
    txt = open(f"{work}/ping-{tag}-{ip}.txt").read()
    p = [float(x) / 1000 for x in re.findall(r"time=([\d.]+) ms", txt)]
    sent = int(re.search(r"(\d+) packets transmitted", txt).group(1))
    bbt = open(f"{work}/bb-{tag}-{ip}.txt").read()
    bb = [float(m) for m in re.findall(r'phase="rtt"\} (\S+)', bbt)]
    bb_lines = [l for l in bbt.splitlines() if l.strip()]
    bb_ok = sum(1 for l in bb_lines if "probe_success 1" in l)
    o = [float(m.group(1)) for m in re.finditer(rf'message=probe peer=p{re.escape(ip)} probe=icmp rtt_seconds=(\S+)', open(f"{work}/ours-{tag}.log").read())]
    prom = open(f"{work}/ours-{tag}.prom").read(); sp = open(f"{work}/sp-{tag}.prom").read()
    res = {r: metric(prom, "vm_migration_peer_probes_total", peer="p" + ip, probe="icmp", result=r) or 0 for r in ("success", "timeout", "error")}
    tot = sum(res.values())
    sp_sent = metric(sp, "smokeping_requests_total", host=ip) or 0
    sp_cnt = metric(sp, "smokeping_response_duration_seconds_count", host=ip) or 0
    sp_sum = metric(sp, "smokeping_response_duration_seconds_sum", host=ip) or 0
    sp_mean = sp_sum / sp_cnt if sp_cnt else float("nan")
    print(f"| {label} | {us(med(p))} | {us(med(o))} ({d(med(o), med(p))}) | {us(med(bb))} ({d(med(bb), med(p))}) "
          f"| {us(mean(p))} | {us(mean(o))} ({d(mean(o), mean(p))}) | {us(sp_mean)} ({d(sp_mean, mean(p))}) |")
    loss_rows.append((label, 1 - len(p) / sent, 1 - res["success"] / tot if tot else float("nan"),
                      1 - sp_cnt / sp_sent if sp_sent else float("nan"), 1 - bb_ok / len(bb_lines) if bb_lines else float("nan"), sent, tot))
print()
print("Loss ratio (probes without an answer ÷ probes sent)")
print()
print("| path | ping | ours | smokeping | blackbox | probes ping / ours |")
print("|---|---|---|---|---|---|")
for label, a, b, c, e, n1, n2 in loss_rows:
    print(f"| {label} | {a:.3f} | {b:.3f} | {c:.3f} | {e:.3f} | {n1} / {int(n2)} |")
print()
ours2 = open(f"{work}/ours2.prom").read(); ne = open(f"{work}/ne.prom").read()
print(f"NIC counters of the quiet veth {host_dev}, same scrape window")
print()
print("| counter | ours | node_exporter | equal |")
print("|---|---|---|---|")
for c in ("receive_bytes", "receive_packets", "receive_drop", "receive_errs", "transmit_bytes", "transmit_packets", "transmit_drop", "transmit_errs"):
    oname = "vm_migration_network_" + c.replace("_drop", "_drops").replace("_errs", "_errors") + "_total"
    a = metric(ours2, oname, device=host_dev); b = metric(ne, f"node_network_{c}_total", device=host_dev)
    print(f"| {c} | {a} | {b} | {'yes' if a is not None and a == b else 'NO'} |")
print()
print(f"netdev-only scrape, median of 300 (two alternating passes): ours {ours_ms:.3f} / {ours_ms2:.3f} ms, "
      f"node_exporter {ne_ms:.3f} / {ne_ms2:.3f} ms; ratio ours/node_exporter {ours_ms/ne_ms:.2f} / {ours_ms2/ne_ms2:.2f}")
EOF
