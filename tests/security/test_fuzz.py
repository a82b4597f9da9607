"""Hypothesis fuzzing: the command parser, the command worker and the manifest reader raise nothing
but the project's own errors, whatever bytes they are given."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecosorter.edge.commands import ACTIONS, Callbacks, CommandError, CommandProcessor, parse_command
from ecosorter.edge.config import load_config
from ecosorter.edge.errors import EcoSorterError, ModelError
from ecosorter.edge.model.loader import read_manifest
from ecosorter.edge.model.manifest import Manifest
from tests.security.conftest import DEMO

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
KEYS = sorted({k for a in ACTIONS.values() for k in (*a.required, *a.optional)} | {"bin_id", "ts", "nonce", "sig"})
COMMANDS = st.fixed_dictionaries({"action": st.sampled_from([*ACTIONS, "format_disk"])},
                                 optional={k: JSON | st.text(max_size=100) for k in KEYS})


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), COMMANDS.map(lambda d: json.dumps(d).encode()),
                 JSON.map(lambda d: json.dumps(d).encode())))
def test_the_command_parser_raises_only_command_errors(payload):
    try:
        cmd = parse_command(payload)
    except CommandError:
        return
    assert isinstance(cmd, dict) and cmd["action"] in ACTIONS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(COMMANDS.map(lambda d: json.dumps(d).encode()))
def test_the_command_worker_answers_everything_and_never_raises(tmp_path, payload):
    cfg = load_config(overrides={"commands.trust_broker_for": ["flag", "label", "clear_fault"]})
    flagged = []
    worker = CommandProcessor(cfg, None, tmp_path, Callbacks(flag=lambda i: flagged.append(i) or True))
    r = worker.handle(payload)
    assert set(r) <= {"action", "ok", "error", "nonce", "id", "flagged", "label", "cleared", "note"}
    assert isinstance(r["ok"], bool) and "internal error" not in r.get("error", "")  # no unexpected exception
    if r["ok"]:  # only the trusted action with a callback can succeed unsigned
        assert r["action"] == "flag" and flagged == [r["id"]]


def _valid() -> dict:
    return json.loads(read_manifest(DEMO.read_bytes()).to_json())


PATHS = [("labels",), ("labels", 0), ("labels", 0, "id"), ("labels", 0, "name"), ("input",), ("input", "height"),
         ("input", "dtype"), ("input", "quantization"), ("input", "quantization", "scale"),
         ("input", "quantization", "zero_point"), ("preprocess",), ("preprocess", "mean"), ("preprocess", "scale"),
         ("preprocess", "color"), ("version",), ("output",), ("source",), ("format",)]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(PATHS), JSON | st.text(max_size=80))
def test_a_malformed_manifest_field_is_a_value_error_naming_it(path, value):
    d = _valid()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    try:
        m = Manifest.from_json(json.dumps(d).encode())
    except ValueError:
        return
    assert isinstance(m, Manifest)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400) | JSON.map(lambda d: json.dumps(d).encode()))
def test_arbitrary_manifest_bytes_are_a_value_error(data):
    try:
        Manifest.from_json(data)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_damaged_model_file_is_a_model_error(data):
    content = bytearray(DEMO.read_bytes())
    cut = data.draw(st.integers(0, len(content)))
    for _ in range(data.draw(st.integers(0, 8))):
        i = data.draw(st.integers(0, max(0, cut - 1)))
        if cut:
            content[i] = data.draw(st.integers(0, 255))
    try:
        read_manifest(bytes(content[:cut]))
    except ModelError:
        pass


def test_quantization_x_and_a_script_display_name_are_refused_with_the_field_named():
    d = _valid()
    d["input"]["quantization"] = "x"
    try:
        Manifest.from_json(json.dumps(d).encode())
        raise AssertionError("accepted")
    except ValueError as e:
        assert "AttributeError" in str(e) and "manifest field missing or mistyped" in str(e)
    d = _valid()
    d["labels"][0]["name"] = "<img src=x onerror=alert(1)>"
    try:
        Manifest.from_json(json.dumps(d).encode())
        raise AssertionError("accepted")
    except ValueError as e:
        assert "'kaca': display name" in str(e)


def test_classify_with_a_malformed_manifest_prints_a_clear_error(tmp_path, capsys):
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.edge.cli import main
    from tests.conftest import SAMPLES

    d = _valid()
    d["input"]["quantization"] = "x"
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed_metadata(DEMO.read_bytes(), json.dumps(d).encode()))
    assert main(["classify", "--model", str(bad), str(next(SAMPLES.glob("*.jpg")))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ecosorter: error: model {bad}: embedded manifest is invalid") and "Traceback" not in err
    assert issubclass(ModelError, EcoSorterError)


def test_a_newer_manifest_version_round_trips():
    m = read_manifest(DEMO.read_bytes())
    newer = dataclasses.replace(m, version=7)
    assert Manifest.from_json(newer.to_json()).version == 7 and m.version == 0


def test_a_labels_file_with_a_script_display_name_is_refused_at_convert_time(tmp_path):
    from ecosorter.edge.model.manifest import load_labels_file

    f = tmp_path / "labels.txt"
    f.write_text("kaca,Kaca (glass)\nkardus,<img src=x onerror=alert(1)>\n")
    try:
        load_labels_file(f)
        raise AssertionError("accepted")
    except EcoSorterError as e:
        assert str(e).startswith(f"--labels {f}: manifest label 'kardus': display name")
