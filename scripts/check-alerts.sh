#!/usr/bin/env bash
# Checks the alert rules: promtool lints them and runs their unit tests; every alert has a
# severity, summary, description and a runbook_url that points at an existing runbook.
set -euo pipefail
cd "$(dirname "$0")/.."
rules=alerts/vm-migration.rules.yml
python3 - "$rules" <<'PY'
import re, sys, os
text = open(sys.argv[1]).read()
# Split into alert blocks; a light parse keeps this free of a YAML dependency.
blocks = re.split(r"\n      - alert: ", text)[1:]
problems = []
for b in blocks:
    name = b.split("\n", 1)[0].strip()
    for key in ("severity:", "summary:", "description:", "runbook_url:"):
        if key not in b:
            problems.append(f"{name}: no {key[:-1]}")
    m = re.search(r"runbook_url: (\S+)", b)
    if m and m.group(1) != f"docs/runbooks/{name}.md":
        problems.append(f"{name}: runbook_url {m.group(1)} should be docs/runbooks/{name}.md")
    if not os.path.isfile(f"docs/runbooks/{name}.md"):
        problems.append(f"{name}: docs/runbooks/{name}.md is missing")
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
print(f"alerts: {len(blocks)} alerts, each with labels, annotations, a runbook and unit tests")
PY
promtool check rules "$rules"
promtool test rules alerts/tests/*.test.yml
