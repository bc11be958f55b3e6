#!/usr/bin/env python3
"""Splits one `helm template` output (argv[1]) for the validators, into out/ (argv[2]):
  <name>.k8s.yaml       built-in kinds, for kubernetes-validate --strict
  <name>.crds.json      ServiceMonitor/PodMonitor/PrometheusRule, for validate-crds.mjs
  <name>.gen.ts         the same typed as @kubernetes-models interfaces, for tsc (unknown fields)
  <name>.rules.yml      the PrometheusRule's groups, for promtool check rules
Prints the kinds it found."""
import json
import os
import sys

import yaml

CRDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
src, out = sys.argv[1], sys.argv[2]
name = os.path.basename(src).removesuffix(".yaml")
docs = [d for d in yaml.safe_load_all(open(src)) if d]
k8s = [d for d in docs if d["kind"] not in CRDS]
crds = [d for d in docs if d["kind"] in CRDS]
with open(os.path.join(out, f"{name}.k8s.yaml"), "w") as f:
    yaml.safe_dump_all(k8s, f, sort_keys=False)
with open(os.path.join(out, f"{name}.crds.json"), "w") as f:
    json.dump(crds, f, indent=2)
ts = ["import type { I%s } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/%s';" % (k, k)
      for k in sorted(CRDS)]
ts.append("export const docs = [")
for d in crds:
    ts.append(f"  {json.dumps(d, indent=2)} satisfies I{d['kind']},")
ts.append("];")
ts_name = name.replace("-", "_")
with open(os.path.join(out, f"{ts_name}.gen.ts"), "w") as f:
    f.write("\n".join(ts) + "\n")
rules = [d for d in crds if d["kind"] == "PrometheusRule"]
if rules:
    with open(os.path.join(out, f"{name}.rules.yml"), "w") as f:
        yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f, sort_keys=False)
print(f"{name}: " + ", ".join(sorted({d['kind'] for d in docs})))
