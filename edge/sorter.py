"""The loop: source -> trigger -> preprocess -> classify -> decide -> act -> record.

The only module that knows every stage. Each arrow is a plain value (a Frame, a tensor, a
probability vector, a Decision, an Event); no stage calls back up the pipe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ecosorter.edge.clock import SYSTEM_CLOCK, Clock
from ecosorter.edge.commands import CommandProcessor, callbacks_for
from ecosorter.edge.config import Config
from ecosorter.edge.decide import CompartmentMap, TriggerState, Voter, make_trigger
from ecosorter.edge.decide.drift import DriftWatch, expected_for
from ecosorter.edge.decide.vote import Decision
from ecosorter.edge.durable import write_durably
from ecosorter.edge.errors import ConfigErrors, EcoSorterError, ModelError, SourceError
from ecosorter.edge.hardware import Actuator, make_actuator, make_pin_factory
from ecosorter.edge.hardware.check import label_errors
from ecosorter.edge.hardware.inputs import Inputs
from ecosorter.edge.machine import Entry, Machine, compartment_label
from ecosorter.edge.model import LoadedModel, load_model
from ecosorter.edge.model.manifest import load_labels_file
from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.model.swap import prepare_swap
from ecosorter.edge.model.trust import describe_running
from ecosorter.edge.preprocess import Preprocessor
from ecosorter.edge.preprocess.spec import preset
from ecosorter.edge.preprocess.transform import camera_roi
from ecosorter.edge.record import Event, EventLog
from ecosorter.edge.record.captures import CaptureStore
from ecosorter.edge.record.event import new_event_id, wall_iso
from ecosorter.edge.record.feedback import Feedback
from ecosorter.edge.record.guard import RecordGuard
from ecosorter.edge.record.machine_log import MachineLog
from ecosorter.edge.record.mqtt import MqttLink
from ecosorter.edge.service import Notifier
from ecosorter.edge.sources import Frame, FrameSource, LatestFrameReader, open_source
from ecosorter.edge.sources.quality import QualityMonitor
from ecosorter.edge.status import StatusBoard
from ecosorter.edge.tray import still_item, vanished

log = logging.getLogger("ecosorter.sorter")


@dataclass
class Pending:
    """A decided item still on the tray: routed when nothing blocks it, recorded exactly once."""

    decision: Decision
    frame: Frame
    t0: float  # perf_counter when the item settled (decision latency)
    decided_ms: float  # settle -> decision
    held_by: str = ""
    event_id: str = ""  # set once a route is tried: its "being routed" record and its event share it


@dataclass
class Summary:
    items: int = 0
    uncertain: int = 0
    frames: int = 0
    inferences: int = 0
    bad_frames: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # per predicted label
    # what physically went where: per compartment, and the items that went elsewhere or nowhere
    routed: dict[int, int] = field(default_factory=dict)
    rerouted: int = 0
    unrouted: int = 0
    held: int = 0  # items that had to wait on the tray for a hold or fault to end
    # the last 2,000 decisions: enough for stable percentiles, bounded for a bin that never stops
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))


class Sorter:
    def __init__(self, cfg: Config, model: LoadedModel, source: FrameSource, actuator: Actuator,
                 events: EventLog | None = None, board: StatusBoard | None = None,
                 sinks: list | None = None, notifier: Notifier | None = None,
                 is_present: Callable[[], bool] | None = None, captures: CaptureStore | None = None,
                 mqtt: MqttLink | None = None, store: ModelStore | None = None, inputs: Inputs | None = None,
                 clock: Clock = SYSTEM_CLOCK, machine_log: MachineLog | None = None):
        self.cfg, self.model, self.source, self.actuator = cfg, model, source, actuator
        self.events, self.board, self.sinks = events, board, list(sinks or [])
        self.captures, self.mqtt, self.store = captures, mqtt, store
        self.inputs, self.clock, self.machine_log = inputs, clock, machine_log
        self.machine: Machine = actuator.machine
        self.last_event_id = ""
        if inputs is not None:
            is_present = is_present or (inputs.item_present if inputs.item_sensor is not None else None)
        self._swap_to: Path | None = None
        self.commands = None  # edge/commands.py's CommandProcessor, when MQTT is on
        self.record_guard: RecordGuard | None = None  # the disk hold and the damaged-log fault
        self._last_state_t = -1e9
        self.notifier = notifier or Notifier()
        labels = model.manifest.label_ids
        roi = camera_roi(cfg.camera.roi)
        self.preprocessor = Preprocessor(model.manifest.preprocess, model.manifest.input, roi)
        self._tensor = self.preprocessor.new_buffer()
        self.route = CompartmentMap(cfg.hardware.compartments, labels, cfg.decision.fallback)
        self.voter = Voter(cfg.decision, labels, self.route, model.manifest.decision)
        self.drift = DriftWatch(expected_for(self.voter.rule, model.manifest.verification))
        self.feedback = Feedback(events, captures, board, lambda: self.model.manifest.label_ids, lambda: self.drift)
        self.trigger = make_trigger(cfg.trigger, roi, is_present)
        self.quality = QualityMonitor(cfg.trigger.dark_below, cfg.trigger.blur_below)
        self.summary = Summary(counts=dict.fromkeys(labels, 0), routed=dict.fromkeys(range(self.route.count), 0))
        self.reader = LatestFrameReader(source, cfg.camera.stall_timeout_s, cfg.camera.reopen_backoff_max_s,
                                        expected_fps=cfg.camera.fps) if source.live else None
        self._stage_ms = {"preprocess": 0.0, "inference": 0.0}
        self._item_t0 = 0.0
        self._item_frame: Frame | None = None
        self.pending: Pending | None = None
        self._camera_ok = True
        self._on_event: Callable[[Event], None] | None = None
        self._closed = False
        self._parked_at_stop = False  # parked by the last look: close() need not park again
        self.machine.subscribe(self._on_machine)

    # ------------------------------------------------------------------ one frame
    def process(self, frame: Frame) -> Event | None:
        self.summary.frames += 1
        state = self.trigger.update(frame.pixels)
        if self.trigger.thumb is not None:
            settled = state is TriggerState.SETTLED
            was = self.quality.alert
            if self.quality.check(self.trigger.thumb, settled) != was:
                if self.quality.alert:
                    log.warning("camera: %s", self.quality.alert)
                self._health("image", not self.quality.alert, self.quality.alert or "ok")
        if self.pending is not None:  # a decided item waits on the tray
            if state is TriggerState.EMPTY:
                return self._resolve(*self._vanished("taken off the tray while it waited"))
            if state is not TriggerState.SETTLED:  # still it, or being touched
                return self._try_route()
            # settled as a different item: the waiting one was swapped for it
            self._on_event_now(self._resolve(None, "replaced on the tray by another item while it waited"))
        decision = None
        if state is TriggerState.SETTLED:
            if self._item_frame is None:  # first frame of an item: it is what gets recorded
                self._item_t0 = time.perf_counter()
                self._stage_ms = {"preprocess": 0.0, "inference": 0.0}
                self._item_frame = frame
            t0 = time.perf_counter()
            tensor = self.preprocessor(frame.pixels, frame.order, out=self._tensor)
            t1 = time.perf_counter()
            probs = self.model.classifier.classify(tensor)
            t2 = time.perf_counter()
            self._stage_ms["preprocess"] += (t1 - t0) * 1000
            self._stage_ms["inference"] += (t2 - t1) * 1000
            self.summary.inferences += 1
            decision = self.voter.add(probs)
        elif state is TriggerState.EMPTY:
            decision = self.voter.flush()  # it left before K frames: decide on what was seen
            if decision is None:
                self._item_frame = None
            elif self.actuator.open_below()[0]:  # it went through an open floor: recorded, not routed again
                self.pending = Pending(decision, self._item_frame or frame, self._item_t0, 0.0)
                self._item_frame = None
                return self._resolve(*self._vanished("gone"))
        elif state is TriggerState.MOVING:
            self.voter.reset()  # it moved: start again when it is still
            self._item_frame = None
        if decision is None:
            return None
        self.trigger.decided()
        frame, self._item_frame = self._item_frame or frame, None
        self.pending = Pending(decision, frame, self._item_t0, (time.perf_counter() - self._item_t0) * 1000)
        return self._try_route()

    def _vanished(self, taken: str) -> tuple[int | None, str]:
        return vanished(self.actuator.open_below, taken)

    def _on_event_now(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _destination(self, compartment: int) -> tuple[int, str]:
        """Where an item bound for `compartment` goes now: a full one reroutes to the fallback's
        compartment when that has room (when_full = "fallback"); otherwise it stays bound (and waits)."""
        full = self.machine.full()
        fallback = self.route(self.route.fallback, True)
        if compartment in full and self.cfg.hardware.when_full == "fallback" and compartment != fallback \
                and fallback not in full:
            names = self.cfg.hardware.compartment_names  # as printed on the bin, as `run` and the page say
            return fallback, (f"compartment {compartment_label(compartment, names)} full: "
                              f"rerouted to {compartment_label(fallback, names)}")
        return compartment, ""

    def _try_route(self) -> Event | None:
        p = self.pending
        assert p is not None
        target, note = self._destination(p.decision.compartment)
        if self.record_guard is not None:
            self.record_guard.tick()  # no room for its record: held, not sorted unrecorded
        blocker = self.machine.blocking(target)
        if blocker is not None:
            if not p.held_by:
                self.summary.held += 1
                log.warning("item (%s) waits on the tray: %s", p.decision.label, blocker.key)
                self.actuator.show("held")
            p.held_by = blocker.key
            return None
        if self.events is not None:  # a power cut from here to its record must not lose the item
            p.event_id = p.event_id or new_event_id()
            to = compartment_label(target, self.cfg.hardware.compartment_names)  # as printed on the bin
            self.events.intend(self._event(p, None, f"the bin stopped (power cut or kill) while routing it to "
                                                    f"compartment {to}: it may be there, or was still on the "
                                                    "tray and was sorted again after the start"))
        t0 = time.perf_counter()
        try:
            result = self.actuator.route(target, p.decision.uncertain)
        except EcoSorterError as e:  # a bad compartment number or a closed actuator: never the loop
            self.machine.raise_("servo", str(e))
            p.held_by = "servo"
            return None
        route_ms = (time.perf_counter() - t0) * 1000
        if not result.ok:  # stopped before the drop: the item is still on the tray
            if not p.held_by:
                self.summary.held += 1
            p.held_by = result.stopped or "fault"
            return None
        if result.stopped:  # dropped, then a later step stopped: the item is in; the fault is raised apart
            note = "; ".join(x for x in (note, f"after the drop: {result.note}") if x)
        elif p.held_by:
            note = "; ".join(x for x in (note, f"waited for {p.held_by}") if x)
        return self._resolve(target, note, route_ms)

    def _resolve(self, routed_to: int | None, note: str, route_ms: float = 0.0) -> Event:
        """The one place an item becomes an event: once, routed or not."""
        p, self.pending = self.pending, None
        assert p is not None
        d = p.decision
        if routed_to is None:
            log.error("item not routed: %s", note)
        elif note:
            log.warning("routing: %s", note)
        event = self._event(p, routed_to, note, route_ms)
        self._record(event, p.frame)
        self._watch_model(event)
        self.last_event_id = event.id
        s = self.summary
        s.items += 1
        s.uncertain += d.uncertain
        s.counts[d.label] = s.counts.get(d.label, 0) + 1
        if routed_to is None:
            s.unrouted += 1
        else:
            s.routed[routed_to] = s.routed.get(routed_to, 0) + 1
            s.rerouted += routed_to != d.compartment
        s.latency_ms.append(event.latency_ms["total"])
        if routed_to is not None and self.actuator.clears_tray:
            self.trigger.rearm()
        return event

    def _event(self, p: Pending, routed_to: int | None, note: str, route_ms: float = 0.0) -> Event:
        d = p.decision
        return Event(
            label=d.label, confidence=d.confidence, probabilities=d.probabilities, uncertain=d.uncertain,
            compartment=d.compartment, routed_to=-1 if routed_to is None else routed_to,
            routed_ok=routed_to is not None, frames=d.frames, model_sha256=self.model.sha256, bin_id=self.cfg.bin_id,
            note=note, source_name=p.frame.name, time=wall_iso(self.clock.time()),
            latency_ms={**{k: round(v, 3) for k, v in self._stage_ms.items()}, "route": round(route_ms, 3),
                        "total": round(p.decided_ms, 3)}, **({"id": p.event_id} if p.event_id else {}))

    def _record(self, event: Event, frame: Frame) -> None:
        # Every sink gets the event even if another fails: sorting never stops for a sink.
        if self.captures is not None:
            event.image = self.captures.capture(event, frame.pixels, frame.order)
            self._health("captures", not self.captures.error, self.captures.error or "ok")
        if self.events is not None:
            ok = self.events.append(event)
            self._health("disk", ok, self.events.error if not ok else str(self.events.path.parent))
            if self.record_guard is not None:
                self.record_guard.recorded(ok)
        for sink in self.sinks:
            try:
                sink.record(event, frame.pixels, frame.order)
            except Exception as e:
                log.exception("sink %s failed: %s", type(sink).__name__, e)
        if self.board is not None:
            self.board.record(event, frame.pixels, frame.order)
        if self.mqtt is not None:
            self.mqtt.record(event)

    def _watch_model(self, event: Event) -> None:
        """Rolling figures against the model's validation figures: a warning, never a stop."""
        try:
            self.drift.item(event.id, event.label, event.uncertain, event.confidence)
            out, why = self.drift.check()
            self.machine.set_hold("model_drift", out, why)
        except Exception:
            log.exception("drift watch failed; sorting goes on")

    # ------------------------------------------------------------------ between items
    def flag(self, event_id: str) -> bool:
        return self.feedback.flag(event_id)

    def label(self, event_id: str, label: str, who: str) -> bool:
        return self.feedback.label(event_id, label, who)

    def clear_fault(self, who: str) -> bool:
        """A person says the mechanism is free again (button held, page, MQTT)."""
        return bool(self.machine.clear_faults(who))

    def tick(self) -> None:
        """Read what the bin's inputs say, let the machine decide, end timed outputs. Every pass."""
        m, act = self.machine, self.actuator
        m.lid(act.lid_open())
        m.fill(act.full(), set(act.full_sensors))
        if self.record_guard is not None:
            self.record_guard.tick()
        if self.inputs is not None:
            failing = self.inputs.power_failing()
            if failing and not m.active("power"):
                m.raise_("power")
                act.park()  # safe positions while there is still power to reach them
            elif not failing:
                m.clear("power")
            for press in self.inputs.presses():
                if press == "long":
                    # the one hold a person learns: it clears a fault and, with the lid shut,
                    # is also the resume press (interlock_resume = "button")
                    cleared = self.clear_fault("button")
                    if not m.resume_pressed("button") and not cleared:
                        log.info("clear button held: no fault to clear")
                elif m.active("resume_button"):
                    m.resume_pressed("button")
                elif self.last_event_id:
                    self.flag(self.last_event_id)
        act.tick()
        if not act.parked() and m.may_park():
            act.park()  # stopped with a servo somewhere unknown or a door open: safe at the first safe moment
        if self.pending is not None and self.pending.held_by and m.may_move():
            event = self._try_route()
            if event is not None:
                self._on_event_now(event)

    def wake_at(self) -> float | None:
        """The next instant tick() changes something by itself (the simulator skips idle time to it)."""
        due = [t for t in (self.machine.wake_at(), self.actuator.wake_at(),
                           self.inputs.wake_at() if self.inputs is not None else None) if t is not None]
        return min(due) if due else None

    def _on_machine(self, entry: Entry, state: str, who: str) -> None:
        d = entry.to_dict()
        if self.machine_log is not None:
            self.machine_log.record(d, state, who, self.clock.time())
        if self.mqtt is not None:
            self.mqtt.publish_machine(d, state, who)
        if self.board is not None:
            self.board.set_machine(self.machine.snapshot())
            if entry.name == "full":
                full = self.machine.full()
                self.board.set_fill({c: c in full for c in range(self.route.count)})
            if entry.name == "lid":
                self.board.set_link("lid", "open" if state == "raised" else "closed")
        if state == "cleared" and self.machine.may_move():
            self.actuator.show("ready")
        elif state == "raised":
            self.actuator.show("fault" if entry.condition.kind == "fault" else "held")

    def housekeeping(self) -> None:
        """State publishing and model swaps: only while no item is being decided. Commands run on
        their own worker (edge/commands.py); nothing here may stop the loop."""
        try:
            self.tick()
            if self.mqtt is not None:
                now = self.clock.monotonic()
                if self.board is not None and now - self._last_state_t > 2.0:
                    self._last_state_t = now
                    self.mqtt.publish_state(self.board.snapshot(), {"sha256": self.model.sha256,
                                                                     "version": self.model.manifest.version})
            if self._swap_to is not None and self._item_frame is None and self.pending is None:
                self._swap_model(self._swap_to)
        except Exception:
            log.exception("housekeeping failed; sorting goes on")

    def request_swap(self, path: Path) -> None:
        """Called by the command worker with an installed, verified model: loaded between items."""
        self._swap_to = Path(path)

    def _swap_model(self, path: Path) -> None:
        self._swap_to = None
        try:
            new = prepare_swap(path, self.cfg, self.model, self.store, self.route, self.preprocessor.roi)
        except EcoSorterError as e:  # keep sorting with the model we have
            log.error("model swap refused, keeping %s: %s", self.model.sha256[:12], e)
            self._health("model", True, f"{self.model.path.name} (update refused: {e})")
            return
        old, self.model, self.voter, self.preprocessor = self.model, new.model, new.voter, new.preprocessor
        self._tensor = self.preprocessor.new_buffer()
        self.drift = DriftWatch(expected_for(self.voter.rule, self.model.manifest.verification))
        self.machine.clear("model_drift", who="new model")
        old.close()
        if self.board is not None:  # same ids (checked), maybe new display names
            self.board.labels = new.names
            self.board.set_model(new.trust)
        if self.mqtt is not None:
            self.mqtt.labels = new.names
        log.info("now sorting with model %s", self.model.sha256[:12])
        self._health("model", True, f"{self.model.path.name} ({self.model.sha256[:12]}) on "
                                    f"{self.model.classifier.runtime}")

    def _camera(self, ok: bool, detail: str) -> None:
        if ok != self._camera_ok:  # the hold and the page's chip change with the state, not every frame
            self._camera_ok = ok
            self.machine.set_hold("camera", not ok, detail)
            if self.board is not None:
                self.board.set_link("camera", "ok" if ok else "down", detail)
        self._health("camera", ok, detail)

    def _health(self, part: str, ok: bool, detail: str = "") -> None:
        if self.board is not None:
            self.board.set_health(part, ok, detail)

    # ------------------------------------------------------------------ the loop
    def frames(self, stop: threading.Event):
        """Frames in order from a file/folder source; the newest frame from a live camera."""
        if self.reader is None:
            self.source.open()
            while not stop.is_set():
                try:
                    frame = self.source.read()
                except SourceError as e:  # the camera is down: hold, keep ticking, try again
                    self._camera(False, str(e))
                    self.notifier.watchdog()
                    self.housekeeping()
                    self.clock.sleep(min(0.5, self.cfg.camera.stall_timeout_s))
                    continue
                if frame is None:
                    return
                if not self._camera_ok:
                    self._camera(True, self.source.name)
                yield frame
            return
        self.reader.start()
        poll = min(0.5, self.cfg.camera.stall_timeout_s)
        while not stop.is_set():
            frame = self.reader.get(timeout=poll)
            h = self.reader.health
            self._camera(h.state in ("ok", "slow"), f"{h.state}: {h.error}" if h.error else f"{h.fps:.1f} fps")
            if frame is None:
                if self.reader.ended:
                    return
                if time.monotonic() < self.reader.alive_until:
                    # the camera is down but the capture thread is alive and retrying: the loop is
                    # healthy; only a thread stuck in a driver call lets the watchdog fire
                    self.notifier.watchdog()
                self.housekeeping()
                continue
            yield frame

    def run(self, stop: threading.Event | None = None, max_items: int | None = None,
            on_event: Callable[[Event], None] | None = None) -> Summary:
        stop = stop or threading.Event()

        def deliver(ev: Event) -> None:  # every recorded item, whichever path routed it
            if on_event:
                on_event(ev)

        self._on_event = deliver  # items routed from tick() when a hold ends, camera up or down
        rule = self.voter.rule  # which thresholds decide, so the page says it
        budget = f", thresholds for {100 * rule.budget:g}% contamination ({rule.source})" if rule.budget else ""
        self._health("model", True, f"{self.model.path.name} on {self.model.classifier.runtime}{budget}")
        self._health("camera", True, self.source.name)
        if self.events is not None:
            self._health("disk", True, str(self.events.path.parent))
        self._health("pins", True, self.actuator.profile)
        if self.board is not None:
            self.board.set_machine(self.machine.snapshot())
            self.board.set_link("lid", "none" if self.actuator.interlock is None else
                                ("open" if self.actuator.lid_open() else "closed"))
            self.board.set_link("mqtt", "off" if self.mqtt is None else "disconnected")
            self.board.set_link("camera", "ok", self.source.name)
        self.notifier.ready(f"sorting with {self.model.path.name}")
        if self.mqtt is not None:
            self.mqtt.start()
        try:
            for frame in self.frames(stop):
                self.notifier.watchdog()  # only reached while frames flow
                self.housekeeping()
                try:
                    event = self.process(frame)
                except Exception:
                    self.summary.bad_frames += 1
                    log.exception("frame %d failed; going on with the next", frame.seq)
                    continue
                if event is not None:
                    deliver(event)
                if max_items is not None and self.summary.items >= max_items:
                    break
            if self.pending is not None:  # stopping with an item on the tray: recorded, not lost
                deliver(self._resolve(None, f"still on the tray at stop (held by {self.pending.held_by or 'nothing'})"))
            if stop.is_set():
                self._last_look(deliver)
        finally:
            self._on_event = None
        self.notifier.stopping()
        return self.summary

    def _last_look(self, deliver: Callable[[Event], None]) -> None:
        """Stopped by a signal: park, then look at the tray once more. An item put down after the
        signal (while the last one finished, or during the park) is recorded as on the tray at
        stop, not lost (#18.6). The item just recorded, still lying there, is not counted again."""
        try:
            self._parked_at_stop = self.actuator.park()
            if self.cfg.trigger.mode == "always":  # every frame "is" an item there: nothing to look for
                return
            read = (lambda: self.reader.get(timeout=1.0)) if self.reader is not None else self.source.read
            frame = still_item(read, self.trigger.update, self.cfg.trigger.still_frames + 2)
            if frame is None:
                return
            tensor = self.preprocessor(frame.pixels, frame.order, out=self._tensor)
            self.voter.reset()
            decision = self.voter.add(self.model.classifier.classify(tensor)) or self.voter.flush()
        except Exception as e:  # on the way out: log, never a traceback instead of an exit
            log.error("last look at the tray at stop failed: %s", e)
            return
        assert decision is not None
        self.pending = Pending(decision, frame, time.perf_counter(), 0.0)
        deliver(self._resolve(None, "put on the tray as the bin stopped: still on the tray at stop (not sorted)"))

    def close(self) -> None:
        """Hardware safe first, then the rest; every step runs even if one fails."""
        if self._closed:
            return
        self._closed = True
        steps = [lambda: self.actuator.close(park=not self._parked_at_stop), self._record_pending]
        if self.machine_log is not None:
            steps.append(self.machine_log.close)
        if self.inputs is not None:
            steps.append(self.inputs.close)
        if self.reader is not None:
            steps.append(self.reader.close)
        else:
            steps.append(self.source.close)
        steps += [s.close for s in self.sinks if hasattr(s, "close")]
        if self.commands is not None:
            steps.append(self.commands.close)
        if self.mqtt is not None:
            steps.append(self.mqtt.close)
        if self.record_guard is not None:
            steps.append(self.record_guard.close)  # an integrity check under way: stopped
        if self.events is not None:
            steps.append(self.events.close)
        steps += [self.model.close, self.notifier.close]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("while closing")

    def _record_pending(self) -> None:
        """An item still on the tray when the process ends by an error: recorded, not lost."""
        if self.pending is not None:
            self._resolve(None, f"still on the tray at stop (held by {self.pending.held_by or 'nothing'})")

    def __enter__(self) -> Sorter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LAST_GOOD_HARDWARE = "last-good-hardware.json"


