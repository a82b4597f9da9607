#!/usr/bin/env python3
"""Writes deploy/grafana/ecosorter-fleet.json, the Grafana dashboard for many bins (Prometheus).

    python tools/fleet_dashboard.py     # from the repository root; tests/fleet checks every query
"""
import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{bin=~"$bin"}'  # every query: the bins chosen at the top of the dashboard
panels_spec = [
    # (title, type, exprs [(expr, legend)], unit, w, h)
    ("Bins answering", "stat", [("count(ecosorter_uptime_seconds{SEL})", "bins")], "none", 4, 4),
    ("Bins not answering (scrape failed)", "stat", [('count(up{job="ecosorter"} == 0) or vector(0)', "down")], "none", 4, 4),
    ("Bins with a fault", "stat", [("count(max by (bin) (ecosorter_faults{SEL}) > 0) or vector(0)", "faulted")], "none", 4, 4),
    ("Bins held", "stat", [("count(max by (bin) (ecosorter_holds{SEL}) > 0) or vector(0)", "held")], "none", 4, 4),
    ("Compartments full", "stat", [("sum(ecosorter_compartment_full{SEL}) or vector(0)", "full")], "none", 4, 4),
    ("Items today (all bins)", "stat", [("sum(ecosorter_items_today{SEL})", "items")], "none", 4, 4),
    ("Items per minute, by bin", "timeseries", [("sum by (bin) (rate(ecosorter_items_total{SEL}[5m])) * 60", "{{bin}}")], "none", 12, 8),
    ("Uncertain share (1 h), by bin", "timeseries", [("sum by (bin) (rate(ecosorter_uncertain_total{SEL}[1h])) / sum by (bin) (rate(ecosorter_items_total{SEL}[1h]))", "{{bin}}")], "percentunit", 12, 8),
    ("Decision latency p50 / p90 (15 min)", "timeseries", [
        ("histogram_quantile(0.5, sum by (bin, le) (rate(ecosorter_decision_latency_seconds_bucket{SEL}[15m])))", "{{bin}} p50"),
        ("histogram_quantile(0.9, sum by (bin, le) (rate(ecosorter_decision_latency_seconds_bucket{SEL}[15m])))", "{{bin}} p90")], "s", 12, 8),
    ("Not routed per hour, by bin", "timeseries", [("sum by (bin) (increase(ecosorter_unrouted_total{SEL}[1h]))", "{{bin}}")], "none", 12, 8),
    ("Holds now", "table", [("max by (bin, name) (ecosorter_holds{SEL}) > 0", "")], "none", 8, 8),
    ("Faults now", "table", [("max by (bin, name) (ecosorter_faults{SEL}) > 0", "")], "none", 8, 8),
    ("Full compartments", "table", [("ecosorter_compartment_full{SEL} == 1", "")], "none", 8, 8),
    ("Items per compartment today", "table", [("sum by (bin, compartment) (ecosorter_compartment_items_today{SEL})", "")], "none", 12, 8),
    ("Unhealthy parts", "table", [("ecosorter_health{SEL} == 0", "")], "none", 12, 8),
]
panels, x, y, row_h = [], 0, 0, 0
for i, (title, kind, exprs, unit, w, h) in enumerate(panels_spec, 1):
    if x + w > 24:
        x, y = 0, y + row_h
        row_h = 0
    targets = [{"datasource": DS, "expr": e.replace("{SEL}", SEL), "legendFormat": lg, "refId": chr(65 + j),
                **({"instant": True, "format": "table"} if kind == "table" else {})} for j, (e, lg) in enumerate(exprs)]
    panels.append({"id": i, "title": title, "type": kind, "datasource": DS, "gridPos": {"x": x, "y": y, "w": w, "h": h},
                   "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}, "targets": targets})
    x += w
    row_h = max(row_h, h)
dash = {
    "uid": "ecosorter-fleet", "title": "EcoSorter fleet", "tags": ["ecosorter"], "timezone": "browser",
    "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
    "time": {"from": "now-24h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "bin", "type": "query", "datasource": DS, "label": "bin", "multi": True, "includeAll": True,
         "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2,
         "query": {"query": "label_values(ecosorter_uptime_seconds, bin)", "refId": "bins"},
         "definition": "label_values(ecosorter_uptime_seconds, bin)"},
    ]},
    "panels": panels,
}
OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "ecosorter-fleet.json"
OUT.write_text(json.dumps(dash, indent=1) + "\n")
