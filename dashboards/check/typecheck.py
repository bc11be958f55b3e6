#!/usr/bin/env python3
"""Writes dashboards.gen.ts, which states every dashboard `satisfies Dashboard` from
@grafana/schema, then runs tsc on it. Exit status is tsc's."""
import glob
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Grafana's types declare these as TypeScript string enums, which a JSON string literal cannot
# satisfy; the literal is swapped for the enum member, and a runtime check below proves the
# member's value is that same string.
ENUMS = {'"mode": "absolute"': '"mode": ThresholdsMode.Absolute',
         '"mode": "thresholds"': '"mode": FieldColorModeId.Thresholds'}
PROMETHEUS_ANNOTATION_KEYS = ("expr", "step", "titleFormat", "textFormat", "tagKeys", "useValueForTime")
out = ["import type { Dashboard } from '@grafana/schema';",
       "import { ThresholdsMode, FieldColorModeId } from '@grafana/schema';",
       "const sameString: ['absolute', 'thresholds'] = [ThresholdsMode.Absolute, FieldColorModeId.Thresholds];",
       "export { sameString };", ""]
for i, path in enumerate(sorted(glob.glob(os.path.join(HERE, "..", "*.json")))):
    with open(path) as f:
        d = json.load(f)
    # The Prometheus data source keeps its annotation query in keys @grafana/schema does not
    # model (checked instead by check-dashboards.sh: promtool parses `expr`).
    for a in d.get("annotations", {}).get("list", []):
        for k in PROMETHEUS_ANNOTATION_KEYS:
            a.pop(k, None)
    out.append(f"// {os.path.basename(path)}")
    body = json.dumps(d, indent=2)
    for literal, member in ENUMS.items():
        body = body.replace(literal, member)
    out.append(f"export const d{i} = {body} satisfies Dashboard;")
    out.append("")
with open(os.path.join(HERE, "dashboards.gen.ts"), "w") as f:
    f.write("\n".join(out))
tsc = os.path.join(HERE, "node_modules", ".bin", "tsc")
sys.exit(subprocess.call([tsc, "-p", os.path.join(HERE, "tsconfig.json")]))
