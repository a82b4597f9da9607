"""The Grafana dashboard and Prometheus file_sd example in deploy/: every query names only metrics a
real bin exports (read from a real status server's /metrics), and the files load as their tools expect."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ecosorter-fleet.json"
FILE_SD = ROOT / "deploy" / "prometheus" / "ecosorter-bins.example.json"
SCRAPE = ROOT / "deploy" / "prometheus" / "ecosorter.yml"
# PromQL's own words: functions, aggregations, keywords (everything else that looks like a name is a metric)
PROMQL = {"sum", "count", "max", "min", "avg", "rate", "increase", "histogram_quantile", "vector", "by",
          "without", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "bool", "topk"}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every scrape target, not by the bin


def exported_samples() -> set[str]:
    """Sample names on a real bin's /metrics, with a hold, a fault, items and latencies recorded."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from ecosorter.edge.machine import Machine
    from ecosorter.edge.record.event import Event
    from ecosorter.edge.status.board import StatusBoard
    from ecosorter.edge.status.server import start_status_server

    board = StatusBoard("bin7", {"kaca": "Kaca", "logam": "Logam"}, {"kaca": 0, "logam": 1})
    for label, uncertain in (("kaca", False), ("logam", True)):
        board.record(Event(label=label, confidence=0.9, probabilities={label: 0.9}, uncertain=uncertain,
                           compartment=0, routed_to=0, routed_ok=True, frames=1, model_sha256="0" * 64,
                           latency_ms={"total": 40.0}, bin_id="bin7"))
    m = Machine()
    m.raise_("jam", "test")
    m.set_hold("full", True, compartment=1)
    board.set_machine(m.snapshot())
    board.set_fill({1: True})
    board.set_health("camera", True)
    server = start_status_server(board, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r'"[^"]*"', "", expr)  # label values
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    return {n for n in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if n not in PROMQL}


def test_every_dashboard_query_names_a_metric_the_bin_exports():
    exported = exported_samples()
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 30 and dash["panels"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert metric_names(variables["bin"]["query"]["query"].split("(", 1)[1].split(",")[0]) <= exported
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(queries) >= 10
    unknown = {q: metric_names(q) - exported - PROMETHEUS_OWN for q in queries}
    assert not any(unknown.values()), {q: n for q, n in unknown.items() if n}
    assert all(metric_names(q) for q in queries)  # each query reads at least one metric
    # what the issue asks the dashboard to show
    used = set().union(*map(metric_names, queries))
    for needed in ("ecosorter_items_total", "ecosorter_holds", "ecosorter_faults", "ecosorter_compartment_full",
                   "ecosorter_uncertain_total", "ecosorter_decision_latency_seconds_bucket"):
        assert needed in used
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    assert all("$bin" in q for q in queries if "ecosorter_" in q)  # the bin picker applies everywhere


def test_the_checker_catches_a_metric_the_bin_does_not_export():
    assert metric_names('sum by (bin) (rate(ecosorter_itemz_total{bin=~"$bin"}[5m]))') == {"ecosorter_itemz_total"}


def test_file_sd_example_and_scrape_config_load():
    groups = json.loads(FILE_SD.read_text())
    assert groups and all(re.fullmatch(r"[A-Za-z0-9.-]+:\d+", t) for g in groups for t in g["targets"])
    assert all(isinstance(g.get("labels", {}), dict) for g in groups)
    text = SCRAPE.read_text()  # (no YAML parser among the dependencies: the lines that matter)
    assert re.search(r"^\s+metrics_path: /metrics$", text, re.M)
    files = re.search(r'^\s+- files: \["([^"]+)"\]$', text, re.M)
    assert files and files[1].endswith(".json")  # where FILE_SD's copies go
