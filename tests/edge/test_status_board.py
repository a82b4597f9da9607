"""The board's counts are what physically happened, and /metrics says the same through prometheus-client."""

from __future__ import annotations

import io
import json

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from ecosorter.edge.status import StatusBoard
from ecosorter.edge.status import board as board_module
from ecosorter.edge.status.server import start_status_server
from tests.edge.browser import request
from tests.edge.page_states import COMPARTMENTS, LABELS, entry, item


def test_counts_per_compartment_reroutes_and_unrouted_apart():
    board = StatusBoard("b1", LABELS, COMPARTMENTS)
    item(board, "logam")  # -> 4
    item(board, "logam")  # -> 4
    item(board, "logam", routed_to=3, note="compartment 4 full: to the fallback")  # rerouted into 3
    item(board, "kaca", 0.4, uncertain=True)  # uncertain: meant for 3 (khusus), went there
    item(board, "kertas", routed_to=-1, note="lid open")  # decided, not routed
    snap = board.snapshot()
    by = {c["index"]: c for c in snap["compartments"]}
    assert [c["index"] for c in snap["compartments"]] == list(range(7))  # every compartment, used or not
    assert (by[4]["count"], by[4]["rerouted_in"]) == (2, 0)
    assert (by[3]["count"], by[3]["rerouted_in"], by[3]["labels"]) == (2, 1, ["khusus"])
    assert by[2]["count"] == 0 and snap["unrouted"] == 1 and snap["today"]["unrouted"] == 1
    assert snap["today"]["counts"]["logam"] == 3 and snap["today"]["counts"]["kertas"] == 1  # per label beside
    assert snap["today"]["uncertain"] == 1 and snap["total"] == 5
    assert sum(c["count"] for c in snap["compartments"]) + snap["unrouted"] == snap["total"]
    board.set_fill({4: True})
    assert {c["index"]: c["full"] for c in board.snapshot()["compartments"]}[4] is True
    json.dumps(board.snapshot())  # what the page, MQTT state and /api/status carry


def test_without_a_map_the_board_learns_compartments_from_confident_items():
    board = StatusBoard("b1", LABELS)
    item(board, "kaca")
    item(board, "logam", 0.3, uncertain=True)  # says nothing about logam's compartment
    comps = board.snapshot()["compartments"]
    assert [(c["index"], c["labels"], c["count"]) for c in comps] == [(0, ["kaca"], 1), (3, [], 1)]


def test_recent_items_are_bounded_with_lazy_photos_and_marks():
    board = StatusBoard("b1", LABELS, COMPARTMENTS)
    events = [item(board, "kardus", encode=False) for _ in range(board_module.RECENT + 3)]
    snap = board.snapshot()
    assert [r["id"] for r in snap["recent"]] == [e.id for e in reversed(events[-board_module.RECENT:])]
    # No page asked: only the newest RAW_KEPT frames are held (by reference, nothing encoded on the loop).
    assert [r["photo"] for r in snap["recent"]] == [True] * board_module.RAW_KEPT + [False] * (
        board_module.RECENT - board_module.RAW_KEPT)
    assert all(isinstance(v, tuple) for v in board._photos.values()) and len(board._photos) == board_module.RAW_KEPT
    assert board.photo(events[0].id) is None and board.photo(events[-5].id) is None
    board.encode_pending()  # what the server does before each /api/status
    jpeg = board.photo(events[-1].id)
    assert jpeg[:3] == b"\xff\xd8\xff" and board.photo(events[-1].id) is jpeg  # encoded once, kept
    with Image.open(io.BytesIO(jpeg)) as im:
        assert max(im.size) <= board_module.THUMB_MAX_PX
    # With the page polling between items, every recent item keeps its photo.
    for _ in range(board_module.RECENT):
        item(board, "kaca")  # encodes after each, as the polling page does
    assert all(r["photo"] for r in board.snapshot()["recent"])
    assert all(isinstance(v, bytes) for v in board._photos.values()) and len(board._photos) == board_module.RECENT
    last = board.snapshot()["recent"][1]["id"]
    board.flagged(last)
    board.labelled(last, "kertas")
    board.flagged("f" * 32)  # unknown: ignored
    r = board.snapshot()["recent"][1]
    assert (r["id"], r["flagged"], r["true_label"]) == (last, True, "kertas")


