"""Home Assistant MQTT discovery for one bin: one device, its entities, from the bin's retained state.

Every entity reads `<prefix>/<bin_id>/state` (retained, JSON) and is available while
`<prefix>/<bin_id>/availability` says "online" (the bin's last will says "offline").
Topics are `homeassistant/<component>/ecosorter_<bin_id>/<object_id>/config`, retained, so HA
finds the bin whenever it (re)starts; the per-bin ACL in docs/security.md allows exactly these.

    binary_sensor  one per hold/fault of edge/machine.py's registry (ON while raised; the words a
                   person needs are its attributes), one "full" per compartment
    sensor         items per label today, items per compartment today, items today, uncertain share,
                   model version, last item
    button         clear_fault, only where `commands.trust_broker_for` lists it (else the bin would
                   refuse every press: it must be signed)
"""

from __future__ import annotations

import json

from ecosorter.edge.machine import CONDITIONS

PREFIX = "homeassistant"


def discovery(bin_id: str, base: str, labels: dict[str, str], compartments: dict[str, int] | None = None,
              trusted: frozenset[str] | set[str] = frozenset()) -> list[tuple[str, dict]]:
    """(topic, payload) for every entity of this bin. `base` is `<prefix>/<bin_id>`; `labels` id -> name;
    `compartments` label -> compartment index (the bin's routing)."""
    node = f"ecosorter_{bin_id}"
    state = f"{base}/state"
    device = {"identifiers": [node], "name": f"EcoSorter {bin_id}", "manufacturer": "EcoSorter Edge",
              "model": "EcoSorter Edge bin"}
    common = {"device": device, "availability_topic": f"{base}/availability",
              "payload_available": "online", "payload_not_available": "offline"}
    out: list[tuple[str, dict]] = []

    def add(component: str, object_id: str, payload: dict, unique: str = "") -> None:
        out.append((f"{PREFIX}/{component}/{node}/{object_id}/config",
                    {"unique_id": f"{node}_{unique or object_id}", **payload, **common}))

    # unique ids are what HA keys its entities on: the per-label ones keep their first form
    # (`<label>_today`), and no other id ends in `_today`, so no label can collide with them
    # a label named like one of the bin's own sensors (`items`, `last`) gets another topic: configs are
    # retained per topic, and one would replace the other in HA (its unique id stays `<label>_today`)
    used = {"last", "items", "uncertain_share", "model_version",
            *(f"compartment_{c}_items" for c in set((compartments or {}).values()))}
    for label, name in labels.items():
        object_id = label
        while object_id in used:
            object_id += "_label"
        used.add(object_id)
        add("sensor", object_id, unique=f"{label}_today", payload={
            "name": f"{name} today", "state_topic": state, "state_class": "total_increasing",
            # subscript, not `.{label}`: ids may hold `-` or start with a digit (a quote they cannot hold)
            "unit_of_measurement": "items",
            "value_template": f"{{{{ value_json.today.counts['{label}'] | default(0) }}}}"})
    add("sensor", "last", {"name": "Last item", "state_topic": state,
                           "value_template": "{{ value_json.last.label if value_json.last else 'none' }}"})
    add("binary_sensor", "health", {"name": "Health", "device_class": "problem", "state_topic": state,
                                    "value_template": "{{ 'OFF' if value_json.healthy else 'ON' }}"})
    add("sensor", "items", {"name": "Items today", "state_topic": state, "state_class": "total_increasing",
                                  "unit_of_measurement": "items",
                                  "value_template": "{{ value_json.items_today | default(0) }}"})
    add("sensor", "uncertain_share", {"name": "Uncertain share today", "state_topic": state,
                                      "state_class": "measurement", "unit_of_measurement": "%",
                                      "value_template": "{{ ((value_json.uncertain_share or 0) * 100) | round(1) }}"})
    add("sensor", "model_version", {"name": "Model version", "state_topic": state, "entity_category": "diagnostic",
                                    "value_template": "{{ value_json.model.version if value_json.model else 'unknown' }}",
                                    "json_attributes_topic": state,
                                    "json_attributes_template": "{{ (value_json.model or {}) | tojson }}"})
    for name, cond in CONDITIONS.items():
        group = "holds" if cond.kind == "hold" else "faults"
        raised = f"value_json.machine.{group} | selectattr('name', 'equalto', '{name}') | list"
        add("binary_sensor", f"{cond.kind}_{name}", {
            "name": f"{cond.kind.capitalize()}: {name}", "device_class": "problem", "state_topic": state,
            "value_template": f"{{{{ 'ON' if ({raised}) else 'OFF' }}}}",
            "json_attributes_topic": state,
            # the words for a person: reason and action, in Indonesian and English, while raised
            "json_attributes_template": f"{{% set e = ({raised}) %}}{{{{ (e[0] if e else {{}}) | tojson }}}}"})
    for c in sorted(set((compartments or {}).values())):
        add("binary_sensor", f"full_{c}", {
            "name": f"Compartment {c} full", "device_class": "problem", "state_topic": state,
            "value_template": (f"{{{{ 'ON' if (value_json.compartments | selectattr('index', 'equalto', {c}) "
                               "| selectattr('full') | list) else 'OFF' }}")})
        add("sensor", f"compartment_{c}_items", {
            "name": f"Compartment {c} today", "state_topic": state, "state_class": "total_increasing",
            "unit_of_measurement": "items",
            "value_template": (f"{{% set x = value_json.compartments | selectattr('index', 'equalto', {c}) | list %}}"
                               "{{ x[0].count if x else 0 }}")})
    if "clear_fault" in trusted:
        add("button", "clear_fault", {"name": "Clear fault (mechanism is free)", "command_topic": f"{base}/cmd",
                                      "payload_press": json.dumps({"action": "clear_fault", "by": "home-assistant"}),
                                      "qos": 1, "retain": False})
    return out
