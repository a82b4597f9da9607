"""What the bin's CLI says about the model it uses (#17): which model `classify` runs and why, the
model's decision rule in `model install` / `model list`, and figures that never read "-0.0 pt".
Real models (the bundled demo, re-embedded manifests), real LiteRT, real files."""

from __future__ import annotations

import dataclasses

import pytest

from ecosorter.convert.embed import embed_metadata
from ecosorter.edge.cli import main
from ecosorter.edge.model import load_model
from ecosorter.edge.model.trust import decision_summary, verification_figures
from tests.conftest import SAMPLES

DEMO = SAMPLES.parent / "demo_int8.tflite"
PHOTO = sorted(SAMPLES.glob("*.jpg"))[0]


def config(tmp_path, model_line: str = "") -> tuple:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[record]\nstate_dir = "{state}"\n' + (f"[model]\n{model_line}\n" if model_line else ""))
    return cfg, state


def test_classify_says_which_model_it_uses_and_where_it_came_from(tmp_path, capsys):
    cfg, state = config(tmp_path)
    # the config names no model and nothing is installed: the demo, said on stderr (stdout: the results)
    assert main(["classify", str(PHOTO), "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert f"model: {DEMO} (the bundled DEMO model: {cfg} sets no model.path and no model is installed in " \
           f"{state / 'models'}; the bin would sort with this demo)" in err
    assert "model:" not in out and out.startswith(str(PHOTO))
    # installed: that one, named as installed
    assert main(["model", "install", str(DEMO), "--allow-unsigned", "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert main(["classify", str(PHOTO), "--config", str(cfg)]) == 0
    assert f"model: {state / 'models' / 'current.tflite'} (the installed model in {state / 'models'}" in \
        capsys.readouterr().err
    # model.path names a file: that file, by its key; a missing one is an error naming the key, not the demo
    cfg, _ = config(tmp_path, f'path = "{DEMO}"')
    assert main(["classify", str(PHOTO), "--config", str(cfg)]) == 0
    assert f"model: {DEMO} (model.path in {cfg})" in capsys.readouterr().err
    missing = tmp_path / "gone.tflite"
    cfg, _ = config(tmp_path, f'path = "{missing}"')
    assert main(["classify", str(PHOTO), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: model.path = '{missing}': file not found" in err and "DEMO" not in err
    # --model wins, and says so; without either the demo is named as the default
    assert main(["classify", str(PHOTO), "--config", str(cfg), "--model", str(DEMO)]) == 0
    assert f"model: {DEMO} (--model)" in capsys.readouterr().err
    assert main(["classify", str(PHOTO)]) == 0
    assert "(the bundled demo model: no --model or --config given)" in capsys.readouterr().err


def test_model_install_and_list_show_the_decision_rule(tmp_path, capsys):
    state = tmp_path / "state"
    with load_model(DEMO) as m:
        d = m.manifest.decision
        bare_manifest = dataclasses.replace(m.manifest, decision=None, version=m.manifest.version + 1)
    rule = (f"contamination budget {100 * d['budget']:g}%; {d['method']}: {d['guarantee']}; thresholds "
            f"{d['family']}; n {d['n']} ({d['n_fit']} fit, {d['n_certify']} certify); on the certify photos "
            f"routed right {100 * d['routed_right']:.1f}%, fallback {100 * d['fallback_share']:.1f}%")
    assert main(["model", "install", str(DEMO), "--allow-unsigned", "--state-dir", str(state)]) == 0
    assert f"its decision rule: {rule}\n" in capsys.readouterr().out
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    assert f"  decision      {rule}\n" in capsys.readouterr().out

    bare = tmp_path / "bare.tflite"  # a model converted without --contamination
    bare.write_bytes(embed_metadata(DEMO.read_bytes(), bare_manifest.to_json()))
    assert main(["model", "install", str(bare), "--allow-unsigned", "--state-dir", str(state)]) == 0
    assert "its decision rule: none in the model: the config's decision.threshold (default 0.55) decides" in \
        capsys.readouterr().out
    assert main(["model", "list", "--state-dir", str(state)]) == 0
    listing = capsys.readouterr().out
    current, previous = listing.split("previous (rollback target)")
    assert "decision      none in the model" in current and f"decision      {rule}" in previous


@pytest.mark.parametrize("change, shown", [(-0.0004, "+0.0 pt"), (-0.0, "+0.0 pt"), (0.00049, "+0.0 pt"),
                                           (-0.0006, "-0.1 pt"), (0.0123, "+1.2 pt")])
def test_points_never_read_minus_zero(change, shown):
    line = verification_figures({"images": 84, "correct_routing_change": change, "contamination_change": change})
    assert line == f"84 images, correct routing {shown}, contamination {shown}"


def test_a_rule_that_certifies_nothing_says_so():
    with load_model(DEMO) as m:
        manifest = dataclasses.replace(m.manifest, decision={**m.manifest.decision, "feasible": False})
    assert decision_summary(manifest).endswith("NOT CERTIFIABLE (every item uncertain)")
    assert decision_summary(None).startswith("none in the model")


def test_model_install_says_each_check_once(tmp_path, capsys):
    """The checks were printed on stdout and repeated, joined, in an INFO log line on stderr. The
    CLI prints them; the log line (the journal's record of an install from MQTT) is one summary."""
    state = tmp_path / "state"
    assert main(["model", "install", str(DEMO), "--allow-unsigned", "--state-dir", str(state)]) == 0
    out, err = capsys.readouterr()
    checks = [line.strip() for line in out.splitlines()[1:] if line.startswith("  ")]
    assert len(checks) >= 4 and any(c.startswith("sha256: ") for c in checks)
    assert not [c for c in checks if c in err], err
    logged = [line for line in err.splitlines() if "installed model" in line]
    assert len(logged) == 1 and "version" in logged[0] and "from cli" in logged[0], err
    assert "unsigned" in logged[0] and "self-test" in logged[0] and len(logged[0]) < 300, logged[0]
