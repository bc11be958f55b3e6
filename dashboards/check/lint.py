#!/usr/bin/env python3
"""Checks the generated dashboards beyond what Grafana's schema says:

  scope   every series a query selects (panels, annotations, variables) is selected by the
          `job` and `cluster` variables, so a board shows one exporter deployment;
  units   no axis of a panel carries two units, and each target's unit fits what its query
          measures (a `_seconds` series on a `short` axis is an error);
  ids     every panel has an id, unique in its dashboard, that does not move when panels are
          added elsewhere (regenerated with an extra panel at the start, middle and end).

Each check also runs on a deliberately broken copy and must fail there. Exit 1 on problems.
"""
import copy
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BOARDS = os.path.dirname(HERE)
sys.path.insert(0, BOARDS)
import generate  # noqa: E402

METRIC = re.compile(r"(?<![\w:$])(vm_migration_[a-z0-9_]+)(?![\w:])")
# What a Grafana unit measures.
UNIT_DIM = {"s": "time", "ms": "time", "bytes": "bytes", "decbytes": "bytes", "Bps": "byterate",
            "binBps": "byterate", "pps": "rate", "reqps": "rate", "ops": "rate",
            "percentunit": "ratio", "none": "ratio", "short": "count"}
# Dimensions a unit may show (a plain number can be a count or a ratio).
COMPATIBLE = {"count": {"count", "ratio"}, "ratio": {"ratio"}, "time": {"time"},
              "bytes": {"bytes"}, "byterate": {"byterate"}, "rate": {"rate"}}


def blank_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)


def queries(d):
    """(where, expr) of every query of a dashboard, text variables filled with their default."""
    texts = {v["name"]: v["query"] for v in d["templating"]["list"] if v["type"] == "textbox"}

    def fill(e):
        for k, v in texts.items():
            e = e.replace("$" + k, v)
        return e
    out = []
    for v in d["templating"]["list"]:
        if isinstance(v.get("query"), dict):
            out.append((f"variable {v['name']}", v["name"], v["query"]["query"]))
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", None, fill(t["expr"])))
    for a in d["annotations"]["list"]:
        out.append((f"annotation {a['name']!r}", None, a["expr"]))
    return out


def check_scope(d):
    problems = []
    for where, var, expr in queries(d):
        # The cluster variable lists clusters; the job variable is chosen within a cluster.
        need = {"cluster": [], "job": ['cluster=~"$cluster"']}.get(var, ['job=~"$job"', 'cluster=~"$cluster"'])
        if not need:
            continue
        blanked = blank_strings(expr)
        for m in METRIC.finditer(blanked):
            rest = expr[m.end():]
            if not rest.startswith("{"):
                problems.append(f"{d['uid']}: {where}: {m.group(1)} has no selector")
                continue
            matchers = rest[1:rest.index("}")]
            for n in need:
                if n not in matchers:
                    problems.append(f"{d['uid']}: {where}: {m.group(1)} is not selected by {n}")
    return problems


def dimension(expr):
    """What a query measures, when it can be told from its one series name; else None."""
    e = blank_strings(expr)
    names = set(METRIC.findall(e))
    if len(names) != 1 or re.search(r"\)\s*/|\s/\s", e):
        return None  # several series, or a quotient: a ratio of some kind
    name = names.pop()
    if "histogram_quantile" in e:
        return "time" if name.endswith("_seconds_bucket") else None
    if re.search(r"\b(count|count_values)\s*(by|without|\()", e) or "increase(" in e:
        return "count"
    base = name
    if re.search(r"\b(rate|irate|deriv)\(", e):
        if base.endswith("_bytes_total") or base.endswith("_bytes"):
            return "byterate"
        return "rate"
    if base.endswith("_bytes_per_second"):
        return "byterate"
    for suffix, dim in (("_seconds", "time"), ("_bytes", "bytes"), ("_ratio", "ratio")):
        if base.endswith(suffix):
            return dim
    return "count"


