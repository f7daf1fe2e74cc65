#!/usr/bin/env python3
"""Writes the rigwatch Grafana dashboards (rigwatch-fleet.json,
rigwatch-host.json) beside this script. Edit the panels here and run it
again; the JSON files are what Grafana imports (Dashboards > New > Import,
or file provisioning). Every panel's query is run against a real
Prometheus by tests/tests/dashboards.rs, which requires data from each.
"""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
SEV_COLORS = {"confirmed": "red", "likely": "orange", "suspicious": "yellow"}


def datasource_var():
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name, label, query, multi=False, include_all=False):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": query, "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
            "current": {}, "hide": 0, "options": []}


class Board:
    def __init__(self, uid, title, description, tags):
        self.d = {"uid": uid, "title": title, "description": description, "tags": tags,
                  "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
                  "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "",
                  "templating": {"list": [datasource_var()]}, "annotations": {"list": []},
                  "links": [], "panels": []}
        self.y = 0
        self.x = 0
        self.row_h = 0

    def var(self, v):
        self.d["templating"]["list"].append(v)

    def link(self, title, url):
        self.d["links"].append({"title": title, "type": "link", "url": url, "targetBlank": False,
                                "icon": "dashboard", "tooltip": title, "asDropdown": False,
                                "includeVars": False, "keepTime": True, "tags": []})

    def row(self, title):
        self.newline()
        self.d["panels"].append({"id": len(self.d["panels"]) + 1, "type": "row", "title": title,
                                 "collapsed": False, "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
                                 "panels": []})
        self.y += 1

    def newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def panel(self, kind, title, description, targets, w, h, unit=None, extra=None):
        if self.x + w > 24:
            self.newline()
        p = {"id": len(self.d["panels"]) + 1, "type": kind, "title": title, "description": description,
             "datasource": DS, "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
             "targets": [dict({"datasource": DS, "refId": chr(65 + i), "editorMode": "code", "range": kind == "timeseries",
                               "instant": kind != "timeseries"}, **t) for i, t in enumerate(targets)],
             "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
        if unit:
            p["fieldConfig"]["defaults"]["unit"] = unit
        if extra:
            for k, v in extra.items():
                p[k] = v
        self.d["panels"].append(p)
        self.x += w
        self.row_h = max(self.row_h, h)
        return p

    def write(self, name):
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(self.d, f, indent=2, sort_keys=False)
            f.write("\n")


def t(expr, legend=None, fmt=None):
    d = {"expr": expr}
    if legend:
        d["legendFormat"] = legend
    if fmt:
        d["format"] = fmt
    return d


def severity_overrides():
    return [{"matcher": {"id": "byName", "options": s},
             "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": c}}]} for s, c in SEV_COLORS.items()]


def stat(b, title, desc, expr, w=4, thresholds=None, unit=None):
    steps = thresholds or [{"color": "green", "value": None}]
    return b.panel("stat", title, desc, [t(expr)], w, 4, unit=unit, extra={
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value"},
        "fieldConfig": {"defaults": {"thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []}})


def table(b, title, desc, targets, w, h, hide=("Time",), rename=None):
    return b.panel("table", title, desc, targets, w, h, extra={
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {k: True for k in hide},
                                                           "renameByName": rename or {}}}],
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}})


def series(b, title, desc, targets, w, h, unit=None, stack=False, overrides=None):
    p = b.panel("timeseries", title, desc, targets, w, h, unit=unit)
    p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0,
                                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    p["fieldConfig"]["overrides"] = overrides or []
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


RED = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
ORANGE = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]

# ---------------------------------------------------------------- fleet
b = Board("rigwatch-fleet", "rigwatch / Fleet overview",
          "Crypto-mining findings across the fleet: rigwatch agents (job rigwatch-agent) and the collector.",
          ["rigwatch", "security"])
b.link("Host drill-down", "/d/rigwatch-host/rigwatch-host")
b.row("Now")
stat(b, "Confirmed miners", "Active confirmed findings on all agents: a stratum session, a pool, a miner binary or config.",
     'sum(rigwatch_findings_active{severity="confirmed"})', thresholds=RED)
stat(b, "Likely miners", "Active likely findings on all agents.",
     'sum(rigwatch_findings_active{severity="likely"})', thresholds=ORANGE)
stat(b, "Campaigns", "Findings on two or more hosts sharing a wallet, pool, binary hash or stratum login (collector).",
     "sum(rigwatch_collector_campaigns)", thresholds=ORANGE)
