"""Home Assistant discovery of a real bin (the real sorter, a real Mosquitto): every payload is checked
against what HA requires, and every template is rendered with Jinja2 (HA's engine) against the
bin's real retained state, with a jam and a full compartment raised; the clear_fault button is pressed
through the broker and the bin clears its fault."""

from __future__ import annotations

import json
import re

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.machine import CONDITIONS
from tests.conftest import SAMPLES
from tests.fleet.conftest import wait

pytestmark = pytest.mark.broker
jinja2 = pytest.importorskip("jinja2")

# HA: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-]
TOPIC = re.compile(r"homeassistant/(sensor|binary_sensor|button)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config")


def render(template: str, state: dict) -> str:
    # HA renders value templates with `value_json` (the payload parsed as JSON)
    return jinja2.Environment().from_string(template).render(value_json=state).strip()


def test_discovery_payloads_are_what_home_assistant_needs_and_the_button_clears_a_jam(mosquitto, tmp_path):
    import paho.mqtt.client as mqtt

    from ecosorter.edge.sorter import build_sorter

    retained: dict[str, bytes] = {}
    results: list[dict] = []

    def on_message(cl, u, m):
        if m.topic.endswith("/cmd/result"):
            results.append(json.loads(m.payload))
        else:
            retained[m.topic] = m.payload

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe("ecosorter/#"), cl.subscribe("homeassistant/#"))
    c.on_message = on_message
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    cfg = load_config(overrides={
        "camera.source": "folder", "camera.device": str(SAMPLES), "hardware.pin_factory": "mock",
        "hardware.led_on_s": 0.0, "mqtt.enabled": True, "mqtt.port": mosquitto.port, "bin_id": "site2-bin7",
        "record.state_dir": str(tmp_path), "commands.trust_broker_for": ["clear_fault"]})
    try:
        with build_sorter(cfg) as s:
            s.run()
            s.machine.raise_("jam", "chute did not leave 0 deg")
            s.machine.set_hold("full", True, compartment=2)
            s._last_state_t = -1e9
            s.housekeeping()
            assert wait(lambda: b'"jam"' in retained.get("ecosorter/site2-bin7/state", b""), 20)
            state = json.loads(retained["ecosorter/site2-bin7/state"])
            disc = {t: json.loads(p) for t, p in retained.items() if t.startswith("homeassistant/")}

            # what HA requires of each payload
            assert disc and all(TOPIC.fullmatch(t) for t in disc), sorted(disc)
            ids = [p["unique_id"] for p in disc.values()]
            assert len(set(ids)) == len(ids), "unique_id must be unique"
            for topic, p in disc.items():
                component = TOPIC.fullmatch(topic)[1]
                assert p["device"]["identifiers"] == ["ecosorter_site2-bin7"]  # one device per bin
                assert p["availability_topic"] == "ecosorter/site2-bin7/availability"
                if component == "button":
                    assert p["command_topic"] == "ecosorter/site2-bin7/cmd"
                else:
                    assert p["state_topic"] == "ecosorter/site2-bin7/state"
                    assert render(p["value_template"], state) not in ("", "None")
            by_id = {TOPIC.fullmatch(t)[3]: p for t, p in disc.items()}  # by object id
            assert by_id["kaca"]["unique_id"] == "ecosorter_site2-bin7_kaca_today"  # as before: HA keeps it

            # holds and faults: one binary sensor per name in the machine's registry, with the words
            for name, cond in CONDITIONS.items():
                assert f"{cond.kind}_{name}" in by_id
            jam = by_id["fault_jam"]
            assert render(jam["value_template"], state) == "ON"
            words = json.loads(render(jam["json_attributes_template"], state))
            assert words["reason_en"] == "Jammed: chute did not leave 0 deg" and words["action_id"]
            assert render(by_id["hold_lid"]["value_template"], state) == "OFF"
            assert json.loads(render(by_id["hold_lid"]["json_attributes_template"], state)) == {}
            # fill and items per compartment, today's items, uncertain share, model version
            assert render(by_id["full_2"]["value_template"], state) == "ON"
            assert render(by_id["full_0"]["value_template"], state) == "OFF"
            per_comp = sum(int(render(by_id[f"compartment_{i}_items"]["value_template"], state)) for i in range(7))
            assert per_comp + state["unrouted"] == int(render(by_id["items"]["value_template"], state)) == 13
            assert 0.0 <= float(render(by_id["uncertain_share"]["value_template"], state)) <= 100.0
            assert render(by_id["model_version"]["value_template"], state) == str(s.model.manifest.version)
            assert json.loads(render(by_id["model_version"]["json_attributes_template"], state))["sha256"] == \
                s.model.sha256

            # the button, pressed as HA presses it: its payload on its command topic (trusted by ACL)
            button = by_id["clear_fault"]
            c.publish(button["command_topic"], button["payload_press"], qos=button["qos"]).wait_for_publish(10)
            assert wait(lambda: any(r.get("action") == "clear_fault" for r in results), 20), results
            assert [r for r in results if r.get("action") == "clear_fault"][0]["ok"] is True
            assert not s.machine.faulted
            s._last_state_t = -1e9
            s.housekeeping()
            assert wait(lambda: b'"jam"' not in retained["ecosorter/site2-bin7/state"], 20)
            assert render(jam["value_template"], json.loads(retained["ecosorter/site2-bin7/state"])) == "OFF"
    finally:
        c.loop_stop()
        c.disconnect()


def test_no_button_where_clear_fault_must_be_signed():
    from ecosorter.edge.record.ha import discovery

    entities = discovery("bin7", "ecosorter/bin7", {"kaca": "Kaca"}, {"kaca": 0})
    assert not [t for t, _ in entities if "/button/" in t]
    with_button = discovery("bin7", "ecosorter/bin7", {"kaca": "Kaca"}, {"kaca": 0}, {"clear_fault"})
    assert [t for t, _ in with_button if "/button/" in t] == ["homeassistant/button/ecosorter_bin7/clear_fault/config"]
