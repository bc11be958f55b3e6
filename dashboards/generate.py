#!/usr/bin/env python3
"""Generates the Grafana dashboards in this folder: python3 dashboards/generate.py

The JSON files are committed; CI regenerates them and fails if they differ, so edit this file,
not the JSON. Every query selects by the `cluster` (optional: `.*` when Prometheus has no such
label), `job` and `host` variables, and (where it applies) `uuid`, the domain picker, which shows
`name (uuid)` (Nova's instance name, or the libvirt name of a domain without Nova metadata).

Panel ids come from a stable key (the dashboard's uid and the panel's `key`, by default its
title), not from its position: adding a panel leaves every other panel's id (and links to it)
alone. Every target declares its unit; a panel whose targets have two units puts the second on
the right axis (more than two is an error: split the panel).
"""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# Peer RTT/loss panels (vm_migration_peer_*): a dashboard must never name a metric the exporter
# does not export, so they can be switched off together.
PEER_PROBES = True
DS = {"type": "prometheus", "uid": "${datasource}"}
# Which exporter: every query carries these (the rules' selector is job="vm-migration-exporter").
SCOPE = 'cluster=~"$cluster",job=~"$job"'
HOST = SCOPE + ',instance=~"$host"'
DOM = HOST + ',uuid=~"$uuid"'
RATE = "$__rate_interval"
ALL = {"selected": True, "text": "All", "value": "$__all"}
# Replace with a metric of your application (request rate, error ratio, latency quantile ...).
APP_QUERY_DEFAULT = f'avg by (domain, target) (vm_migration_app_up{{{DOM}}})'


def target(expr, legend="", ref="A", instant=False, fmt=None, unit=None):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    if fmt:
        t["format"] = fmt
    if unit:
        t["_unit"] = unit  # the panel turns it into fieldConfig; not written to the JSON
    return t


def panel(kind, title, description, targets, x, y, w, h, unit=None, options=None, field=None, overrides=None,
          key=None):
    targets = [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]
    # Units: each target's own, else the panel's. The first unit is the panel's (left axis), a
    # second goes on the right axis for the targets that have it.
    units = [t.pop("_unit", None) or unit for t in targets]
    distinct = list(dict.fromkeys(u for u in units if u))
    if len(distinct) > 2:
        raise SystemExit(f"panel {title!r}: {len(distinct)} units {distinct}; split it")
    overrides = list(overrides or [])
    if len(distinct) == 2:
        if kind != "timeseries":
            raise SystemExit(f"panel {title!r}: two units on a {kind}")
        for t, u in zip(targets, units):
            if u == distinct[1]:
                overrides.append({"matcher": {"id": "byFrameRefID", "options": t["refId"]},
                                  "properties": [{"id": "unit", "value": u},
                                                 {"id": "custom.axisPlacement", "value": "right"}]})
    defaults = {"unit": distinct[0]} if distinct else {}
    defaults.update(field or {})
    return {
        "_key": key or title,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options or {},
    }


def timeseries(title, description, targets, x, y, w=12, h=8, unit=None, overrides=None, key=None):
    return panel("timeseries", title, description, targets, x, y, w, h, unit,
                 {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                  "tooltip": {"mode": "multi", "sort": "none"}},
                 overrides=overrides, key=key)


