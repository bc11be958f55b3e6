#!/usr/bin/env bash
# Checks the Grafana dashboards without a Grafana server:
#  1. the JSON is what dashboards/generate.py makes (edit the generator, not the JSON);
#  2. every panel query parses (promtool, with Grafana's variables filled in);
#  3. every metric a query names is one the exporter exports (names from its source);
#  4. each dashboard type-checks against @grafana/schema (npm, pinned in dashboards/check);
#  5. dashboards/check/lint.py: every query selected by the job and cluster variables, one unit
#     per axis fitting each query, panel ids unique and stable when panels are added;
#  6. dashboards/check/live.py: every query evaluates on a real Prometheus scraping the exporter
#     (libvirt's test driver), and the domain picker offers `name (uuid)`.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

cp dashboards/*.json "$tmp/"
python3 dashboards/generate.py
for f in dashboards/*.json; do
  cmp -s "$f" "$tmp/$(basename "$f")" || { echo "dashboards: $f is stale: run python3 dashboards/generate.py and commit"; exit 1; }
done

python3 - "$tmp/rules.yml" <<'PY'
import functools, glob, json, re, sys
exprs = []
for path in sorted(glob.glob("dashboards/*.json")):
    d = json.load(open(path))
    for v in d["templating"]["list"]:
        if isinstance(v.get("query"), dict):
            exprs.append((path, v["name"], v["query"]["query"]))
    for p in d["panels"]:
        for t in p.get("targets", []):
            exprs.append((path, p["title"], t["expr"]))
    for a in d["annotations"]["list"]:
        exprs.append((path, "annotation " + a["name"], a["expr"]))
    # Text variables are filled with their default (which is checked like any query).
    texts = {v["name"]: v["query"] for v in d["templating"]["list"] if v["type"] == "textbox"}
    exprs = [(pa, w, e if pa != path else functools.reduce(lambda x, kv: x.replace("$" + kv[0], kv[1]), texts.items(), e))
             for pa, w, e in exprs]
# Names the exporter exports: the metric-name literals in its source. Counters are registered
# without `_total` and histograms without their series suffixes (prometheus-client adds them).
src = " ".join(open(f).read() for f in glob.glob("exporter/src/**/*.rs", recursive=True))
known = set(re.findall(r'"(vm_migration_[a-z0-9_]+)"', src))
def exported(name):
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if suffix and not name.endswith(suffix):
            continue
        if name[: len(name) - len(suffix)] in known:
            return True
    return False
unknown, rules = [], []
for i, (path, where, e) in enumerate(exprs):
    if e.startswith("label_values("):
        m = re.match(r"label_values\((.*),\s*\w+\)$", e)
        e = m.group(1) if m else e
    elif e.startswith("query_result("):
        e = e[len("query_result("):-1]
    for name in set(re.findall(r"\b(vm_migration_[a-z0-9_]+)\b", e)):
        if not exported(name):
            unknown.append(f"{path}: {where}: {name} is not exported by vm-migration-exporter")
    filled = (e.replace("$__rate_interval", "1m").replace("$__range", "1h")
               .replace("$host", ".*").replace("$uuid", ".*").replace("$cluster", ".*")
               .replace("$job", ".*"))
    rules.append(f"      - record: dashboard_check_{i}\n        expr: {json.dumps(filled)}")
if unknown:
    print("\n".join(unknown)); sys.exit(1)
open(sys.argv[1], "w").write("groups:\n  - name: dashboards\n    rules:\n" + "\n".join(rules) + "\n")
print(f"dashboards: {len(exprs)} queries, every metric they name is exported")
PY
promtool check rules "$tmp/rules.yml" >/dev/null && echo "dashboards: every query parses (promtool)"

if [ ! -x dashboards/check/node_modules/.bin/tsc ]; then
  (cd dashboards/check && npm ci --no-audit --no-fund --silent)
fi
python3 dashboards/check/typecheck.py && echo "dashboards: each type-checks against @grafana/schema"
python3 dashboards/check/lint.py
cargo build -q --locked -p vm-migration-exporter --bin vm-migration-exporter
python3 dashboards/check/live.py target/debug/vm-migration-exporter
