"""How the fleet tool reaches the broker: the bins' own [mqtt] settings (login, TLS, prefix),
from a config file like a bin's, with command-line overrides."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ecosorter.edge.errors import EcoSorterError


class FleetError(EcoSorterError):
    """A fleet command that cannot go on; the message names the option, file or bin at fault."""


@dataclass(frozen=True)
class Broker:
    host: str = "localhost"
    port: int = 1883
    username: str = ""
    password: str = ""
    tls: bool = False
    ca_file: str = ""
    prefix: str = "ecosorter"
    keepalive_s: int = 30

    @classmethod
    def from_args(cls, config: Path | None, broker: str | None, username: str | None = None,
                  password_file: Path | None = None, prefix: str | None = None) -> Broker:
        b = cls()
        if config is not None:
            from ecosorter.edge.config import load_config
            from ecosorter.edge.secrets import read_secret

            m = load_config(config).mqtt
            b = cls(m.host, m.port, m.username, read_secret("mqtt_password", m.password_file) or m.password,
                    m.tls, m.ca_file, m.topic_prefix, m.keepalive_s)
        if broker:
            host, _, port = broker.rpartition(":") if ":" in broker else (broker, "", "")
            try:
                b = replace(b, host=host or broker, port=int(port) if port else b.port)
            except ValueError:
                raise FleetError(f"--broker {broker!r}: expected HOST:PORT") from None
        if username is not None:
            b = replace(b, username=username)
        if password_file is not None:  # the bins' rule: a file only its owner can read
            from ecosorter.edge.secrets import read_secret

            b = replace(b, password=read_secret("mqtt_password", password_file))
        if prefix:
            b = replace(b, prefix=prefix)
        return b

    def client(self, client_id: str = ""):
        """A paho client set up for this broker (not connected yet)."""
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if self.username:
            c.username_pw_set(self.username, self.password or None)
        if self.tls:
            c.tls_set(ca_certs=self.ca_file or None, cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(1, 30)
        return c

    def connect(self, client, timeout: float = 10.0) -> None:
        """Connect and start the network thread; FleetError naming the broker if it does not answer."""
        done = threading.Event()
        refused: list[str] = []
        prev = client.on_connect

        def on_connect(cl, userdata, flags, rc, props):
            if rc.is_failure:
                refused.append(str(rc))
            elif prev is not None:
                prev(cl, userdata, flags, rc, props)
            done.set()

        client.on_connect = on_connect
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except OSError as e:
            raise FleetError(f"broker {self.host}:{self.port}: cannot connect ({e.strerror or e})") from None
        client.loop_start()
        end = time.monotonic() + timeout
        while not done.wait(0.1) and time.monotonic() < end:
            pass
        if refused or not done.is_set():
            client.loop_stop()
            why = f"refused the login: {refused[0]}" if refused else f"no answer in {timeout:.0f} s"
            raise FleetError(f"broker {self.host}:{self.port}: {why}")