stat(b, "Agents scraped", "Agents Prometheus scrapes (rigwatch_build_info).", "count(rigwatch_build_info)")
stat(b, "Hosts reporting", "Hosts that have reported to the collector.", "sum(rigwatch_collector_hosts)")
stat(b, "Agents silent", "Hosts whose agent stopped reporting to the collector: a miner may have killed it.",
     "sum(rigwatch_collector_hosts_silent)", thresholds=RED)
b.row("Over time")
series(b, "Active findings by severity", "Active findings on all agents, by severity.",
       [t("sum by (severity) (rigwatch_findings_active)", "{{severity}}")], 12, 8, stack=True, overrides=severity_overrides())
series(b, "Findings at the collector by severity", "Open or acknowledged findings the collector holds, by severity.",
       [t("sum by (severity) (rigwatch_collector_findings_active)", "{{severity}}")], 12, 8, stack=True,
       overrides=severity_overrides())
b.row("Where")
table(b, "Hosts with active findings", "Per host: active findings by severity.",
      [t("sum by (instance, severity) (rigwatch_findings_active) > 0", fmt="table")], 8, 9,
      rename={"Value": "findings"})
table(b, "Top hosts by CPU of processes with findings", "Cores used by processes with active findings, per host.",
      [t("topk(10, sum by (instance) (rigwatch_finding_cpu_cores))", fmt="table")], 8, 9, rename={"Value": "cores"})
table(b, "Top hosts by GPU of processes with findings", "GPU utilisation (1 = one GPU fully busy) of processes with active findings, per host.",
      [t("topk(10, sum by (instance) (rigwatch_finding_gpu_utilization_ratio))", fmt="table")], 8, 9,
      rename={"Value": "GPUs busy"})
# the counters are born non-zero (findings open in an agent's first pass,
# before any scrape), so increase() would miss them: totals since start
table(b, "Findings opened by rule since agents started", "Findings opened by rule and severity, summed over the agents since each started.",
      [t("topk(15, sum by (rule, severity) (rigwatch_findings_opened_total))", fmt="table")], 12, 8,
      rename={"Value": "opened"})
series(b, "Collector ingest", "Agent reports the collector receives, by outcome (stored, duplicate, refused).",
       [t("sum by (outcome) (rate(rigwatch_collector_reports_total[$__rate_interval]))", "{{outcome}}")], 12, 8, unit="reqps")
b.row("Fleet immunity and agents' configuration")
stat(b, "Fleet indicators live", "Indicators confirmed findings taught the fleet (hashes, wallets, pools, logins), live in the signed set.",
     'sum(rigwatch_collector_fleet_indicators{state="live"})')
stat(b, "Fleet set version", "The version of the signed fleet signature set the collector serves.",
     "max(rigwatch_collector_fleet_version)")
stat(b, "Agents on an old fleet set", "Agents whose last fetch named an older set than the collector serves (they poll every 10 s).",
     "count(max by (host) (rigwatch_collector_agent_fleet_version) < on () group_left () max(rigwatch_collector_fleet_version)) or vector(0)",
     thresholds=ORANGE)
stat(b, "Sensors switched off", "Sensors the agents' own configuration switches off, over all hosts (RigwatchAgentSensorOff).",
     "sum(rigwatch_collector_agent_sensors_off) or vector(0)", thresholds=ORANGE)
stat(b, "Hosts off the fleet policy", "Hosts whose configuration departs from the collector's [policy]: a required sensor off, forbidden local signature files or local allow rules in force (RigwatchAgentPolicyDrift).",
     "count(max by (host) (rigwatch_collector_agent_policy_drift)) or vector(0)", thresholds=ORANGE)
stat(b, "Config changes (1 h)", "Changes of agents' allowlists, signature overrides, sensors and collector in the last hour.",
     'sum(increase(rigwatch_collector_agent_config_changes_total{what=~"allowlist|overrides|sensors_off|collector"}[1h]))',
     thresholds=ORANGE)
stat(b, "Fleet indicators refused (1 h)", "Indicators the collector would not learn from agents' findings (not confirmed by their evidence, fleet evidence, uncorroborated hash, hourly cap).",
     "sum(increase(rigwatch_collector_fleet_learning_refused_total[1h]))")
