"""The one place that decides whether the bin may move.

Two kinds of stop, from one registry:
- holds clear by themselves when their cause ends (lid open, a compartment full, camera down,
  power failing, the pause after the lid closes);
- faults latch until a person acts (a jam, a move over its budget, a servo or pin error):
  the clear button held 3 s, the page, MQTT `clear_fault`, or a restart;
- warnings stop nothing and clear by themselves (the model no longer fits the bin).

Every raise and clear goes to the listeners (log, event log, MQTT, page, simulator timeline)
with the words a person at the bin needs, in Indonesian and English.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("ecosorter.machine")


@dataclass(frozen=True)
class Condition:
    kind: str  # "hold" | "fault" | "warning"
    # "all": nothing moves; "compartment": only items bound there wait; "intake": no new items;
    # "none": shown and logged, stops nothing (a warning, the damaged-log fault)
    scope: str
    reason_id: str
    reason_en: str
    action_id: str
    action_en: str


def _clear(what_id: str, what_en: str) -> tuple[str, str]:
    # every way a person can clear it, since a bin may have no button (or no screen)
    return (f"{what_id}, lalu tahan tombol 3 detik, atau 'Sudah aman' di layar, atau mulai ulang bin",
            f"{what_en}, then hold the button for 3 s, or 'Fixed: resume' on the screen, or restart the bin")


# The registry: every allowed name, its kind and its words come from here and nowhere else
# (the page, MQTT, the log and the simulator's timeline all show these).
CONDITIONS: dict[str, Condition] = {
    "lid": Condition("hold", "all", "Penutup terbuka", "The lid is open",
                     "Tutup penutupnya", "Close the lid"),
    "resume": Condition("hold", "all", "Penutup baru ditutup: lanjut sebentar lagi",
                        "Lid just closed: sorting resumes in a moment",
                        "Jauhkan tangan dari baki", "Keep hands off the tray"),
    "resume_button": Condition("hold", "all", "Penutup sudah ditutup", "The lid is closed",
                               "Tekan tombol untuk melanjutkan", "Press the button to resume"),
    "full": Condition("hold", "compartment", "Kompartemen {compartment} penuh", "Compartment {compartment} is full",
                      "Kosongkan kompartemen {compartment}; barang lain tetap disortir",
                      "Empty compartment {compartment}; other items keep sorting"),
    "camera": Condition("hold", "intake", "Kamera tidak berfungsi", "The camera is not working",
                        "Jangan letakkan barang; periksa kabel kamera", "Do not put items in; check the camera cable"),
    "power": Condition("hold", "all", "Daya listrik hampir habis", "Power is failing",
                       "Periksa catu daya / UPS; bin menunggu", "Check the power supply / UPS; the bin waits"),
    # The event log cannot take a record (disk full by something else, read-only): nothing is sorted
    # unrecorded, so nothing moves; it clears by itself when there is room (edge/record/guard.py).
    "disk": Condition("hold", "all", "Disk penuh: barang tidak bisa dicatat", "The disk cannot take the record: {detail}",
                      "Jangan letakkan barang; kosongkan ruang disk", "Do not put items in; free space on the disk"),
    # The event log was found damaged and moved aside; a new one records. Blocks nothing (scope
    # "none"), latched so a person sees it and tells the owner.
    "log": Condition("fault", "none", "Catatan rusak: disimpan terpisah, catatan baru dimulai",
                     "The event log was damaged: {detail}",
                     *_clear("Beri tahu pemilik bin; bin tetap menyortir", "Tell the bin's owner; the bin keeps sorting")),
    "jam": Condition("fault", "all", "Mekanisme macet", "Jammed: {detail}",
                     *_clear("Buka penutup, bebaskan mekanismenya, tutup", "Open the lid, free the mechanism, close it")),
    # A step took longer in real time than its budget: the Pi stalled (overload, undervoltage) or,
    # with position switches, a servo was late. Latched: a bin that stalls mid-drop must be looked at.
    "budget": Condition("fault", "all", "Gerakan melewati batas waktu", "A move overran its time: {detail}",
                        *_clear("Periksa beban dan catu daya Pi (ecosorter doctor)",
                                "Check the Pi's load and power supply (ecosorter doctor)")),
    "servo": Condition("fault", "all", "Kesalahan servo atau pin", "Servo or pin error: {detail}",
                       *_clear("Periksa kabel servo", "Check the servo wiring")),
    # edge/decide/drift.py: rolling figures left the model's validation band. Sorting goes on.
    "model_drift": Condition("warning", "none",
                             "Model tidak lagi cocok dengan bin ini: beri label barang dan latih ulang",
                             "The model no longer fits this bin: label items and retrain",
                             "Beri label barang ('Apa ini?'), ekspor, latih ulang",
                             "Label items ('what was it?'), export, retrain: {detail}"),
}


# The machine's state in one word, for a screen read from 2 m: Indonesian first, English second.
STATE_WORDS: dict[str, tuple[str, str]] = {"ready": ("Siap", "Ready"), "held": ("Tunggu", "Hold"),
                                           "fault": ("Berhenti", "Fault")}


def compartment_label(compartment: int, names: list[str] | tuple[str, ...] = ()) -> str:
    """A compartment as printed on the bin: its configured name, else numbered from 1."""
    return names[compartment] if 0 <= compartment < len(names) else str(compartment + 1)


@dataclass
class Entry:
    name: str
    since: float  # wall time, epoch seconds
    detail: str = ""
    compartment: int | None = None
    compartment_name: str = ""  # as printed on the bin; words use it, `compartment` stays the index

    @property
    def condition(self) -> Condition:
        return CONDITIONS[self.name]

    @property
    def key(self) -> str:
        return self.name if self.compartment is None else f"{self.name}{self.compartment}"

    def to_dict(self) -> dict:
        shown = self.compartment_name or (None if self.compartment is None else compartment_label(self.compartment))
        c, fmt = self.condition, {"detail": self.detail, "compartment": shown}
        return {"name": self.name, "kind": c.kind, "since": self.since, "compartment": self.compartment,
                "compartment_name": shown, "detail": self.detail, "reason_id": c.reason_id.format(**fmt), "reason_en": c.reason_en.format(**fmt),
                "action_id": c.action_id.format(**fmt), "action_en": c.action_en.format(**fmt)}


Listener = Callable[[Entry, str, str], None]  # (entry, "raised" | "cleared", who)


class Machine:
    """Holds and faults; `may_move` is the only question the rest of the bin asks."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, resume_delay_s: float = 2.0, resume: str = "auto",
                 fill_confirm_s: float = 0.0, compartment_names: list[str] | tuple[str, ...] = ()):
        if resume not in ("auto", "button"):
            raise ValueError(f"resume must be 'auto' or 'button', not {resume!r}")
        self.clock = clock
        self.resume_delay_s, self.resume, self.fill_confirm_s = resume_delay_s, resume, fill_confirm_s
        self.compartment_names = tuple(compartment_names)
        self._fill_seen: dict[int, tuple[bool, float]] = {}  # compartment -> (reading, since)
        self._active: dict[str, Entry] = {}
        self._resume_at: float | None = None
        self._lock = threading.RLock()  # button and MQTT callbacks come from other threads
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener, first: bool = False) -> None:
        """Hear every raise and clear from now on, starting with what is already active (a lid
        found open while the hardware was built)."""
        self.listeners.insert(0 if first else len(self.listeners), listener)
        for entry in self.entries():
            listener(entry, "raised", "")

    # ------------------------------------------------------------------ raise / clear
    def raise_(self, name: str, detail: str = "", compartment: int | None = None) -> bool:
        """True if this is new (a raise already active only updates nothing)."""
        if name not in CONDITIONS:
            raise ValueError(f"unknown hold/fault {name!r}; known: {', '.join(CONDITIONS)}")
        entry = Entry(name, self.clock.time(), detail, compartment,
                      "" if compartment is None else compartment_label(compartment, self.compartment_names))
        with self._lock:
            if entry.key in self._active:
                return False
            self._active[entry.key] = entry
        self._tell(entry, "raised", "")
        return True

    def clear(self, name: str, compartment: int | None = None, who: str = "") -> bool:
        key = name if compartment is None else f"{name}{compartment}"
        with self._lock:
            entry = self._active.pop(key, None)
        if entry is None:
            return False
        self._tell(entry, "cleared", who)
        return True

    def set_hold(self, name: str, on: bool, detail: str = "", compartment: int | None = None) -> None:
        """For a cause that is read again and again (a pin, the camera): raise or clear to match."""
        if on:
            self.raise_(name, detail, compartment)
        else:
            self.clear(name, compartment)

    def clear_faults(self, who: str) -> list[str]:
        """A person acted: clear every latched fault. Holds stay: their causes decide."""
        with self._lock:
            faults = [e for e in self._active.values() if e.condition.kind == "fault"]
        for e in faults:
            self.clear(e.name, e.compartment, who)
        if faults:
            log.warning("faults cleared by %s: %s", who, ", ".join(e.key for e in faults))
        return [e.key for e in faults]

    def _tell(self, entry: Entry, state: str, who: str) -> None:
        c = entry.condition
        # a compartment as printed on the bin, as the page and `run` show it: the key's index
        # ("full1") is one apart from the "2" on the bin
        shown = entry.key if entry.compartment is None else f"{entry.name} (compartment {entry.compartment_name})"
        (log.warning if state == "raised" else log.info)(
            "%s %s %s%s%s", c.kind, shown, state, f": {entry.detail}" if entry.detail else "",
            f" by {who}" if who else "")
        for fn in list(self.listeners):
            try:
                fn(entry, state, who)
            except Exception:  # a listener (sink) never stops the machine
                log.exception("machine listener failed")

    # ------------------------------------------------------------------ inputs read each tick
    def lid(self, is_open: bool) -> None:
        """The interlock: open = hold; closed = a pause (or a button press) before motion resumes."""
        if is_open:
            self.clear("resume")
            self.clear("resume_button")
            self._resume_at = None
            self.raise_("lid")
        elif self.clear("lid"):
            if self.resume == "button":
                self.raise_("resume_button")
            else:
                self._resume_at = self.clock.monotonic() + self.resume_delay_s
                self.raise_("resume", f"{self.resume_delay_s:g} s")
        if self._resume_at is not None and self.clock.monotonic() >= self._resume_at:
            self._resume_at = None
            self.clear("resume")

    def resume_pressed(self, who: str = "button") -> bool:
        """With interlock_resume = "button": the press that lets motion start again."""
        return self.clear("resume_button", who=who)

    def fill(self, full: set[int], sensors: set[int] | None = None) -> None:
        """Fill sensors as read now. A reading must hold for fill_confirm_s before it counts: an item
        falling through a beam near the top, or a bag settling, does not raise and clear holds."""
        now = self.clock.monotonic()
        for c in (sensors if sensors is not None else full | set(self._fill_seen)):
            seen = self._fill_seen.get(c)
            if seen is None or seen[0] != (c in full):
                self._fill_seen[c] = (c in full, now)
        was = self.full()
        # `since + confirm <= now`, the very sum wake_at() hands the simulator: `now - since >= confirm`
        # is False at that instant for some floats (9.2 - 7.2 < 2.0), and the hold came a whole idle skip late
        steady = {c for c, (reading, since) in self._fill_seen.items() if since + self.fill_confirm_s <= now}
        for c in sorted(c for c in steady - was if self._fill_seen[c][0]):
            self.raise_("full", compartment=c)
        for c in sorted(c for c in was & steady if not self._fill_seen[c][0]):
            self.clear("full", c)

    # ------------------------------------------------------------------ questions
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._active.values())

    def active(self, name: str, compartment: int | None = None) -> bool:
        return (name if compartment is None else f"{name}{compartment}") in self._active

    @property
    def faulted(self) -> bool:
        """A latched fault that stops the mechanism (scope "none" faults only inform)."""
        return any(e.condition.kind == "fault" and e.condition.scope != "none" for e in self.entries())

    def full(self) -> set[int]:
        return {e.compartment for e in self.entries() if e.name == "full" and e.compartment is not None}

    def blocking(self, compartment: int | None = None) -> Entry | None:
        """What stops a move now (to `compartment`, if given); None = the bin may move."""
        for e in self.entries():
            scope = e.condition.scope
            if scope == "all" or (scope == "compartment" and e.compartment == compartment):
                return e
        return None

    def may_park(self) -> bool:
        """May the mechanism go to its safe positions now: no fault latched, the lid shut, and not
        inside the auto-resume pause. A door left open is shut at this first safe moment, even while
        items wait for the resume button, so nothing put down meanwhile falls through it."""
        return not any(e.condition.kind == "fault" or e.name in ("lid", "resume") for e in self.entries())

    def may_move(self, compartment: int | None = None) -> bool:
        return self.blocking(compartment) is None

    def wake_at(self) -> float | None:
        """The next instant the machine changes by itself (the resume pause, a fill reading confirmed)."""
        was = self.full()
        due = [since + self.fill_confirm_s for c, (reading, since) in self._fill_seen.items()
               if reading != (c in was)]
        if self._resume_at is not None:
            due.append(self._resume_at)
        return min(due) if due else None

    @property
    def state(self) -> str:
        entries = self.entries()
        if any(e.condition.kind == "fault" for e in entries):
            return "fault"
        return "held" if any(e.condition.kind == "hold" for e in entries) else "ready"

    def snapshot(self) -> dict:
        entries = sorted(self.entries(), key=lambda e: e.since)
        state = self.state
        return {"state": state, "word_id": STATE_WORDS[state][0], "word_en": STATE_WORDS[state][1],
                "holds": [e.to_dict() for e in entries if e.condition.kind == "hold"],
                "faults": [e.to_dict() for e in entries if e.condition.kind == "fault"],
                "warnings": [e.to_dict() for e in entries if e.condition.kind == "warning"]}