def test_day_rollover_resets_today_not_totals(monkeypatch):
    board = StatusBoard("b1", LABELS, COMPARTMENTS)
    item(board, "kaca")
    item(board, "kaca", routed_to=-1)
    monkeypatch.setattr(board_module, "_today", lambda: "2099-01-01")
    snap = board.snapshot()
    assert snap["today"] == {"date": "2099-01-01", "counts": dict.fromkeys(LABELS, 0), "uncertain": 0, "unrouted": 0}
    assert snap["compartments"][0]["count"] == 0 and snap["compartments"][0]["total"] == 1
    assert snap["totals"]["counts"]["kaca"] == 2 and snap["totals"]["unrouted"] == 1 and snap["total"] == 2


def test_metrics_parse_with_every_series_labelled_and_escaped():
    bin_id = 'kantin "lt2" \\ #1\nx'  # quotes, a backslash and a newline: the library escapes them
    board = StatusBoard(bin_id, LABELS, COMPARTMENTS)
    for label in ("kaca", "logam", "logam"):
        item(board, label)
    item(board, "logam", routed_to=3)
    item(board, "kertas", routed_to=-1)
    board.set_health("model", True, "ok")
    board.set_health("disk", False, "full")
    board.set_link("mqtt", "disconnected", "connection refused")
    board.set_machine({"state": "held", "faults": [], "holds": [entry("lid", "a", "b", "c", "d"),
                                                                  entry("full", "a", "b", "c", "d", 4)]})
    server = start_status_server(board, "127.0.0.1", 0)
    try:
        code, text = request(f"http://127.0.0.1:{server.server_port}/metrics")
        board.set_machine({"state": "ready", "holds": [], "faults": []})
        _, after = request(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    samples = [s for f in families.values() for s in f.samples]
    assert samples and all(s.labels["bin"] == bin_id for s in samples)

    def values(family: str, key: str, suffix: str = "") -> dict:
        return {s.labels.get(key): s.value for s in families[family].samples if s.name == family + suffix}

    assert values("ecosorter_items_today", "label")["logam"] == 3
    assert values("ecosorter_items", "label", "_total")["logam"] == 3
    assert families["ecosorter_items"].type == "counter"
    assert values("ecosorter_compartment_items_today", "compartment") == {
        "0": 1, "1": 0, "2": 0, "3": 1, "4": 2, "5": 0, "6": 0}
    assert values("ecosorter_compartment_rerouted_in_today", "compartment")["3"] == 1
    assert values("ecosorter_unrouted_today", "bin") == {bin_id: 1}
    assert values("ecosorter_health", "part") == {"model": 1, "disk": 0}
    assert values("ecosorter_holds", "name") == {"full": 1, "lid": 1}
    assert values("ecosorter_machine_state", "state") == {"ready": 0, "held": 1, "fault": 0}
    assert {(s.labels["link"], s.labels["state"]): s.value for s in families["ecosorter_link"].samples} == {
        ("mqtt", "disconnected"): 1}
    lat = families["ecosorter_decision_latency_seconds"]
    assert lat.type == "histogram"
    by_name = {(s.name, s.labels.get("le")): s.value for s in lat.samples}
    assert by_name[("ecosorter_decision_latency_seconds_count", None)] == 5
    assert by_name[("ecosorter_decision_latency_seconds_sum", None)] == 5 * 0.140
    assert by_name[("ecosorter_decision_latency_seconds_bucket", "0.1")] == 0
    assert by_name[("ecosorter_decision_latency_seconds_bucket", "0.2")] == 5
    # A hold that cleared stays as a 0-valued series: alerts see it end.
    later = {f.name: f for f in text_string_to_metric_families(after.decode())}
    assert {s.labels["name"]: s.value for s in later["ecosorter_holds"].samples} == {"full": 0, "lid": 0}
