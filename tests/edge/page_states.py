"""Board states a person at the bin must read correctly: built directly, shown by the real page."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ecosorter.edge.machine import Machine
from ecosorter.edge.model.manifest import DEFAULT_LABELS
from ecosorter.edge.record.event import Event
from ecosorter.edge.status import StatusBoard

SAMPLES = Path(__file__).resolve().parents[2] / "edge" / "demo" / "samples"
LABELS = {lb.id: lb.name for lb in DEFAULT_LABELS}
COMPARTMENTS = {lb: i for i, lb in enumerate(LABELS)}


def photo(label: str) -> np.ndarray:
    from PIL import Image

    path = sorted(SAMPLES.glob(f"*-{label}-*.jpg"))[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def item(board: StatusBoard, label: str, confidence: float = 0.93, *, uncertain: bool = False,
         routed_to: int | None = None, note: str = "", encode: bool = True) -> Event:
    intended = COMPARTMENTS["khusus" if uncertain else label]
    routed = intended if routed_to is None else routed_to
    ev = Event(label=label, confidence=confidence, probabilities={label: confidence}, uncertain=uncertain,
               compartment=intended, routed_to=routed, routed_ok=routed >= 0, frames=1, model_sha256="0" * 64,
               latency_ms={"total": 140.0}, bin_id=board.bin_id, note=note)
    shown = "khusus" if label == "organik" else label  # no organik photos are committed
    board.record(ev, photo(shown), "rgb")
    if encode:
        board.encode_pending()  # as the open page's next poll does
    return ev


def entry(name: str, reason_id: str, reason_en: str, action_id: str, action_en: str,
          compartment: int | None = None) -> dict:
    """A hand-made machine entry: for what the real registry never writes (hostile text)."""
    return {"name": name, "since": time.time() - 40, "compartment": compartment, "reason_id": reason_id,
            "reason_en": reason_en, "action_id": action_id, "action_en": action_en}


def machine(*raise_: tuple) -> dict:
    """The snapshot the real machine gives for these raises (its registry writes the words)."""
    m = Machine()
    for name, detail, compartment in raise_:
        m.raise_(name, detail, compartment)
    return m.snapshot()


def base(bin_id: str = "kantin-lt2", **kw) -> StatusBoard:
    board = StatusBoard(bin_id, LABELS, COMPARTMENTS, **kw)
    for part, detail in (("model", "demo_int8.tflite on litert"), ("pins", "chute"), ("disk", "/var/lib/ecosorter")):
        board.set_health(part, True, detail)
    board.set_health("camera", True, "7.9 fps")
    board.set_link("lid", "closed")
    board.set_link("camera", "ok")
    board.set_link("mqtt", "connected")
    board.set_machine({"state": "ready", "holds": [], "faults": []})
    for label in ("kardus", "kertas", "plastik", "kaca", "logam", "kertas", "plastik", "kardus", "logam"):
        item(board, label)
    return board


def normal() -> StatusBoard:
    board = base()
    recent = board.snapshot()["recent"]
    board.flagged(recent[0]["id"])  # a person said "wrong" about the logam item...
    board.flagged(recent[1]["id"])
    board.labelled(recent[1]["id"], "kertas")  # ...and this one was labelled already
    item(board, "kaca", 0.96)
    return board


def uncertain() -> StatusBoard:
    board = base()
    item(board, "logam", 0.41, uncertain=True)
    return board


def lid_open() -> StatusBoard:
    board = base()
    item(board, "plastik", 0.91)
    board.set_link("lid", "open")
    board.set_machine(machine(("lid", "", None)))
    return board


def full() -> StatusBoard:
    board = base(fill_sensors=(2, 4))  # two compartments have a fill sensor: the page shows their fill
    item(board, "kertas", 0.88)
    board.set_fill({4: True})
    board.set_machine(machine(("full", "", 4)))  # the fifth compartment: "5" on the bin
    return board


def jam() -> StatusBoard:
    board = base()
    item(board, "kardus", 0.9, routed_to=-1, note="jam: chute did not reach home (switch open)")
    board.set_machine(machine(("jam", "chute did not reach 0 deg (position switch)", None)))
    return board


def camera_down() -> StatusBoard:
    board = base()
    board.set_link("camera", "down", "/dev/video0: no frame for 5 s")
    board.set_health("camera", False, "down: no frame for 5 s")
    board.set_machine(machine(("camera", "/dev/video0: no frame for 5 s", None)))
    return board


def model_drift() -> StatusBoard:
    board = base()
    item(board, "plastik", 0.62)
    board.set_machine(machine(("model_drift", "uncertain 38 per 100 items (expected 12)", None)))
    return board


def parts_failing() -> StatusBoard:
    """The worst header: two of the bin's own parts failing, the lid open, MQTT down, long details."""
    board = base()
    item(board, "logam", 0.87)
    board.set_health("model", False, "demo_int8.tflite: self-test failed after the update (rolled back)")
    board.set_health("disk", False, "/var/lib/ecosorter 97% full: photos are being evicted")
    board.set_link("lid", "open")
    board.set_link("mqtt", "disconnected", "broker.example.org:8883: connection refused")
    board.set_machine(machine(("lid", "", None)))
    return board


def everything_at_once() -> StatusBoard:
    """A jam, a full compartment, the lid open and two parts failing: the banners take the room and
    the item's words give way (hidden, never cut)."""
    board = parts_failing()
    item(board, "kardus", 0.9, routed_to=-1, note="jam: chute did not reach home (switch open)")
    board.set_fill({4: True})
    board.set_machine(machine(("jam", "chute did not reach 0 deg (position switch)", None), ("full", "", 4),
                              ("lid", "", None)))
    return board


STATES = {"normal": normal, "uncertain": uncertain, "lid-open": lid_open, "full": full, "jam": jam,
          "camera-down": camera_down, "model-drift": model_drift, "parts-failing": parts_failing,
          "everything-at-once": everything_at_once}
