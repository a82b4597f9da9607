"""Shared fixtures: committed TrashNet photos, small real Keras models saved as users save them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data" / "waste6"
SHARED = TESTS.parent.parent / "shared" / "data" / "waste7"
SAMPLES = TESTS.parent / "edge" / "demo" / "samples"
LABELS7 = ["kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik"]


def labelled_photos() -> list[tuple[Path, int]]:
    return [(p, LABELS7.index(d.name)) for d in sorted(DATA.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))]


@pytest.fixture(scope="session")
def photos() -> list[tuple[Path, int]]:
    return labelled_photos()


@pytest.fixture(scope="session")
def tf():
    return pytest.importorskip("tensorflow")


def _squash(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.NEAREST), dtype=np.float32)


def train_tiny(tf_keras, size: int = 224, epochs: int = 30):
    """A small real CNN trained on the committed photos: peaked outputs, seed I/O contract."""
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([
        tf_keras.Input((size, size, 3)),
        L.Rescaling(1 / 64.0),
        L.AveragePooling2D(4),
        L.Conv2D(8, 3, strides=2, activation="relu"),
        L.Conv2D(16, 3, strides=2, activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(7, activation="softmax"),
    ])
    x, y = [], []
    for p, label in labelled_photos():
        x.append(_squash(p, size)[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))
        y.append(label)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(np.stack(x), np.array(y), epochs=epochs, verbose=0, batch_size=12)
    return model


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory, tf) -> Path:
    """Legacy HDF5 written by tf-keras: what users of the Keras 2 notebook have."""
    tf_keras = pytest.importorskip("tf_keras")
    path = tmp_path_factory.mktemp("models") / "tiny.h5"
    train_tiny(tf_keras).save(path)
    return path


@pytest.fixture()
def photo_dir(tmp_path) -> Path:
    """A writable copy of the committed class folders."""
    dst = tmp_path / "photos"
    shutil.copytree(DATA, dst)
    return dst


class Mosquitto:
    """A real Mosquitto broker on loopback, stoppable to simulate an outage."""

    def __init__(self, workdir: Path):
        import socket

        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n")
        self.proc = None

    def start(self) -> None:
        import socket
        import subprocess
        import time

        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)])
        end = time.monotonic() + 60  # a limit for a broker that never listens, not a measurement
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        log = self.conf.with_name("mosquitto.log")
        raise RuntimeError(f"mosquitto did not start on port {self.port} (exit {self.proc.poll()}): "
                           f"{log.read_text()[-1000:] if log.exists() else 'no log'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistent sessions
            self.proc.wait(10)
            self.proc = None


@pytest.fixture()
def mosquitto(tmp_path):
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def one_day(monkeypatch):
    """The status board's "today" on one fixed date: a test that counts today's items must not see them
    start again because it ran across local midnight."""
    from ecosorter.edge.status import board

    monkeypatch.setattr(board, "_today", lambda: "2026-09-21")


@pytest.fixture()
def factory():
    """gpiozero's own mock pins, with PWM: the one pin factory every hardware test uses."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def duty(angle: float) -> float:
    """PWM duty of an AngularServo(-90..90) with 0.5-2.5 ms pulses at 50 Hz."""
    return (0.5 + (angle + 90) / 180 * 2.0) / 20.0