def row(title, y, key=None):
    return {"_key": key or title, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def panel_id(uid, key):
    """A panel's id from its dashboard and key: the same every time it is generated, whatever
    other panels come and go."""
    return int(hashlib.sha256(f"{uid}/{key}".encode()).hexdigest()[:8], 16) % 1_000_000 + 1


def with_ids(uid, panels):
    """The panels with their `id`s (their `_key`s dropped); two panels with one id are an error."""
    seen = {}
    out = []
    for p in panels:
        p = dict(p)
        key = p.pop("_key")
        pid = panel_id(uid, key)
        if pid in seen:
            raise SystemExit(f"{uid}: panels {seen[pid]!r} and {key!r} get the same id {pid}: give one a key=")
        seen[pid] = key
        out.append({"id": pid, **p})
    return out


def stat(title, description, expr, x, y, w=6, h=4, unit=None, thresholds=None):
    field = {}
    if thresholds:
        field["thresholds"] = {"mode": "absolute", "steps": thresholds}
        field["color"] = {"mode": "thresholds"}
    return panel("stat", title, description, [target(expr, instant=True)], x, y, w, h, unit,
                 {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                  "colorMode": "background", "graphMode": "none", "textMode": "auto",
                  "orientation": "auto", "justifyMode": "auto"}, field)


def query_variable(name, label, query, regex=None):
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "query": {"query": query, "refId": name},
         "includeAll": True, "multi": True, "allValue": ".*", "current": ALL, "refresh": 2, "sort": 1,
         "hide": 0, "options": []}
    if regex:
        v["regex"] = regex
    return v


def domain_picker_query():
    """Every domain seen on the selected hosts in the time range, as a `picker` label
    `name (uuid)`: Nova's instance name, or the libvirt name where Nova wrote none."""
    def info(name_matcher):
        return (f"max by (domain, uuid, name) (max_over_time(vm_migration_domain_info{{{HOST},{name_matcher}}}"
                f"[$__range]))")
    empty, given = info('name=""'), info('name!=""')
    named = f'label_replace({empty}, "name", "$1", "domain", "(.*)") or {given}'
    picker = f'label_replace(label_join({named}, "picker", " (", "name", "uuid"), "picker", "$1)", "picker", "(.*)")'
    return f"query_result({picker})"


def variables(with_domain):
    v = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "hide": 0, "refresh": 1, "options": []},
        # Optional: Prometheus without a cluster label has no values here, and `.*` matches all.
        query_variable("cluster", "Cluster", "label_values(vm_migration_exporter_build_info, cluster)"),
        query_variable("job", "Job", 'label_values(vm_migration_exporter_build_info{cluster=~"$cluster"}, job)'),
        query_variable("host", "Host", f"label_values(vm_migration_exporter_build_info{{{SCOPE}}}, instance)"),
    ]
    if with_domain:
        # Shows `name (uuid)`, selects by uuid (a libvirt name is not unique across hosts).
        v.append(query_variable("uuid", "Domain", domain_picker_query(),
                                regex='/picker="(?<text>[^"]*)".*uuid="(?<value>[^"]*)"/'))
        # Any PromQL of the user's own, drawn on the migration's time axis ("Your application").
        v.append({"name": "app_query", "label": "Your application (PromQL)", "type": "textbox",
                  "query": APP_QUERY_DEFAULT, "current": {"text": APP_QUERY_DEFAULT, "value": APP_QUERY_DEFAULT},
                  "hide": 0, "options": []})
    return v


# Migration start, post-copy switch-over and end as annotations, on every board (copy them to your
# own boards: they need only the exporter's series). Start and switch-over are the first sample of
# a running job or a post-copy phase; the end is the finish time the exporter recorded.
SEL = HOST
ANNOTATIONS = [
    ("Migration start", "blue",
     f'(max by (instance, domain) (vm_migration_job_active{{{SEL},operation=~"migration_.*"}}) == 1)'
     f' unless (max by (instance, domain) (vm_migration_job_active{{{SEL},operation=~"migration_.*"}} offset 30s) == 1)',
     "{{domain}} migration started on {{instance}}", False),
    ("Post-copy switch-over", "orange",
     f'(max by (instance, domain) (vm_migration_phase{{{SEL},phase="postcopy"}}) == 1)'
     f' unless (max by (instance, domain) (vm_migration_phase{{{SEL},phase="postcopy"}} offset 30s) == 1)',
     "{{domain}} switched to post-copy", False),
    ("Migration end", "green",
     f'max by (instance, domain, outcome) (vm_migration_last_finished_timestamp_seconds{{{SEL}}}) * 1000',
     "{{domain}} migration ended ({{outcome}})", True),
]


