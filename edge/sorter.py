"""The loop: source -> trigger -> preprocess -> classify -> decide -> act -> record.

The only module that knows every stage. Each arrow is a plain value (a Frame, a tensor, a
probability vector, a Decision, an Event); no stage calls back up the pipe.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecosorter.edge.commands import CommandProcessor, callbacks_for
from ecosorter.edge.config import Config
from ecosorter.edge.decide import CompartmentMap, TriggerState, Voter, make_trigger
from ecosorter.edge.errors import EcoSorterError, ModelError
from ecosorter.edge.hardware import Actuator, make_actuator, make_pin_factory
from ecosorter.edge.hardware.inputs import Inputs
from ecosorter.edge.model import LoadedModel, load_model
from ecosorter.edge.model.manifest import load_labels_file
from ecosorter.edge.model.store import DownloadPolicy, ModelStore
from ecosorter.edge.preprocess import Preprocessor
from ecosorter.edge.preprocess.spec import preset
from ecosorter.edge.record import Event, EventLog
from ecosorter.edge.record.captures import CaptureStore
from ecosorter.edge.record.mqtt import MqttLink
from ecosorter.edge.service import Notifier
from ecosorter.edge.sources import Frame, FrameSource, LatestFrameReader, open_source
from ecosorter.edge.sources.quality import QualityMonitor
from ecosorter.edge.status import StatusBoard

log = logging.getLogger("ecosorter.sorter")


@dataclass
class Summary:
    items: int = 0
    uncertain: int = 0
    frames: int = 0
    inferences: int = 0
    bad_frames: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    # the last 2,000 decisions: enough for stable percentiles, bounded for a bin that never stops
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))


class Sorter:
    def __init__(self, cfg: Config, model: LoadedModel, source: FrameSource, actuator: Actuator,
                 events: EventLog | None = None, board: StatusBoard | None = None,
                 sinks: list | None = None, notifier: Notifier | None = None,
                 is_present: Callable[[], bool] | None = None, captures: CaptureStore | None = None,
                 mqtt: MqttLink | None = None, store: ModelStore | None = None, inputs=None):
        self.cfg, self.model, self.source, self.actuator = cfg, model, source, actuator
        self.events, self.board, self.sinks = events, board, list(sinks or [])
        self.captures, self.mqtt, self.store = captures, mqtt, store
        self.inputs = inputs
        self.halt = threading.Event()  # set by the UPS low-power input: finish and stop
        self.last_event_id = ""
        if inputs is not None:
            is_present = is_present or (inputs.item_present if inputs.item_sensor is not None else None)
            inputs.on_wrong(lambda: self.flag(self.last_event_id) if self.last_event_id else None)
            inputs.on_power_fail(self._power_fail)
        self._swap_to: Path | None = None
        self.commands = None  # edge/commands.py's CommandProcessor, when MQTT is on
        self._last_state_t = 0.0
        self.notifier = notifier or Notifier()
        labels = model.manifest.label_ids
        roi = tuple(cfg.camera.roi) if cfg.camera.roi != [0.0, 0.0, 1.0, 1.0] else None
        self.preprocessor = Preprocessor(model.manifest.preprocess, model.manifest.input, roi)
        self._tensor = self.preprocessor.new_buffer()
        self.route = CompartmentMap(cfg.hardware.compartments, labels, cfg.decision.fallback)
        self.voter = Voter(cfg.decision, labels, self.route)
        self.trigger = make_trigger(cfg.trigger, roi, is_present)
        self.quality = QualityMonitor(cfg.trigger.dark_below, cfg.trigger.blur_below)
        self.summary = Summary(counts=dict.fromkeys(labels, 0))
        self.reader = LatestFrameReader(source, cfg.camera.stall_timeout_s, cfg.camera.reopen_backoff_max_s,
                                        expected_fps=cfg.camera.fps) if source.live else None
        self._stage_ms = {"preprocess": 0.0, "inference": 0.0}
        self._item_t0 = 0.0
        self._item_frame: Frame | None = None
        self._closed = False

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
        elif state is TriggerState.MOVING:
            self.voter.reset()  # it moved: start again when it is still
            self._item_frame = None
        if decision is None:
            return None
        self.trigger.decided()
        frame, self._item_frame = self._item_frame or frame, None
        t3 = time.perf_counter()
        result = self.actuator.route(decision.compartment, decision.uncertain)
        t4 = time.perf_counter()
        if not result.ok:
            log.error("routing: %s", result.note)
        elif result.note:
            log.warning("routing: %s", result.note)
        event = Event(
            label=decision.label, confidence=decision.confidence, probabilities=decision.probabilities,
            uncertain=decision.uncertain, compartment=decision.compartment,
            routed_to=result.compartment if result.ok else -1, routed_ok=result.ok, frames=decision.frames,
            model_sha256=self.model.sha256, bin_id=self.cfg.bin_id, note=result.note, source_name=frame.name,
            latency_ms={**{k: round(v, 3) for k, v in self._stage_ms.items()},
                        "route": round((t4 - t3) * 1000, 3),
                        "total": round((t3 - self._item_t0) * 1000, 3)})
        self._record(event, frame)
        self.last_event_id = event.id
        s = self.summary
        s.items += 1
        s.uncertain += decision.uncertain
        s.counts[decision.label] = s.counts.get(decision.label, 0) + 1
        s.latency_ms.append(event.latency_ms["total"])
        return event

    def _record(self, event: Event, frame: Frame) -> None:
        # Every sink gets the event even if another fails: sorting never stops for a sink.
        if self.captures is not None:
            event.image = self.captures.capture(event, frame.pixels, frame.order)
            self._health("captures", not self.captures.error, self.captures.error or "ok")
        if self.events is not None:
            ok = self.events.append(event)
            self._health("disk", ok, self.events.error if not ok else str(self.events.path.parent))
        for sink in self.sinks:
            try:
                sink.record(event, frame.pixels, frame.order)
            except Exception as e:
                log.exception("sink %s failed: %s", type(sink).__name__, e)
        if self.board is not None:
            self.board.record(event, frame.pixels, frame.order)
        if self.mqtt is not None:
            self.mqtt.record(event)

    # ------------------------------------------------------------------ between items
    def flag(self, event_id: str) -> bool:
        """A person says this item was sorted wrongly: keep its photo for retraining."""
        ok = self.events.flag(event_id) if self.events is not None else False
        if ok and self.captures is not None:
            image = self.captures.flag(event_id)
            if image and self.events is not None:
                self.events.set_image(event_id, image)
        return ok

    def _power_fail(self) -> None:
        log.warning("power failing (UPS signal): finishing the current item and stopping safely")
        self.halt.set()

    def housekeeping(self) -> None:
        """State publishing and model swaps: only while no item is being decided. Commands run on
        their own worker (edge/commands.py); nothing here may stop the loop."""
        try:
            if self.mqtt is not None:
                now = time.monotonic()
                if self.board is not None and now - self._last_state_t > 2.0:
                    self._last_state_t = now
                    self.mqtt.publish_state(self.board.snapshot())
            if self._swap_to is not None and self._item_frame is None:
                self._swap_model(self._swap_to)
        except Exception:
            log.exception("housekeeping failed; sorting goes on")

    def request_swap(self, path: Path) -> None:
        """Called by the command worker with an installed, verified model: loaded between items."""
        self._swap_to = Path(path)

    def _swap_model(self, path: Path) -> None:
        self._swap_to = None
        try:
            new = load_model(path, self.cfg.model.backend, self.cfg.model.num_threads or None)
            if new.manifest.label_ids != self.model.manifest.label_ids:
                new.close()
                raise ModelError(path, "labels differ from the running model's")
        except EcoSorterError as e:  # keep sorting with the model we have
            log.error("model swap refused, keeping %s: %s", self.model.sha256[:12], e)
            self._health("model", True, f"{self.model.path.name} (update refused: {e})")
            return
        old, self.model = self.model, new
        roi = self.preprocessor.roi
        self.preprocessor = Preprocessor(new.manifest.preprocess, new.manifest.input, roi)
        self._tensor = self.preprocessor.new_buffer()
        old.close()
        log.info("now sorting with model %s", new.sha256[:12])
        self._health("model", True, f"{new.path.name} ({new.sha256[:12]}) on {new.classifier.runtime}")

    def _health(self, part: str, ok: bool, detail: str = "") -> None:
        if self.board is not None:
            self.board.set_health(part, ok, detail)

    # ------------------------------------------------------------------ the loop
    def frames(self, stop: threading.Event):
        """Frames in order from a file/folder source; the newest frame from a live camera."""
        if self.reader is None:
            self.source.open()
            while not stop.is_set():
                frame = self.source.read()
                if frame is None:
                    return
                yield frame
            return
        self.reader.start()
        poll = min(0.5, self.cfg.camera.stall_timeout_s)
        while not stop.is_set():
            frame = self.reader.get(timeout=poll)
            h = self.reader.health
            self._health("camera", h.state in ("ok", "slow"), f"{h.state}: {h.error}" if h.error else f"{h.fps:.1f} fps")
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
        self._health("model", True, f"{self.model.path.name} on {self.model.classifier.runtime}")
        self._health("camera", True, self.source.name)
        if self.events is not None:
            self._health("disk", True, str(self.events.path.parent))
        self._health("pins", not self.actuator.fault, self.actuator.fault or self.actuator.profile)
        self.notifier.ready(f"sorting with {self.model.path.name}")
        if self.mqtt is not None:
            self.mqtt.start()
        for frame in self.frames(stop):
            if self.halt.is_set():
                break
            self.notifier.watchdog()  # only reached while frames flow
            self.housekeeping()
            try:
                event = self.process(frame)
            except Exception:
                self.summary.bad_frames += 1
                log.exception("frame %d failed; going on with the next", frame.seq)
                continue
            if event is not None:
                self._health("pins", not self.actuator.fault, self.actuator.fault or self.actuator.profile)
                if on_event:
                    on_event(event)
                if max_items is not None and self.summary.items >= max_items:
                    break
        self.notifier.stopping()
        return self.summary

    def close(self) -> None:
        """Hardware safe first, then the rest; every step runs even if one fails."""
        if self._closed:
            return
        self._closed = True
        steps = [self.actuator.close]
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
        if self.events is not None:
            steps.append(self.events.close)
        steps += [self.model.close, self.notifier.close]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("while closing")

    def __enter__(self) -> Sorter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_sorter(cfg: Config, pin_factory=None, state_dir: Path | None = None) -> Sorter:
    """Everything from the config, validated before anything moves; partial builds are closed."""
    labels = load_labels_file(cfg.model.labels_file, "model.labels_file")
    preprocess = None
    if cfg.model.preprocess:
        preprocess = preset(cfg.model.preprocess)
    state = Path(state_dir or cfg.record.state_dir)
    store = ModelStore(state, public_key=base64.b64decode(cfg.model.public_key) if cfg.model.public_key else None,
                       downloads=DownloadPolicy.from_config(cfg.model))
    model, rolled_back = _load_with_rollback(cfg, store, labels, preprocess)
    store.expected_labels = model.manifest.label_ids
    opened: list = [model]
    try:
        route = CompartmentMap(cfg.hardware.compartments, model.manifest.label_ids, cfg.decision.fallback)
        if pin_factory is None and cfg.hardware.profile != "none":
            pin_factory = make_pin_factory(cfg.hardware.pin_factory)
        actuator = make_actuator(cfg.hardware, route.count, route(cfg.decision.fallback, True), pin_factory)
        opened.append(actuator)
        inputs = None
        if cfg.hardware.profile != "none" and any(p >= 0 for p in (cfg.hardware.item_sensor_pin,  # noqa: SIM102
                                                                  cfg.hardware.wrong_button_pin,
                                                                  cfg.hardware.power_fail_pin)):
            inputs = Inputs(cfg.hardware, pin_factory)
            opened.append(inputs)
        events = EventLog(state / "events.db", outbox=cfg.mqtt.enabled,
                          reserve_bytes=int(cfg.record.disk_reserve_mb * 1e6))
        opened.append(events)
        names = {lb.id: lb.name for lb in model.labels}
        board = StatusBoard(cfg.bin_id, names)
        captures = CaptureStore(state / "captures", cfg.record.capture, cfg.record.capture_confident_fraction,
                                cfg.record.capture_quota_mb)
        events.on_disk_full = captures.make_room  # photos make room for events on a full disk
        mqtt = MqttLink(cfg.mqtt, cfg.bin_id, events.path, names) if cfg.mqtt.enabled else None
        source = open_source(cfg.camera, on_bad_image=lambda e: log.warning("%s", e))
        sorter = Sorter(cfg, model, source, actuator, events=events, board=board, captures=captures,
                        mqtt=mqtt, store=store, inputs=inputs)
        if mqtt is not None:
            sorter.commands = CommandProcessor(cfg, store, state, callbacks_for(sorter), mqtt.reply).start()
            mqtt.on_command = sorter.commands.submit
        if rolled_back:
            board.set_health("model", True, f"rolled back: {rolled_back}")
        return sorter
    except BaseException:
        for thing in reversed(opened):
            thing.close()
        raise


def _load_with_rollback(cfg: Config, store: ModelStore, labels, preprocess) -> tuple[LoadedModel, str]:
    """Load the configured or installed model; if the installed one fails, roll back to the previous."""
    path = cfg.model.path or default_model_path(store.dir.parent)
    args = (cfg.model.backend, cfg.model.num_threads or None, labels, preprocess)
    try:
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
