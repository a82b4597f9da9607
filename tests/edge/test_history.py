"""The history page: recent items from the real event log with their kept photos, filters, the model
panel, and labelling behind the page token, in real headless Chromium at both kiosk sizes."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.model.loader import read_manifest
from ecosorter.edge.sorter import build_sorter
from ecosorter.edge.status.history import History, HistoryError, model_panel
from ecosorter.edge.status.server import start_status_server
from tests.conftest import SAMPLES
from tests.edge.browser import SCREENS, Browser, request
from tests.edge.test_page_states import SHOTS

TOKEN = "history-token-0123456789"


@pytest.fixture(scope="module")
def sorted_bin(tmp_path_factory):
    """The 13 bundled photos sorted by the real sorter (mock pins), every photo kept; two marked."""
    state = tmp_path_factory.mktemp("bin")
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES),
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0, "record.capture": "all",
                                 "hardware.compartment_names": ["A", "B", "C", "D", "E", "F", "G"]})
    with build_sorter(cfg, state_dir=state) as sorter:
        sorter.run()
        events = sorter.events.query("SELECT id, label FROM events ORDER BY seq")
        panel = model_panel(sorter.model, sorter.model.classifier.runtime)
        sorter.flag(events[2]["id"])  # a person said "wrong?"...
        other = "kaca" if events[5]["label"] != "kaca" else "kertas"
        sorter.label(events[5]["id"], other, "ops")  # ...and this one was something else
    return state, [dict(e) for e in events], panel, other


def history(state, panel=None) -> History:
    from ecosorter.edge.machine import compartment_label
    from tests.edge.page_states import LABELS

    return History(state / "events.db", state / "captures", LABELS, model=lambda: panel or {},
                   compartment_name=lambda c: compartment_label(c, ["A", "B", "C", "D", "E", "F", "G"]))


def test_items_newest_first_with_photos_flags_and_filters(sorted_bin):
    state, events, _, other = sorted_bin
    h = history(state)
    got = h.items("")
    assert [i["id"] for i in got["items"]] == [e["id"] for e in reversed(events)] and not got["more"]
    by_id = {i["id"]: i for i in got["items"]}
    assert all(i["photo"] for i in got["items"])  # capture = all
    assert by_id[events[2]["id"]]["flags"] == ["flagged"] or "flagged" in by_id[events[2]["id"]]["flags"]
    assert "wrong" in by_id[events[5]["id"]]["flags"] and by_id[events[5]["id"]]["true_label"] == other
    assert {i["compartment_name"] for i in got["items"]} <= set("ABCDEFG")
    wrong = h.items("wrong=1")["items"]
    assert {i["id"] for i in wrong} == {events[2]["id"], events[5]["id"]}
    # class: the true label where a person gave one, else the predicted one
    kind = events[0]["label"]
    same = [i["id"] for i in h.items(f"class={kind}")["items"]]
    expect = [e["id"] for e in reversed(events) if (other if e["id"] == events[5]["id"] else e["label"]) == kind]
    assert same == expect and same
    assert events[5]["id"] in [i["id"] for i in h.items(f"class={other}")["items"]]
    # paging: limit, then before the last seq shown
    first = h.items("limit=5")
    assert len(first["items"]) == 5 and first["more"]
    rest = h.items(f"limit=50&before={first['items'][-1]['seq']}")["items"]
    assert [i["id"] for i in first["items"] + rest] == [e["id"] for e in reversed(events)]
    jpeg = h.photo(events[0]["id"])
    assert jpeg is not None and jpeg[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(("query", "message"), [
    ("class=glass", "class must be one of kaca"), ("wrong=yes", "wrong must be 1 or 0"),
    ("limit=0", "limit must be 1-200"), ("limit=-1", "limit must be a whole number"),
    ("before=1e9", "before must be a whole number"), ("sort=time", "unknown parameter 'sort'"),
    ("a=1&b=2&c=3&d=4&e=5", "bad query"), ("class", "bad query"),
])
def test_bad_queries_are_named(sorted_bin, query, message):
    with pytest.raises(HistoryError, match=message):
        history(sorted_bin[0]).items(query)


def test_a_photo_path_from_the_log_stays_inside_captures(sorted_bin, tmp_path):
    import shutil

    state = tmp_path / "s"
    shutil.copytree(sorted_bin[0], state)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff not yours")
    ids = [r[0] for r in sqlite3.connect(state / "events.db").execute("SELECT id FROM events ORDER BY seq")]
    with sqlite3.connect(state / "events.db") as db:
        db.execute("UPDATE events SET image = ? WHERE id = ?", ("../../secret.jpg", ids[0]))
        db.execute("UPDATE events SET image = ? WHERE id = ?", (str(secret), ids[1]))
        db.execute("UPDATE events SET image = ? WHERE id = ?", ("kaca/missing.jpg", ids[2]))
    h = history(state)
    assert h.photo(ids[0]) is None and h.photo(ids[1]) is None and h.photo(ids[2]) is None
    assert h.photo("../../secret") is None
    photos = {i["id"]: i["photo"] for i in h.items("")["items"]}
    assert not photos[ids[0]] and not photos[ids[1]] and not photos[ids[2]] and photos[ids[3]]


def test_without_an_event_log_the_page_says_so(tmp_path):
    h = history(tmp_path / "none")
    assert h.items("") == {"items": [], "more": False, "note": "no event log yet"}
    assert h.photo("0" * 32) is None and not (tmp_path / "none").exists()


def test_model_panel_reads_the_manifest(sorted_bin):
    panel = sorted_bin[2]
    assert panel["file"] == "demo_int8.tflite" and len(panel["sha256"]) == 64 and panel["runtime"]
    assert panel["verification"]["images"] == 349 and panel["source"]["format"] == "h5"
    demo = SAMPLES.parent / "demo_int8.tflite"
    assert panel["installed"] and panel["version"] == read_manifest(demo.read_bytes(), demo).version
    # the converter's gate passed; no install record was given here: signed is "not recorded"
    assert panel["trust"] == {"verified": True}


@pytest.fixture()
def served(sorted_bin, tmp_path):
    import shutil

    from ecosorter.edge.record.events import EventLog
    from tests.edge.page_states import base

    state = tmp_path / "s"
    shutil.copytree(sorted_bin[0], state)
    labelled: list[tuple[str, str, str]] = []
    log = EventLog(state / "events.db")

    def on_label(event_id: str, label: str, who: str) -> bool:  # the event log's own setter, as the sorter's
        labelled.append((event_id, label, who))
        return log.set_label(event_id, label, who)

    server = start_status_server(base(), "127.0.0.1", 0, on_label=on_label, token=TOKEN,
                                 history=history(state, sorted_bin[2]))
    yield f"http://127.0.0.1:{server.server_port}", state, labelled
    server.shutdown()
    log.close()


def test_endpoints_answer_and_refuse(served):
    base, _, _ = served
    code, body = request(base + "/api/history?limit=3")
    assert code == 200 and len(json.loads(body)["items"]) == 3
    assert request(base + "/api/history?limit=999")[0] == 400
    assert json.loads(request(base + "/api/history?x=1")[1]) == {"error": "unknown parameter 'x'; known: class, "
                                                                         "wrong, limit, before"}
    assert request(base + "/api/history/photo/..%2F..%2Fevents.db.jpg")[0] == 404
    code, body = request(base + "/api/model")
    assert code == 200 and json.loads(body)["verification"]["images"] == 349
    code, page = request(base + "/history")
    assert code == 200 and b'src="/history.js"' in page and b"<script>" not in page
    host = base.split("//", 1)[1]
    item = json.loads(request(base + "/api/history?limit=1")[1])["items"][0]["id"]
    code, _ = request(base + f"/api/label/{item}", "POST", b'{"label": "kaca"}', {"Origin": f"http://{host}"})
    assert code == 403  # labelling from the history page needs the token, as on the kiosk


def test_history_without_a_log_on_the_server_is_404():
    from tests.edge.page_states import base

    server = start_status_server(base(), "127.0.0.1", 0)
    try:
        assert request(f"http://127.0.0.1:{server.server_port}/history")[0] == 404
    finally:
        server.shutdown()


OVERFLOW_JS = ("document.documentElement.scrollWidth <= innerWidth && "
               "[...document.querySelectorAll('header, #model, dl *')].every((e) => e.scrollWidth <= e.clientWidth + 1)")


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SCREENS))
def test_history_page_in_chromium_filters_and_labels(served, sorted_bin, size, tmp_path):
    base, state, labelled = served
    _, events, _, other = sorted_bin
    browser = Browser(tmp_path / "desk", SCREENS[size])
    try:
        browser.open(base + "/history")
        assert browser.wait("document.body.dataset.loaded") == "13"
        assert browser.wait("[...document.querySelectorAll('#rows img')].every((i) => i.complete) && "
                            "document.querySelectorAll('#rows img').length") == 13
        panel = browser.js("document.getElementById('modelinfo').innerText")
        demo = SAMPLES.parent / "demo_int8.tflite"  # the demo's own figures, whichever demo ships
        v = read_manifest(demo.read_bytes(), demo).verification
        assert "demo_int8.tflite" in panel and f"{v['images']} foto / photos" in panel
        assert f"Keras {100 * v['keras_accuracy']:.1f}%" in panel
        assert "Verified" in panel and "tidak tercatat / not recorded" in panel
        assert browser.js(OVERFLOW_JS), "the history page overflows sideways"
        browser.screenshot(SHOTS / "history.png" if size == "1024x600" else tmp_path / "history.png")
        # "wrong only": the flagged and the mislabelled item
        browser.js("{ const w = document.getElementById('wrong'); w.checked = true; w.onchange(); }")
        assert browser.wait("document.body.dataset.loaded === '2' && location.search") == "?wrong=1"
        shown = browser.js("[...document.querySelectorAll('#rows tr')].map((r) => r.dataset.id)")
        assert set(shown) == {events[2]["id"], events[5]["id"]}
        tags = browser.js(f"document.querySelector(\"tr[data-id='{events[5]['id']}']\").innerText")
        assert "salah / wrong" in tags
        # by class
        browser.js("{ const w = document.getElementById('wrong'); w.checked = false; "
                   f"const c = document.getElementById('class'); c.value = '{other}'; c.onchange(); }}")
        expect = sum((other if e["id"] == events[5]["id"] else e["label"]) == other for e in events)
        assert browser.wait(f"location.search === '?class={other}' && document.body.dataset.loaded === '{expect}' "
                            "&& [...document.querySelectorAll('#rows tr')].map((r) => r.dataset.kind)"
                            ) == [other] * expect
        # label the first row from the page: loopback kiosk browser, so the page carries the token
        first = browser.js("document.querySelector('#rows tr').dataset.id")
        browser.js(f"{{ const s = document.querySelector(\"select[data-id='{first}']\"); s.value = 'logam'; s.onchange(); }}")
        assert browser.wait(f"document.querySelector(\"select[data-id='{first}']\").classList.contains('saved') "
                            "&& 'saved'") == "saved"
    finally:
        browser.close()
    assert labelled[-1] == (first, "logam", "page@127.0.0.1")
    with sqlite3.connect(state / "events.db") as db:
        assert db.execute("SELECT true_label FROM events WHERE id = ?", (first,)).fetchone()[0] == "logam"


def test_model_panel_says_verified_and_signed_as_the_bin_knows_them(tmp_path):
    """The manifest keeps `verified` inside its verification figures and the signer is in the install
    record: the panel said "not recorded" for a signed, verified model. The bin's describe_running knows."""
    import shutil

    from ecosorter.edge.model import load_model
    from ecosorter.edge.model.store import ModelStore
    from ecosorter.edge.model.trust import describe_running
    from ecosorter.edge.security import new_keypair, sign_file

    key, pub = new_keypair()
    cfg = load_config(overrides={"model.public_key": pub})
    model = tmp_path / "m.tflite"
    shutil.copyfile(SAMPLES.parent / "demo_int8.tflite", model)
    store = ModelStore.from_config(cfg, tmp_path / "state")
    store.install(model, None, sign_file(key, model.read_bytes()), "auto")

    with load_model(store.current) as m:
        running = describe_running(m, store, False)
        panel = model_panel(m, "litert", running)
        assert panel["trust"]["verified"] is True and running["key_id"] != ""
        assert panel["trust"]["signed"] == f"key {running['key_id']}"
        assert "signed" not in model_panel(m, "litert")["trust"]  # without the bin's word: "not recorded"