def annotations():
    return [{"name": name, "datasource": DS, "enable": True, "iconColor": color, "expr": expr,
             "step": "15s", "titleFormat": title, "useValueForTime": value_time}
            for name, color, expr, title, value_time in ANNOTATIONS]


def dashboard(uid, title, description, panels, with_domain, links):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["vm-migration", "libvirt"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "utc",
        "templating": {"list": variables(with_domain)},
        "annotations": {"list": annotations()},
        "links": [{"title": t, "type": "link", "url": f"/d/{u}", "asDropdown": False, "icon": "dashboard",
                   "includeVars": True, "keepTime": True, "tags": [], "targetBlank": False, "tooltip": ""}
                  for t, u in links],
        "panels": with_ids(uid, panels),
    }


LINKS = [("Fleet overview", "vm-migration-fleet"), ("Migration detail", "vm-migration-detail"),
         ("Network path", "vm-migration-network")]


def fleet():
    p = [
        stat("Migrations running", "Outgoing migration jobs running now.",
             f'count(vm_migration_job_active{{{HOST},operation="migration_out"}}) or vector(0)', 0, 0),
        stat("Not converging now", "Running migrations that will not finish by themselves: pre-copy "
             "not converging, or post-copy failed (guest paused).",
             f'count(vm_migration_convergence{{{HOST},state=~"not_converging|postcopy_failed"}} == 1) or vector(0)', 6, 0,
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
        stat("Failed or aborted (range)", "Migrations that ended failed or aborted in the selected range.",
             f'sum(increase(vm_migration_finished_total{{{HOST},outcome=~"failed|aborted"}}[$__range])) or vector(0)',
             12, 0, thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]),
        stat("libvirt connections down", "Exporters that cannot reach their libvirtd.",
             f"count(vm_migration_libvirt_up{{{HOST}}} == 0) or vector(0)", 18, 0,
             thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
        timeseries("Finished migrations by outcome", "Migrations finished per interval, by outcome and mode "
                   "(outgoing).",
                   [target(f'sum by (outcome, mode) (increase(vm_migration_finished_total{{{HOST},direction="out"}}[{RATE}]))',
                           "{{outcome}} {{mode}}")], 0, 4, unit="short"),
        timeseries("Running migrations by verdict", "How many running migrations are converging, not "
                   "converging or in post-copy.",
                   [target(f"count by (state) (vm_migration_convergence{{{HOST}}} == 1)", "{{state}}")],
                   12, 4, unit="short"),
        timeseries("Downtime of completed migrations (p50, p95)", "Guest pause measured by libvirt, from the "
                   "downtime histogram.",
                   [target(f"histogram_quantile(0.5, sum by (le, mode) (rate(vm_migration_downtime_seconds_bucket{{{HOST}}}[$__range])))",
                           "p50 {{mode}}"),
                    target(f"histogram_quantile(0.95, sum by (le, mode) (rate(vm_migration_downtime_seconds_bucket{{{HOST}}}[$__range])))",
                           "p95 {{mode}}")], 0, 12, unit="s"),
        timeseries("Duration of finished migrations (p50, p95)", "Total migration time, from the duration "
                   "histogram.",
                   [target(f"histogram_quantile(0.5, sum by (le, outcome) (rate(vm_migration_duration_seconds_bucket{{{HOST}}}[$__range])))",
                           "p50 {{outcome}}"),
                    target(f"histogram_quantile(0.95, sum by (le, outcome) (rate(vm_migration_duration_seconds_bucket{{{HOST}}}[$__range])))",
                           "p95 {{outcome}}")], 12, 12, unit="s"),
        panel("table", "Running migrations", "Every running migration with its verdict, remaining data and "
              "predicted downtime.",
              [target(f"vm_migration_convergence{{{HOST}}} == 1", instant=True, fmt="table"),
               target(f"vm_migration_data_remaining_bytes{{{HOST}}}", instant=True, fmt="table"),
               target(f"vm_migration_predicted_downtime_seconds{{{HOST}}}", instant=True, fmt="table")],
              0, 20, 24, 8, options={"showHeader": True, "cellHeight": "sm"}),
        panel("table", "Recent migrations: libvirt downtime vs app-observed outage",
              "The last migration of each domain: the pause libvirt measured, and the longest outage its "
              "probed services showed (first failed or late probe to the next answer).",
              [target(f"vm_migration_last_downtime_seconds{{{HOST}}}", instant=True, fmt="table"),
               target(f"max by (instance, domain, uuid) (vm_migration_last_app_outage_seconds{{{HOST}}})",
                      instant=True, fmt="table")],
              0, 28, 24, 8, unit="s", options={"showHeader": True, "cellHeight": "sm"}),
        panel("table", "Before migrating: forecast per guest and host evacuation time",
              "If each running guest were migrated now (one at a time, over its usual peer's path): the "
              "predicted pre-copy verdict, total time and downtime, and per host the time to evacuate "
              "every guest in its recommended mode (absent while a guest has no forecast). "
              "What-ifs (peer, bandwidth, concurrency): the exporter's /api/v1/forecast.",
              [target(f"vm_migration_forecast_verdict{{{HOST}}} == 1", instant=True, fmt="table"),
               target(f"vm_migration_forecast_duration_seconds{{{HOST}}}", instant=True, fmt="table"),
               target(f"vm_migration_forecast_downtime_seconds{{{HOST}}}", instant=True, fmt="table"),
               target(f"vm_migration_forecast_evacuation_seconds{{{HOST}}}", instant=True, fmt="table")],
              0, 36, 24, 8, unit="s", options={"showHeader": True, "cellHeight": "sm"}),
    ]
    return dashboard("vm-migration-fleet", "VM migrations: fleet overview",
                     "Migrations running and finished across hypervisors, and which will not converge.",
                     p, False, LINKS)


def detail():
    p = [
        timeseries("Data remaining", "Data libvirt still has to send; in a converging pre-copy it falls pass "
                   "over pass.",
                   [target(f"vm_migration_data_remaining_bytes{{{DOM}}}", "{{domain}}")], 0, 0, unit="bytes"),
        timeseries("Dirty rate vs transfer rate", "Pre-copy converges only while the guest dirties memory "
                   "slower than the link sends it.",
                   [target(f"vm_migration_dirty_memory_rate_bytes_per_second{{{DOM}}}", "dirty {{domain}}"),
                    target(f"vm_migration_memory_transfer_rate_bytes_per_second{{{DOM}}}", "transfer {{domain}}")],
                   12, 0, unit="Bps"),
        timeseries("Memory pass (iteration)", "The pass over guest memory; a climbing count with no fall in "
                   "data remaining means no convergence.",
                   [target(f"vm_migration_iteration{{{DOM}}}", "{{domain}}")], 0, 8, unit="short"),
        timeseries("Predicted vs max downtime", "Pause predicted at switch-over, QEMU's expected downtime and "
                   "the maximum allowed (the switch-over threshold).",
                   [target(f"vm_migration_predicted_downtime_seconds{{{DOM}}}", "predicted {{domain}}"),
                    target(f"vm_migration_expected_downtime_seconds{{{DOM}}}", "expected (QEMU) {{domain}}"),
                    target(f"vm_migration_max_downtime_seconds{{{DOM}}}", "max {{domain}}")], 12, 8, unit="s"),
        panel("state-timeline", "Verdict", "converging / not_converging / postcopy / postcopy_failed / unknown over time; "
              "while not converging, the detail row says how: stalled (remainder flat) or diverging (growing).",
              [target(f"vm_migration_convergence{{{DOM}}} == 1", "{{domain}} {{state}}"),
               target(f"vm_migration_convergence_detail{{{DOM}}} == 1", "{{domain}} {{detail}}")], 0, 16, 12, 6,
              options={"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                       "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}),
        panel("state-timeline", "Phase", "Pre-copy, switch-over (the guest paused for the final copy) or post-copy.",
              [target(f"vm_migration_phase{{{DOM}}} == 1", "{{domain}} {{phase}}")], 12, 16, 12, 6,
              options={"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                       "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}),
        timeseries("Dirty / transfer ratio and ETA", "λ = dirty rate ÷ transfer rate (below 1 converges) and "
                   "the time to switch-over if the trend holds.",
                   [target(f"vm_migration_dirty_to_transfer_ratio{{{DOM}}}", "ratio {{domain}}", unit="none"),
                    target(f"vm_migration_eta_seconds{{{DOM}}}", "ETA {{domain}}", unit="s")], 0, 22),
        timeseries("Auto-converge throttle and post-copy page requests", "CPU throttle applied to the guest "
                   "(0..1) and pages faulted over the network per second in post-copy.",
                   [target(f"vm_migration_auto_converge_throttle_ratio{{{DOM}}}", "throttle {{domain}}",
                           unit="percentunit"),
                    target(f"rate(vm_migration_postcopy_page_requests_total{{{DOM}}}[1m])", "page requests/s {{domain}}",
                           unit="reqps")],
                   12, 22),
        timeseries("NIC transmit throughput", "Bytes per second sent by each NIC of the host, on the same "
                   "time axis as the migration.",
                   [target(f"rate(vm_migration_network_transmit_bytes_total{{{HOST}}}[{RATE}])", "{{device}}")],
                   12, 30, unit="Bps"),
    ]
    if PEER_PROBES:
        # The selected domains' peers only: discovered peers joined to the migrations they serve.
        p.append(timeseries("Peer RTT (median)", "Round trip to the peer each selected migration goes to (found from QEMU's migration socket), on the same time axis.",
                            [target(f"histogram_quantile(0.5, sum by (le, peer) (rate(vm_migration_peer_rtt_seconds_bucket{{{HOST},origin=\"discovered\"}}[{RATE}])"
                                    f" * on (instance, peer) group_left () max by (instance, peer) (vm_migration_peer_discovered{{{DOM}}})))",
                                    "{{peer}}")], 0, 30, unit="s"))
    # Application QoS: what the guest's users saw, on the same time axis as the rows above.
    p += [
        row("Application QoS", 38),
        timeseries("App latency (p50, p99)", "Time the guest's probed services took to answer, from the "
                   "probe duration histogram (probed every 20 ms while the guest migrates).",
                   [target(f"histogram_quantile(0.5, sum by (le, domain, target) (rate(vm_migration_app_probe_duration_seconds_bucket{{{DOM}}}[{RATE}])))",
                           "p50 {{domain}} {{target}}"),
                    target(f"histogram_quantile(0.99, sum by (le, domain, target) (rate(vm_migration_app_probe_duration_seconds_bucket{{{DOM}}}[{RATE}])))",
                           "p99 {{domain}} {{target}}")], 0, 39, unit="s"),
        timeseries("App availability", "Share of probes of each service that answered as expected.",
                   [target(f'sum by (domain, target) (rate(vm_migration_app_probes_total{{{DOM},result="success"}}[{RATE}]))'
                           f" / sum by (domain, target) (rate(vm_migration_app_probes_total{{{DOM}}}[{RATE}]))",
                           "{{domain}} {{target}}")], 12, 39, unit="percentunit"),
        timeseries("App outage now", "How long each service has not been answering (0 while it answers).",
                   [target(f"vm_migration_app_outage_seconds{{{DOM}}}", "{{domain}} {{target}}")], 0, 47, unit="s"),
        timeseries("Your application", "The PromQL in the 'Your application' variable at the top: "
                   "overlay a metric your application already exports on the migration's time axis.",
                   [target("$app_query", "{{domain}} {{target}}")], 12, 47, unit="short"),
    ]
    return dashboard("vm-migration-detail", "VM migrations: migration detail",
                     "One migration as it runs: progress, rates, verdict, downtime, and the network under it.",
                     p, True, LINKS)


def network():
    p = [
        timeseries("NIC throughput vs link speed", "Transmit and receive rate of each NIC, with its link speed.",
                   [target(f"rate(vm_migration_network_transmit_bytes_total{{{HOST}}}[{RATE}])", "tx {{device}}"),
                    target(f"rate(vm_migration_network_receive_bytes_total{{{HOST}}}[{RATE}])", "rx {{device}}"),
                    target(f"vm_migration_network_speed_bytes_per_second{{{HOST}}}", "link {{device}}")], 0, 0, unit="Bps"),
        timeseries("NIC drops and errors", "Packets dropped or in error per second.",
                   [target(f"rate(vm_migration_network_transmit_drops_total{{{HOST}}}[{RATE}])", "tx drops {{device}}"),
                    target(f"rate(vm_migration_network_receive_drops_total{{{HOST}}}[{RATE}])", "rx drops {{device}}"),
                    target(f"rate(vm_migration_network_transmit_errors_total{{{HOST}}}[{RATE}])", "tx errors {{device}}"),
                    target(f"rate(vm_migration_network_receive_errors_total{{{HOST}}}[{RATE}])", "rx errors {{device}}")],
                   0, 8, unit="pps"),
        timeseries("NIC link state", "1 when the device is up; link speed where the driver knows it.",
                   [target(f"vm_migration_network_up{{{HOST}}}", "up {{device}}")], 12, 0, unit="short"),
    ]
    if PEER_PROBES:
        p += [
        panel("heatmap", "Peer RTT heatmap", "Distribution of probe round-trip times to the migration peers.",
              [target(f"sum by (le) (rate(vm_migration_peer_rtt_seconds_bucket{{{HOST}}}[{RATE}]))", "{{le}}",
                      fmt="heatmap")], 0, 24, 12, 8,
              options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                       "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}}),
        timeseries("Probe loss", "Share of peer probes that timed out or failed.",
                   [target(f'sum by (peer, probe) (rate(vm_migration_peer_probes_total{{{HOST},result!="success"}}[{RATE}])) '
                           f"/ sum by (peer, probe) (rate(vm_migration_peer_probes_total{{{HOST}}}[{RATE}]))",
                           "{{peer}} {{probe}}")], 12, 24, unit="percentunit"),
        timeseries("Peer RTT p50 / p95", "Median and tail round trip per peer.",
                   [target(f"histogram_quantile(0.5, sum by (le, peer) (rate(vm_migration_peer_rtt_seconds_bucket{{{HOST}}}[{RATE}])))",
                           "p50 {{peer}}"),
                    target(f"histogram_quantile(0.95, sum by (le, peer) (rate(vm_migration_peer_rtt_seconds_bucket{{{HOST}}}[{RATE}])))",
                           "p95 {{peer}}")], 0, 32, unit="s"),
        panel("state-timeline", "Peer reachability", "1 when the peer answered its last probe.",
              [target(f"vm_migration_peer_up{{{HOST}}}", "{{peer}} {{probe}}")], 12, 32, 12, 8,
              options={"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                       "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}),
        ]
    return dashboard("vm-migration-network", "VM migrations: network path",
                     "The path migrations take: NIC throughput against link speed, RTT and loss to peers.",
                     p, False, LINKS)


def main():
    for name, d in [("fleet-overview", fleet()), ("migration-detail", detail()), ("network-path", network())]:
        with open(os.path.join(HERE, f"{name}.json"), "w") as f:
            json.dump(d, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
