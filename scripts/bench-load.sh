#!/usr/bin/env bash
# Load and soak of /metrics (docs/benchmarks.md), with a reference measured in the same run:
# node_exporter (its default collectors) under the same scrape load.
#   load: 10,000 scrapes at concurrency 64, exporter with 1,000 domains and 50 live migration
#         jobs from a synthetic job source: errors, p50/p99, RSS before and after, both targets.
#   soak: scripts/bench-load.sh --soak 30m (any humantime duration): migrations replayed
#         (finishing, records written, domains coming and going) under a steady scrape load;
#         RSS slope over the run and over its second half.
# Other arguments go to the bench (--scrapes N, --concurrency C). Needs prometheus-node-exporter
# (apt; installed when missing). Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

dpkg -s prometheus-node-exporter >/dev/null 2>&1 || {
  apt-get install -y -q prometheus-node-exporter >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q prometheus-node-exporter >/dev/null; }
}
cargo bench -q -p vm-migration-exporter --bench load --no-run
REF_ADDR=127.0.0.1:${VME_BENCH_REF_PORT:-19109}
# No request cap: its default (40) answers the rest 503 at once; ours (128) does not bind at 64.
prometheus-node-exporter --web.listen-address="$REF_ADDR" --web.max-requests=0 --log.level=warn &
REF=$!
trap 'kill "$REF" 2>/dev/null || true; wait "$REF" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -fs "http://$REF_ADDR/metrics" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "reference: node_exporter $(prometheus-node-exporter --version 2>&1 | head -1 | awk '{print $3}'), default collectors, http://$REF_ADDR/metrics"
cargo bench -q -p vm-migration-exporter --bench load -- \
  --reference "http://$REF_ADDR/metrics" --reference-pid "$REF" "$@"
