"""Config values that used to pass `config check` and crash `run`; secrets out of the readable config;
MQTT link state logged once per change."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.errors import ConfigError
from ecosorter.edge.secrets import read_secret


@pytest.mark.parametrize("text, key, why", [
    ('[model]\npublic_key = "not base64!!"\n', "model.public_key", "not base64"),
    ('[model]\npublic_key = "AAAA"\n', "model.public_key", "3 bytes after base64; an ed25519 public key is 32"),
    ('[model]\npublic_keys = ["AAAA"]\n', "model.public_keys[0]", "3 bytes"),
    ("[record]\ncapture_quota_mb = inf\n", "record.capture_quota_mb", "must be a finite number, got inf"),
    ("[trigger]\nblur_below = inf\n", "trigger.blur_below", "finite"),  # no max= to catch it
    ('bin_id = "bin+1"\n', "bin_id", "'bin+1' must be 1-64 of A-Z a-z 0-9 _ -"),
    ('bin_id = "a/#"\n', "bin_id", "MQTT topic level"),
    ('[commands]\ntrust_broker_for = ["install_model"]\n', "commands.trust_broker_for", "always signed"),
    ('[model]\ndownload_hosts = ["http://evil"]\n', "model.download_hosts[0]", "host name or host:port"),
])
def test_config_check_refuses_what_would_crash_run(tmp_path, text, key, why):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config " + key.replace("[", r"\[").replace("]", r"\]")) as e:
        load_config(path)
    assert why in str(e.value)
    r = subprocess.run([sys.executable, "-m", "ecosorter.edge.cli", "config", "check", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr


def test_a_good_key_passes(keys):
    assert load_config(overrides={"model.public_key": keys[1]}).model.public_key == keys[1]


def test_secrets_come_from_a_private_file_or_systemd_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    f = tmp_path / "mqtt_password"
    f.write_text("s3cret\n")
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="mode 0644; readable by others: chmod 600"):
        read_secret("mqtt_password", f)
    os.chmod(f, 0o600)
    assert read_secret("mqtt_password", f) == "s3cret"
    assert read_secret("mqtt_password") == ""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("mqtt_password", f) == "from-systemd"
    link = tmp_path / "link"
    link.symlink_to(f)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret("mqtt_password", link)  # no following a planted symlink


@pytest.mark.broker
def test_the_mqtt_password_file_is_used_and_link_state_is_logged_once_per_change(mosquitto, tmp_path, caplog):
    """A broker that requires a password: wrong, then right; the link state changes are logged once each."""
    import shutil
    import tempfile
    from pathlib import Path

    from ecosorter.edge.record.events import EventLog
    from ecosorter.edge.record.mqtt import MqttLink
    from tests.security.conftest import wait

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    shared = Path(tempfile.mkdtemp(prefix="ecosorter-broker-"))  # the broker runs as user mosquitto
    os.chmod(shared, 0o755)
    passwd = shared / "passwd"
    passwd.write_text("bin7:right\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
    os.chmod(passwd, 0o644)
    mosquitto.stop()
    mosquitto.conf.write_text(mosquitto.conf.read_text().replace("allow_anonymous true",
                                                                 f"allow_anonymous false\npassword_file {passwd}"))
    mosquitto.start()
    secret = tmp_path / "mqtt_password"
    secret.write_text("wrong")
    os.chmod(secret, 0o600)
    cfg = load_config(overrides={"mqtt.enabled": True, "mqtt.port": mosquitto.port, "mqtt.username": "bin7",
                                 "mqtt.password_file": str(secret)}).mqtt
    states = []
    caplog.set_level(logging.INFO, "ecosorter.mqtt")
    EventLog(tmp_path / "events.db").close()
    link = MqttLink(cfg, "bin7", tmp_path / "events.db", {}, on_link=lambda s, d: states.append(s))
    attempts = []
    on_connect = link.client.on_connect
    link.client.on_connect = lambda *a: (attempts.append(a[3]), on_connect(*a))
    link.client.reconnect_delay_set(1, 1)
    link.start()
    assert wait(lambda: len(attempts) >= 3)  # several attempts with the wrong password ...
    link.close()
    shutil.rmtree(shared, ignore_errors=True)
    refused = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]  # ... logged once
    assert link.link_state[0] == "disconnected" and states == ["disconnected"]
    secret.write_text("right")
    link = MqttLink(cfg, "bin7", tmp_path / "events.db", {}, on_link=lambda s, d: states.append(s))
    link.start()
    assert link.connected.wait(20) and link.link_state == ("connected", f"localhost:{mosquitto.port}")
    link.close()


def test_keys_new_and_sign_command_make_commands_the_bin_accepts_once(tmp_path, capsys):
    from ecosorter.edge.cli import main
    from ecosorter.edge.commands import parse_command
    from ecosorter.edge.security import AuthError, Verifier, decode_public_key

    key = tmp_path / "owner.key"
    assert main(["keys", "new", str(key)]) == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    public = capsys.readouterr().out.split('public_key = "')[1].split('"')[0]
    assert main(["sign-command", "--key", str(key), "--bin-id", "bin7", "flag", "id=abc123"]) == 0
    cmd = parse_command(capsys.readouterr().out.strip().encode())
    assert cmd["action"] == "flag" and cmd["id"] == "abc123" and cmd["bin_id"] == "bin7"
    verifier = Verifier([decode_public_key(public)], "bin7", tmp_path / "nonces.json")
    verifier.verify(cmd)
    with pytest.raises(AuthError, match="already used"):
        Verifier([decode_public_key(public)], "bin7", tmp_path / "nonces.json").verify(cmd)  # after a restart
    assert main(["sign-command", "--key", str(key), "--bin-id", "bin7", "flag", "id=a/b"]) == 2
    assert "flag.id: 'a/b' is not an event id" in capsys.readouterr().err
    os.chmod(key, 0o644)
    assert main(["sign-command", "--key", str(key), "--bin-id", "bin7", "flag", "id=abc"]) == 2
    assert "readable by others" in capsys.readouterr().err


def test_keys_sign_makes_the_signature_model_install_checks(tmp_path, capsys):
    """The README's manual install step: `keys sign` then `model install --signature` with that key."""
    import shutil

    from ecosorter.edge.cli import main
    from ecosorter.edge.model.store import ModelInstallError, ModelStore
    from ecosorter.edge.security import decode_public_key
    from tests.conftest import SAMPLES

    key = tmp_path / "owner.key"
    assert main(["keys", "new", str(key)]) == 0
    public = decode_public_key(capsys.readouterr().out.split('public_key = "')[1].split('"')[0])
    model = tmp_path / "m.tflite"
    shutil.copy(SAMPLES.parent / "demo_int8.tflite", model)
    assert main(["keys", "sign", str(key), str(model)]) == 0
    assert "--signature" in capsys.readouterr().out
    store = ModelStore(tmp_path / "state", public_key=public)
    assert store.install(model, signature=(tmp_path / "m.sig").read_bytes()).sha256
    model.write_bytes(model.read_bytes() + b"\0")  # any other bytes: refused
    with pytest.raises(ModelInstallError, match="does not verify"):
        store.install(model, signature=(tmp_path / "m.sig").read_bytes())
