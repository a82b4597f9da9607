"""Home Assistant discovery for label ids a model may carry (`e-waste`, `9volt`: the manifest allows
A-Z a-z 0-9 _ -): every template must render in Jinja2 (HA's engine) to the label's own count."""

from __future__ import annotations

import dataclasses

import pytest

from ecosorter.edge.model.loader import read_manifest
from ecosorter.edge.model.manifest import Label, Manifest
from ecosorter.edge.record.ha import discovery
from tests.conftest import SAMPLES

jinja2 = pytest.importorskip("jinja2")
IDS = ["e-waste", "9volt", "a_b", "kaca", "x-1", "kardus-2", "if"]


def test_label_ids_with_a_dash_or_a_digit_first_render_their_own_count():
    demo = read_manifest((SAMPLES.parent / "demo_int8.tflite").read_bytes())
    m = dataclasses.replace(demo, labels=tuple(Label(i, i.upper()) for i in IDS), decision=None)  # its thresholds name the old ids
    labels = {lb.id: lb.name for lb in Manifest.from_json(m.to_json()).labels}  # the manifest accepts them
    counts = {i: n for n, i in enumerate(IDS, 3)}
    state = {"today": {"counts": counts}}
    seen = {}
    for _topic, payload in discovery("bin7", "ecosorter/bin7", labels):
        if payload["unique_id"].endswith("_today"):
            label = payload["unique_id"][len("ecosorter_bin7_"):-len("_today")]
            seen[label] = jinja2.Environment().from_string(payload["value_template"]).render(value_json=state)
    assert seen == {i: str(n) for i, n in counts.items()}
    # a label without items today is 0, not an error
    empty = next(p for t, p in discovery("bin7", "ecosorter/bin7", labels) if p["unique_id"].endswith("e-waste_today"))
    assert jinja2.Environment().from_string(empty["value_template"]).render(value_json={"today": {"counts": {}}}) == "0"


def test_labels_named_like_the_bins_own_sensors_do_not_overwrite_them():
    """Discovery configs are retained per topic: a label `items` or `last` on the same topic as the
    bin's "Items today" or "Last item" would replace one entity with the other in Home Assistant."""
    labels = {i: i for i in ("last", "items", "uncertain_share", "model_version", "compartment_0_items", "kaca")}
    out = discovery("bin7", "ecosorter/bin7", labels, compartments={"kaca": 0, "last": 1})
    topics = [t for t, _ in out]
    assert len(topics) == len(set(topics)), sorted(t for t in topics if topics.count(t) > 1)
    ids = [p["unique_id"] for _, p in out]
    assert len(ids) == len(set(ids))
    assert {f"ecosorter_bin7_{i}_today" for i in labels} <= set(ids)  # unique ids as before: HA keeps its entities
