#!/usr/bin/env bash
# Checks the alert rules:
#  1. alerts/vm-migration.rules.yml is what alerts/generate.py makes of the .in file;
#  2. every alert has a severity, summary and description, a promtool unit test, and no grouping
#     by labels that change during a migration;
#  3. every exporter series in every expression carries the selector, and every runbook_url is
#     the absolute runbook base + <Alert>.md with that runbook in docs/runbooks/ (check_rules.py),
#     for the committed defaults and for another selector and base (the generator's parameters);
#  4. promtool check rules and the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
rules=alerts/vm-migration.rules.yml
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

python3 alerts/generate.py --out "$tmp/now.yml"
cmp -s "$tmp/now.yml" "$rules" \
  || { echo "alerts: $rules is stale: run python3 alerts/generate.py (and bash scripts/sync-chart-files.sh) and commit"; exit 1; }

python3 - "$rules" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
# Split into alert blocks; a light parse keeps this free of a YAML dependency.
blocks = re.split(r"\n      - alert: ", text)[1:]
problems = []
for b in blocks:
    name = b.split("\n", 1)[0].strip()
    for key in ("severity:", "summary:", "description:", "runbook_url:"):
        if key not in b:
            problems.append(f"{name}: no {key[:-1]}")
    # Labels that can change during one migration would restart `for:` and split one alert in
    # two: an alert's grouping must not keep them.
    expr = b.split("labels:", 1)[0]
    for by in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        kept = {l.strip() for l in by.split(",")} & {"state", "detail", "phase", "origin", "result"}
        if kept:
            problems.append(f"{name}: groups by {', '.join(sorted(kept))}, which can change during a migration")
    tests = open("alerts/tests/vm-migration.test.yml").read()
    if f"alertname: {name}" not in tests:
        problems.append(f"{name}: no promtool unit test")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"alerts: {len(blocks)} alerts, each with labels, annotations and unit tests")
PY

selector=$(sed -n 's/^# selector: //p' "$rules")
base=$(sed -n 's/^# runbook_base: //p' "$rules")
python3 alerts/check_rules.py "$rules" "$selector" "$base"
# The parameters reach every rule: another selector and base, checked the same way.
python3 alerts/generate.py --selector 'cluster="eu-1",job=~"vmx|vm-migration-exporter"' \
  --runbook-base https://runbooks.example.org/vm-migration/ --out "$tmp/param.yml"
python3 alerts/check_rules.py "$tmp/param.yml" 'cluster="eu-1",job=~"vmx|vm-migration-exporter"' \
  https://runbooks.example.org/vm-migration/
promtool check rules "$tmp/param.yml" >/dev/null
# ... and the checker would notice a series without it.
sed 's/vm_migration_libvirt_up{cluster="eu-1",job=~"vmx|vm-migration-exporter"}/vm_migration_libvirt_up/' \
  "$tmp/param.yml" >"$tmp/broken.yml"
if python3 alerts/check_rules.py "$tmp/broken.yml" 'cluster="eu-1",job=~"vmx|vm-migration-exporter"' \
  https://runbooks.example.org/vm-migration/ >/dev/null; then
  echo "alerts: check_rules.py missed a series without the selector"; exit 1
fi
echo "alerts: selector ($selector) on every exporter series, absolute runbook_url ($base<Alert>.md); parameters checked with another selector and base"

promtool check rules "$rules"
promtool test rules alerts/tests/*.test.yml
