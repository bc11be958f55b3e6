#!/usr/bin/env python3
"""Every dashboard query on a real Prometheus: python3 dashboards/check/live.py EXPORTER_BINARY

Starts the exporter on libvirt's test driver (one domain, `test`, without Nova metadata) and a
Prometheus scraping it as job `vm-migration-exporter`, waits for a few scrapes, then evaluates
every query of every board (variables filled as Grafana would with everything selected) through
the HTTP API: none may fail. The domain picker must offer `test (<uuid>)` with the uuid as value,
through the variable's own regex (JavaScript's `(?<name>…)` groups are Python's `(?P<name>…)`).
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

BOARDS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def query(prom, expr):
    try:
        return get(f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    except urllib.error.HTTPError as e:
        return json.load(e)


def fill(expr, texts):
    for k, v in texts.items():
        expr = expr.replace("$" + k, v)
    for k, v in {"$__rate_interval": "1m", "$__range": "5m", "$cluster": ".*", "$job": ".*",
                 "$host": ".*", "$uuid": ".*"}.items():
        expr = expr.replace(k, v)
    return expr


def main():
    binary = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="vme-dash-")
    exp, prom = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with open(os.path.join(tmp, "prom.yml"), "w") as f:
        f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                f"scrape_configs:\n  - job_name: vm-migration-exporter\n    static_configs: [{{targets: ['{exp}']}}]\n")
    procs = [
        subprocess.Popen([binary, "--libvirt.uri", "test:///default", "--web.listen-address", exp,
                          "--storage.path="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["prometheus", f"--config.file={tmp}/prom.yml", f"--storage.tsdb.path={tmp}/data",
                          f"--web.listen-address={prom}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    problems = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = query(prom, 'count_over_time(vm_migration_domain_info{job="vm-migration-exporter"}[1m])')
                if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 3:
                    break
            except (OSError, KeyError, ValueError):
                pass
            if time.time() > deadline:
                sys.exit("dashboards: Prometheus did not scrape the exporter within 60 s")
            time.sleep(0.5)
        n = 0
        for path in sorted(glob.glob(os.path.join(BOARDS, "*.json"))):
            d = json.load(open(path))
            texts = {v["name"]: v["query"] for v in d["templating"]["list"] if v["type"] == "textbox"}
            exprs = [(f"panel {p['title']!r}", t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
            exprs += [(f"annotation {a['name']!r}", a["expr"]) for a in d["annotations"]["list"]]
            for v in d["templating"]["list"]:
                if not isinstance(v.get("query"), dict):
                    continue
                q = v["query"]["query"]
                m = re.match(r"label_values\((.*),\s*(\w+)\)$", q) or re.match(r"query_result\((.*)\)$", q)
                exprs.append((f"variable {v['name']}", m.group(1) if m else q))
                if v.get("regex") and q.startswith("query_result("):
                    r = query(prom, fill(m.group(1), texts))
                    rx = re.compile(v["regex"].strip("/").replace("(?<", "(?P<"))
                    offered = []
                    for s in r["data"]["result"]:
                        text = "{" + ", ".join(f'{k}="{x}"' for k, x in sorted(s["metric"].items())) + "}"
                        g = rx.search(text)
                        offered.append(g.groupdict() if g else None)
                    if not offered or not all(o and re.fullmatch(r"test \([0-9a-f-]{36}\)", o["text"])
                                              and o["text"] == f"test ({o['value']})" for o in offered):
                        problems.append(f"{path}: variable {v['name']} offers {offered}, not 'test (<uuid>)'")
            for where, e in exprs:
                n += 1
                r = query(prom, fill(e, texts))
                if r.get("status") != "success":
                    problems.append(f"{os.path.basename(path)}: {where}: {r.get('error')}: {fill(e, texts)}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        subprocess.run(["rm", "-rf", tmp])
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"dashboards: all {n} queries evaluate on a real Prometheus scraping the exporter; the domain picker offers 'name (uuid)'")


if __name__ == "__main__":
    main()