def check_units(d):
    problems = []
    for p in d["panels"]:
        if p["type"] not in ("timeseries", "stat"):
            continue
        default = p["fieldConfig"]["defaults"].get("unit", "short")
        unit = {t["refId"]: default for t in p["targets"]}
        axis = {t["refId"]: "left" for t in p["targets"]}
        for o in p["fieldConfig"].get("overrides", []):
            if o["matcher"]["id"] != "byFrameRefID":
                continue
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    unit[o["matcher"]["options"]] = prop["value"]
                if prop["id"] == "custom.axisPlacement":
                    axis[o["matcher"]["options"]] = "right" if prop["value"] == "right" else "left"
        per_axis = {}
        for ref, u in unit.items():
            per_axis.setdefault(axis[ref], set()).add(u)
        for side, units in per_axis.items():
            if len(units) > 1:
                problems.append(f"{d['uid']}: panel {p['title']!r}: {sorted(units)} on the {side} axis")
        for t in p["targets"]:
            dim = dimension(t["expr"])
            u = unit[t["refId"]]
            if u not in UNIT_DIM:
                problems.append(f"{d['uid']}: panel {p['title']!r} {t['refId']}: unit {u!r} unknown to this check")
            elif dim and dim not in COMPATIBLE[UNIT_DIM[u]]:
                problems.append(f"{d['uid']}: panel {p['title']!r} {t['refId']}: measures {dim}, shown as {u!r}")
    return problems


def all_panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def check_ids(d):
    problems, seen = [], {}
    for p in all_panels(d):
        pid = p.get("id")
        if not isinstance(pid, int) or pid <= 0:
            problems.append(f"{d['uid']}: panel {p['title']!r} has no positive integer id")
        elif pid in seen:
            problems.append(f"{d['uid']}: panels {seen[pid]!r} and {p['title']!r} share id {pid}")
        else:
            seen[pid] = p["title"]
    return problems


def ids_stay_when_panels_are_added():
    """Regenerate each board with one more panel at its start, middle and end: every other
    panel keeps its id."""
    problems = []
    raw = {}
    make = generate.dashboard

    def spy(uid, title, description, panels, with_domain, links):
        raw[uid] = (title, description, panels, with_domain, links)
        return make(uid, title, description, panels, with_domain, links)
    generate.dashboard = spy
    try:
        boards = [generate.fleet(), generate.detail(), generate.network()]
    finally:
        generate.dashboard = make
    extra = generate.timeseries("A panel added later", "", [generate.target("vector(1)", unit="short")], 0, 0)
    for d in boards:
        title, description, panels, with_domain, links = raw[d["uid"]]
        before = {p["title"]: p["id"] for p in d["panels"]}
        for at in (0, len(panels) // 2, len(panels)):
            again = make(d["uid"], title, description, panels[:at] + [extra] + panels[at:], with_domain, links)
            after = {p["title"]: p["id"] for p in again["panels"] if p["title"] != "A panel added later"}
            if after != before:
                problems.append(f"{d['uid']}: ids moved when a panel was added at {at}")
    # Two panels with one key cannot both be placed.
    try:
        generate.with_ids("x", [dict(extra), dict(extra)])
        problems.append("generate.with_ids accepted two panels with one id")
    except SystemExit:
        pass
    return problems


def main():
    boards = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(BOARDS, "*.json")))]
    problems = []
    for d in boards:
        problems += check_scope(d) + check_units(d) + check_ids(d)
    problems += ids_stay_when_panels_are_added()
    # Each check must notice what it is for.
    d = copy.deepcopy(next(b for b in boards if b["uid"] == "vm-migration-detail"))
    broken = copy.deepcopy(d)
    broken["panels"][1]["id"] = broken["panels"][0]["id"]
    if not check_ids(broken):
        problems.append("check_ids missed a duplicate id")
    broken = copy.deepcopy(d)
    t = broken["panels"][0]["targets"][0]
    t["expr"] = t["expr"].replace('job=~"$job",', "")
    if not check_scope(broken):
        problems.append("check_scope missed a query without the job matcher")
    broken = copy.deepcopy(d)
    p = next(p for p in broken["panels"] if p["fieldConfig"]["overrides"])
    p["fieldConfig"]["overrides"] = []
    if not check_units(broken):
        problems.append("check_units missed two units on one axis")
    broken = copy.deepcopy(d)
    p = next(p for p in broken["panels"] if p["title"] == "Predicted vs max downtime")
    p["fieldConfig"]["defaults"]["unit"] = "short"
    if not check_units(broken):
        problems.append("check_units missed seconds shown as a plain number")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"dashboards: {len(boards)} boards: every query selected by job and cluster, one unit per axis "
          "fitting each query, unique panel ids that stay when panels are added")


if __name__ == "__main__":
    main()