def build_sorter(cfg: Config, pin_factory=None, state_dir: Path | None = None, clock: Clock = SYSTEM_CLOCK,
                 source: FrameSource | None = None, remember_hardware: bool = True) -> Sorter:
    """Everything from the config, validated before anything moves; partial builds are closed.
    remember_hardware=False (`run --simulate`): no last-good-hardware.json, which `ecosorter safe`
    would trust after a bad edit of the real config."""
    labels = load_labels_file(cfg.model.labels_file, "model.labels_file")
    preprocess = None
    if cfg.model.preprocess:
        preprocess = preset(cfg.model.preprocess)
    state = Path(state_dir or cfg.record.state_dir)
    store = ModelStore.from_config(cfg, state)
    model, rolled_back = _load_with_rollback(cfg, store, labels, preprocess)
    store.expected_labels = model.manifest.label_ids
    opened: list = [model]
    try:
        trust = describe_running(model, store, cfg.model.allow_unverified)  # a --force'd model: refused
        errors = label_errors(cfg, model.manifest.label_ids)
        if errors:
            raise ConfigErrors(errors)
        route = CompartmentMap(cfg.hardware.compartments, model.manifest.label_ids, cfg.decision.fallback)
        if pin_factory is None and cfg.hardware.profile != "none":
            pin_factory = make_pin_factory(cfg.hardware.pin_factory)
        hw = cfg.hardware
        machine = Machine(clock, hw.resume_delay_s, hw.interlock_resume, hw.full_confirm_s, hw.compartment_names)
        actuator = make_actuator(hw, route.count, pin_factory, machine, clock)
        opened.append(actuator)
        inputs = None
        if hw.profile != "none" and any(p >= 0 for p in (hw.item_sensor_pin, hw.wrong_button_pin, hw.power_fail_pin)):
            inputs = Inputs(hw, pin_factory, clock)
            opened.append(inputs)
        events = EventLog(state / "events.db", outbox=cfg.mqtt.enabled,
                          reserve_bytes=int(cfg.record.disk_reserve_mb * 1e6))
        opened.append(events)
        events.recover_routing()  # items the last run was moving when it died: recorded now
        names = {lb.id: lb.name for lb in model.labels}
        board = StatusBoard(cfg.bin_id, names, compartments=dict(hw.compartments),
                            compartment_names=hw.compartment_names,
                            fill_sensors=[int(c) for c in hw.full_sensor_pins if c.isascii() and c.isdigit()])
        board.set_model(trust)
        captures = CaptureStore(state / "captures", cfg.record.capture, cfg.record.capture_confident_fraction,
                                cfg.record.capture_quota_mb)
        events.on_disk_full = captures.make_room  # photos make room for events on a full disk
        mqtt = MqttLink(cfg.mqtt, cfg.bin_id, events.path, names, compartments=cfg.hardware.compartments,
                        trusted=frozenset(cfg.commands.trust_broker_for)) if cfg.mqtt.enabled else None
        if source is None:
            source = open_source(cfg.camera, on_bad_image=lambda e: log.warning("%s", e))
        sorter = Sorter(cfg, model, source, actuator, events=events, board=board, captures=captures,
                        mqtt=mqtt, store=store, inputs=inputs, clock=clock,
                        machine_log=MachineLog(events.path))
        sorter.record_guard = RecordGuard(events, machine, clock, cfg.record.log_check_s)
        if mqtt is not None:
            sorter.commands = CommandProcessor(cfg, store, state, callbacks_for(sorter), mqtt.reply).start()
            mqtt.on_command = sorter.commands.submit
            mqtt.on_link = lambda s, d: board.set_link("mqtt", s, d)
        if rolled_back:
            board.set_health("model", True, f"rolled back: {rolled_back}")
        if remember_hardware:
            save_last_good_hardware(cfg, state)
        return sorter
    except BaseException:
        for thing in reversed(opened):
            thing.close()
        raise


