#!/usr/bin/env python3
"""Each shipped deployment route, from its monitor to the alert rules, on a real Prometheus:

    python3 helm/check/routes.py EXPORTER_BINARY HELM_BINARY

For every route: the scrape config it implies (a ServiceMonitor/PodMonitor turned into the
scrape config prometheus-operator generates for it, with a static target standing in for
Kubernetes service discovery and carrying the `__meta_kubernetes_*` labels of the rendered
pod/Service; or the plain scrape config shipped for the .deb and the container), the rules that
route ships, a real exporter and Prometheus 2.42 scraping it every second with those rules
loaded. Then, through the HTTP API:
  1. `up{SEL}` and `vm_migration_libvirt_up{SEL}` (SEL: the selector of the route's own
     VMMigrationExporterDown expression) each give the one exporter target;
  2. no VMMigrationExporterDown while it is scraped;
  3. the exporter stopped: VMMigrationExporterDown goes pending for that target (`up == 0`).
A control route (the chart's PodMonitor with podMonitor.job="", i.e. the operator's default job)
must fail 1 and raise VMMigrationExporterDown through `absent(up)` while the exporter runs:
the check can tell a route the rules miss. Every wait is bounded; processes are killed on exit.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "vm-migration-exporter")
RULES = os.path.join(ROOT, "alerts", "vm-migration.rules.yml")
NODE = "hypervisor-1"
WAIT = 45.0


def fail(msg):
    print(f"check-routes: {msg}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sanitize(name):
    """A Kubernetes label name as Prometheus' Kubernetes SD spells it in `__meta_*` labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel(r):
    """A prometheus-operator RelabelConfig (camelCase) as a Prometheus relabel_config."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label", "separator": "separator",
            "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
    out = {}
    for k, v in r.items():
        if k not in keys:
            fail(f"relabeling field {k} is not modelled here")
        out[keys[k]] = v.lower() if k == "action" else v
    return out


def keep_selector(kind, match_labels):
    """The operator's keep rules for a label selector's matchLabels."""
    return [{"action": "keep",
             "source_labels": [f"__meta_kubernetes_{kind}_label_{sanitize(k)}",
                               f"__meta_kubernetes_{kind}_labelpresent_{sanitize(k)}"],
             "regex": f"({v});true"} for k, v in sorted(match_labels.items())]


def meta_labels(kind, labels):
    out = {}
    for k, v in labels.items():
        out[f"__meta_kubernetes_{kind}_label_{sanitize(k)}"] = str(v)
        out[f"__meta_kubernetes_{kind}_labelpresent_{sanitize(k)}"] = "true"
    return out


def container_with_port(pod_spec, port):
    for c in pod_spec["containers"]:
        for p in c.get("ports", []):
            if p.get("name") == port:
                return c, p
    fail(f"no container of the pod has a port named {port}")


def scrape_config(monitor, pod, service, address):
    """The scrape config prometheus-operator generates for the monitor's first endpoint, the
    target being `address` with the discovery labels the pod (and Service) would give it."""
    kind = monitor["kind"]
    ns, name = monitor["metadata"]["namespace"], monitor["metadata"]["name"]
    spec = monitor["spec"]
    pod_ns = pod["metadata"].get("namespace", ns)
    if pod_ns not in spec.get("namespaceSelector", {}).get("matchNames", [pod_ns]):
        fail(f"{kind}/{name} does not look in namespace {pod_ns}")
    pod_labels = pod["spec"]["template"]["metadata"]["labels"] if pod["kind"] == "DaemonSet" \
        else pod["metadata"]["labels"]
    pod_spec = pod["spec"]["template"]["spec"] if pod["kind"] == "DaemonSet" else pod["spec"]
    pod_name = f"{pod['metadata']['name']}-x7k2p"
    target = {"__meta_kubernetes_namespace": pod_ns, "__meta_kubernetes_pod_name": pod_name,
              "__meta_kubernetes_pod_node_name": NODE, "__meta_kubernetes_pod_phase": "Running",
              **meta_labels("pod", pod_labels)}
    if kind == "ServiceMonitor":
        ep = spec["endpoints"][0]
        svc_port = next((p for p in service["spec"]["ports"] if p.get("name") == ep["port"]), None)
        if svc_port is None:
            fail(f"Service {service['metadata']['name']} has no port named {ep['port']}")
        c, _ = container_with_port(pod_spec, svc_port["targetPort"])
        if any(service["spec"]["selector"].get(k) != v for k, v in pod_labels.items()
               if k in service["spec"]["selector"]) or \
                not set(service["spec"]["selector"]) <= set(pod_labels):
            fail(f"Service {service['metadata']['name']} does not select the pod")
        target.update({"__meta_kubernetes_service_name": service["metadata"]["name"],
                       "__meta_kubernetes_endpoint_port_name": ep["port"],
                       "__meta_kubernetes_endpoint_address_target_kind": "Pod",
                       "__meta_kubernetes_endpoint_address_target_name": pod_name,
                       "__meta_kubernetes_pod_container_name": c["name"],
                       **meta_labels("service", service["metadata"]["labels"])})
        rel = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        rel += keep_selector("service", spec["selector"]["matchLabels"])
        rel += [{"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                 "regex": ep["port"]},
                {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                                   "__meta_kubernetes_endpoint_address_target_name"],
                 "separator": ";", "regex": "Node;(.*)", "replacement": "${1}", "target_label": "node"},
                {"source_labels": ["__meta_kubernetes_endpoint_address_target_kind",
                                   "__meta_kubernetes_endpoint_address_target_name"],
                 "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}", "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)",
                 "action": "drop"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
                 "replacement": "${1}"}]
        if spec.get("jobLabel"):
            rel.append({"source_labels": [f"__meta_kubernetes_service_label_{sanitize(spec['jobLabel'])}"],
                        "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
        job_name = f"serviceMonitor/{ns}/{name}/0"
    else:
        ep = spec["podMetricsEndpoints"][0]
        c, _ = container_with_port(pod_spec, ep["port"])
        target.update({"__meta_kubernetes_pod_container_name": c["name"],
                       "__meta_kubernetes_pod_container_port_name": ep["port"]})
        rel = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        rel += keep_selector("pod", spec["selector"]["matchLabels"])
        rel += [{"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "regex": ep["port"]},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)",
                 "action": "drop"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": f"{ns}/{name}"}]
        if spec.get("jobLabel"):
            rel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(spec['jobLabel'])}"],
                        "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
        job_name = f"podMonitor/{ns}/{name}/0"
    rel.append({"target_label": "endpoint", "replacement": ep["port"]})
    rel += [relabel(r) for r in ep.get("relabelings", [])]
    rel += [{"source_labels": ["__address__"], "target_label": "__tmp_hash", "modulus": 1,
             "action": "hashmod"},
            {"source_labels": ["__tmp_hash"], "regex": "0", "action": "keep"}]
    if ep.get("scheme", "http") != "http":
        fail(f"{kind}/{name}: scheme {ep['scheme']} is not modelled here")
    return {"job_name": job_name, "honor_labels": bool(ep.get("honorLabels", False)),
            "metrics_path": ep.get("path", "/metrics"), "scheme": "http",
            # The check scrapes every second (the monitors ask for 15 s).
            "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [address], "labels": target}],
            "relabel_configs": rel,
            "metric_relabel_configs": [relabel(r) for r in ep.get("metricRelabelings", [])]}


def helm_docs(helm, *sets):
    args = [helm, "template", "vmx", CHART, "--namespace", "monitoring"]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    if len(found) != 1:
        fail(f"expected one {kind}, found {len(found)}")
    return found[0]


def chart_route(helm, monitor_kind, *sets):
    key = "serviceMonitor" if monitor_kind == "ServiceMonitor" else "podMonitor"
    docs = helm_docs(helm, f"{key}.enabled=true", "prometheusRule.enabled=true", *sets)
    monitor, ds = one(docs, monitor_kind), one(docs, "DaemonSet")
    service = one(docs, "Service") if monitor_kind == "ServiceMonitor" else None
    ds["metadata"]["namespace"] = "monitoring"
    rules = {"groups": one(docs, "PrometheusRule")["spec"]["groups"]}
    return lambda address: ([scrape_config(monitor, ds, service, address)], rules)


def openstack_helm_route(address):
    values = yaml.safe_load(open(os.path.join(ROOT, "packaging", "openstack-helm", "libvirt-values.yaml")))
    monitor = yaml.safe_load(open(os.path.join(ROOT, "packaging", "openstack-helm", "podmonitor.yaml")))
    # openstack-helm's libvirt pod (labels of its helm-toolkit) with the values' extra container.
    pod = {"kind": "Pod",
           "metadata": {"name": "libvirt-libvirt-default", "namespace": "openstack",
                        "labels": {"application": "libvirt", "component": "libvirt",
                                   "release_group": "libvirt", "app.kubernetes.io/name": "libvirt",
                                   "app.kubernetes.io/component": "libvirt",
                                   "app.kubernetes.io/instance": "libvirt"}},
           "spec": {"containers": [{"name": "libvirt", "ports": []}] + values["libvirt"]["extraContainers"]}}
    return [scrape_config(monitor, pod, None, address)], yaml.safe_load(open(RULES))


def plain_route(address):
    cfg = yaml.safe_load(open(os.path.join(ROOT, "packaging", "prometheus", "vm-migration-exporter.yml")))
    jobs = cfg["scrape_configs"]
    for j in jobs:
        j["scrape_interval"] = "1s"
        j["scrape_timeout"] = "1s"
        j["static_configs"] = [{"targets": [address]}]
    return jobs, yaml.safe_load(open(RULES))


def get(prom, path, **params):
    url = f"http://{prom}{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)["data"]
    except urllib.error.HTTPError as e:
        fail(f"{url}: {e.code} {e.read()[:300]!r}")


def query(prom, expr):
    return get(prom, "/api/v1/query", query=expr)["result"]


def poll(f):
    deadline = time.time() + WAIT
    while True:
        try:
            v = f()
            if v:
                return v
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            return None
        time.sleep(0.5)


def exporter_down_selector(rules):
    for g in rules["groups"]:
        for r in g["rules"]:
            if r.get("alert") == "VMMigrationExporterDown":
                m = re.search(r"\bup(\{[^}]*\})?", r["expr"])
                if "absent(" not in r["expr"]:
                    fail("VMMigrationExporterDown does not fire on absent(up)")
                return m.group(1) or ""
    fail("the route's rules have no VMMigrationExporterDown")


def run(name, route, binary, tmp, control=False):
    exp, prom = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    jobs, rules = route(exp)
    d = os.path.join(tmp, re.sub(r"\W", "-", name))
    os.makedirs(d)
    yaml.safe_dump(rules, open(os.path.join(d, "rules.yml"), "w"), sort_keys=False)
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": [os.path.join(d, "rules.yml")], "scrape_configs": jobs}
    yaml.safe_dump(cfg, open(os.path.join(d, "prometheus.yml"), "w"), sort_keys=False)
    check = subprocess.run(["promtool", "check", "config", os.path.join(d, "prometheus.yml")],
                           capture_output=True, text=True)
    if check.returncode != 0:
        fail(f"{name}: promtool check config: {check.stdout[-500:]}{check.stderr[-500:]}")
    sel = exporter_down_selector(rules)
    log = open(os.path.join(d, "log"), "w")
    exporter = subprocess.Popen([binary, "--libvirt.uri", "test:///default", "--web.listen-address", exp,
                                 "--storage.path=", "--probe.discovery=false"],
                                stdout=log, stderr=log, start_new_session=True)
    prometheus = subprocess.Popen(["prometheus", f"--config.file={d}/prometheus.yml",
                                   f"--storage.tsdb.path={d}/data", f"--web.listen-address={prom}"],
                                  stdout=log, stderr=log, start_new_session=True)
    procs = [exporter, prometheus]
    try:
        if not poll(lambda: get(prom, "/api/v1/status/buildinfo")):
            fail(f"{name}: Prometheus did not answer within {WAIT:.0f} s (log: {d}/log)")
        # Until the target's first scrape is in (or, for the control, was scraped at all).
        if not poll(lambda: query(prom, f'up{{instance="{exp}"}} == 1')):
            fail(f"{name}: Prometheus did not scrape the exporter within {WAIT:.0f} s (log: {d}/log)")
        selected = query(prom, f"up{sel}")
        libvirt = query(prom, f"vm_migration_libvirt_up{sel}")
        job = query(prom, f'up{{instance="{exp}"}}')[0]["metric"].get("job")
        if control:
            if selected or libvirt:
                fail(f"{name}: the control route (job {job}) is selected by {sel}: the check cannot tell")
            if not poll(lambda: query(
                    prom, 'ALERTS{alertname="VMMigrationExporterDown",alertstate="pending"}')):
                fail(f"{name}: VMMigrationExporterDown did not go pending while no target matches {sel}")
            print(f"check-routes: {name}: job {job} is not selected by {sel}; "
                  "VMMigrationExporterDown goes pending through absent(up)")
            return
        if len(selected) != 1 or selected[0]["metric"].get("instance") != exp or len(libvirt) != 1:
            fail(f"{name}: the rules' selector {sel} does not select the scraped exporter (job {job}): "
                 f"up{sel} -> {selected}, vm_migration_libvirt_up{sel} -> {libvirt}")
        time.sleep(3)  # a few rule evaluations with the target up
        down = query(prom, 'ALERTS{alertname="VMMigrationExporterDown"}')
        if down:
            fail(f"{name}: VMMigrationExporterDown is {down[0]['metric']} while the exporter is scraped")
        exporter.send_signal(signal.SIGTERM)
        try:
            exporter.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fail(f"{name}: the exporter did not stop within 20 s of SIGTERM (log: {d}/log)")
        alert = poll(lambda: query(
            prom, f'ALERTS{{alertname="VMMigrationExporterDown",alertstate="pending",instance="{exp}"}}'))
        if not alert:
            fail(f"{name}: VMMigrationExporterDown did not go pending within {WAIT:.0f} s of the exporter stopping")
        print(f"check-routes: {name}: job {job}; up{sel} and vm_migration_libvirt_up{sel} select the "
              "exporter, VMMigrationExporterDown quiet while it is scraped and pending once it stops")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        log.close()


def main():
    binary, helm = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="vme-routes-")
    run("Helm chart ServiceMonitor", chart_route(helm, "ServiceMonitor"), binary, tmp)
    run("Helm chart PodMonitor", chart_route(helm, "PodMonitor"), binary, tmp)
    run("openstack-helm values + packaging/openstack-helm/podmonitor.yaml", openstack_helm_route, binary, tmp)
    run(".deb/container + packaging/prometheus/vm-migration-exporter.yml", plain_route, binary, tmp)
    run("control: Helm chart PodMonitor with podMonitor.job=\"\"",
        chart_route(helm, "PodMonitor", "podMonitor.job="), binary, tmp, control=True)
    subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