table(b, "Agents' fleet set version", "The fleet set version each agent held at its last fetch.",
      [t("max by (host) (rigwatch_collector_agent_fleet_version)", fmt="table")], 12, 8, rename={"Value": "set version"})
series(b, "Fleet indicators by kind", "Live fleet indicators by kind.",
       [t('sum by (kind) (rigwatch_collector_fleet_indicators{state="live"})', "{{kind}}")], 12, 8, stack=True)
b.write("rigwatch-fleet.json")

# ---------------------------------------------------------------- host
b = Board("rigwatch-host", "rigwatch / Host",
          "One host: its processes with findings, their CPU, GPU and network evidence, and the agent's health.",
          ["rigwatch", "security"])
b.var(query_var("host", "Host", "label_values(rigwatch_build_info, instance)"))
b.link("Fleet overview", "/d/rigwatch-fleet/rigwatch-fleet")
H = 'instance=~"$host"'
b.row("Findings")
table(b, "Processes with findings", "Active findings on this host: severity, the rule that names it, the process and its pod.",
      [t(f"max by (severity, rule, comm, pid, namespace, pod, id) (rigwatch_finding_active{{{H}}})", fmt="table")], 24, 8,
      hide=("Time", "Value"))
series(b, "CPU of processes with findings", "Cores each process with an active finding uses.",
       [t(f"rigwatch_finding_cpu_cores{{{H}}} * on (instance, id) group_left (comm, pid) rigwatch_finding_active{{{H}}}",
          "{{comm}} ({{pid}})")], 12, 8, unit="short")
series(b, "GPU of processes with findings", "GPU utilisation of each process with an active finding (1 = one GPU).",
       [t(f"rigwatch_finding_gpu_utilization_ratio{{{H}}} * on (instance, id) group_left (comm, pid) rigwatch_finding_active{{{H}}}",
          "{{comm}} ({{pid}})")], 12, 8, unit="percentunit")
table(b, "Network evidence", "Stratum sessions, pool connections, pool DNS queries and TLS SNI behind each finding.",
      [t(f'rigwatch_finding_evidence{{{H}, kind=~"stratum|pool_connection|dns|tls_sni|pool_domain"}} '
         f"* on (instance, id) group_left (comm, pid, severity) rigwatch_finding_active{{{H}}}", fmt="table")], 12, 8,
      rename={"Value": "pieces"})
table(b, "All evidence by kind", "Evidence behind this host's findings, by kind.",
      [t(f"sum by (kind) (rigwatch_finding_evidence{{{H}}})", fmt="table")], 12, 8, rename={"Value": "pieces"})
b.row("Agent health")
table(b, "Sensors", "Whether each sensor works on this host (1) or not (0), and its last pass.",
      [t(f"rigwatch_sensor_up{{{H}}}", fmt="table"), t(f"rigwatch_sensor_pass_duration_seconds{{{H}}}", fmt="table")], 8, 9,
      hide=("Time", "__name__", "job", "instance"), rename={"Value #A": "up", "Value #B": "last pass (s)"})
series(b, "Detection pass duration (p90)", "90th percentile of the agent's detection passes.",
       [t(f"histogram_quantile(0.9, sum by (le) (rate(rigwatch_pass_duration_seconds_bucket{{{H}}}[$__rate_interval])))",
          "p90")], 8, 9, unit="s")
series(b, "Agent CPU and memory", "The agent's own cost: cores and resident memory.",
       [t(f"rate(process_cpu_seconds_total{{{H}}}[$__rate_interval]) and on (instance, job) rigwatch_build_info", "cores"),
        t(f"process_resident_memory_bytes{{{H}}} and on (instance, job) rigwatch_build_info", "memory")], 8, 9)
series(b, "Delivery to the collector", "Events waiting in the spool, and failed deliveries.",
       [t(f"rigwatch_shipper_queue_events{{{H}}}", "queued events"),
        t(f"rigwatch_spool_bytes{{{H}}}", "spool bytes"),
        t(f"increase(rigwatch_shipper_delivery_failures_total{{{H}}}[$__rate_interval])", "failures")], 12, 8)
stat(b, "Rules in force", "Signature rules loaded on this host.", f"rigwatch_signatures_rules{{{H}}}", w=6)
stat(b, "Signature load errors", "Signature files that failed to load since the agent started.",
     f"rigwatch_signature_load_errors_total{{{H}}}", w=6, thresholds=ORANGE)
b.write("rigwatch-host.json")