def save_last_good_hardware(cfg: Config, state: Path) -> None:
    """The hardware section of a config that started: `ecosorter safe` uses it when the config
    file is later broken or missing, so systemd can still make the bin safe after a bad edit."""
    path = state / LAST_GOOD_HARDWARE
    try:  # fsynced: a power cut soon after the start must not leave `safe` an empty file to fall back on
        write_durably(path, json.dumps(asdict(cfg.hardware), indent=1).encode())
    except OSError as e:
        log.warning("cannot keep the last good hardware config in %s: %s", path, e)


def _load_with_rollback(cfg: Config, store: ModelStore, labels, preprocess) -> tuple[LoadedModel, str]:
    """Load the configured or installed model; if the installed one fails, roll back to the previous."""
    path = cfg.model.path or default_model_path(store.dir.parent)
    args = (cfg.model.backend, cfg.model.num_threads or None, labels, preprocess)
    try:
        if not cfg.model.path and path is not None:
            store.check_current()  # the store's link, to one of its checked copies
        return load_model(path, *args), ""
    except ModelError as e:
        if cfg.model.path or not store.previous.is_symlink():
            raise
        log.error("installed model failed to load (%s); rolling back to the previous one", e)
        store.rollback()
        return load_model(store.current, *args), str(e)


def default_model_path(state: Path) -> Path | None:
    """The installed model (`ecosorter model install`), else None: the bundled demo model."""
    current = state / "models" / "current.tflite"
    return current if current.exists() else None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)}
