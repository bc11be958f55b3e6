#!/usr/bin/env bash
# The Helm chart packages alerts/vm-migration.rules.yml and dashboards/*.json; Helm reads only
# files inside the chart, so they are copied to helm/vm-migration-exporter/files/. alerts/ and
# dashboards/ stay the one source: edit those, then run this script.
#   bash scripts/sync-chart-files.sh          copy
#   bash scripts/sync-chart-files.sh --check  fail (listing the files) when the copy drifted
set -euo pipefail
cd "$(dirname "$0")/.."
files=helm/vm-migration-exporter/files
mode=${1:-copy}

sources=(alerts/vm-migration.rules.yml dashboards/*.json)
target() {
  case "$1" in
    alerts/*) echo "$files/$(basename "$1")" ;;
    dashboards/*) echo "$files/dashboards/$(basename "$1")" ;;
  esac
}

drift=()
expected=()
for src in "${sources[@]}"; do
  dst=$(target "$src")
  expected+=("$dst")
  if [ "$mode" = --check ]; then
    cmp -s "$src" "$dst" || drift+=("$dst differs from $src")
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
  fi
done
# Files left in the chart after their source went away.
while IFS= read -r f; do
  keep=no
  for e in "${expected[@]}"; do [ "$f" = "$e" ] && keep=yes; done
  if [ "$keep" = no ]; then
    if [ "$mode" = --check ]; then drift+=("$f has no source"); else rm -f "$f"; fi
  fi
done < <(find "$files" -type f | sort)

if [ "${#drift[@]}" -gt 0 ]; then
  printf 'chart files: %s\n' "${drift[@]}"
  echo "chart files: run bash scripts/sync-chart-files.sh and commit" >&2
  exit 1
fi
[ "$mode" = --check ] && echo "chart files: the chart's copies of alerts/ and dashboards/ are current"
exit 0
