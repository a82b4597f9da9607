"""One hour of a busy bin at full speed: 5,000 items. Memory, threads, files and latency stay flat."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from ecosorter.edge.config import load_config
from ecosorter.edge.sorter import build_sorter
from tests.conftest import SAMPLES

ITEMS = int(os.environ.get("ECOSORTER_SOAK_ITEMS", "5000"))


def test_soak_5000_items(tmp_path, record_property):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    cfg = load_config(overrides={"camera.source": "folder", "camera.device": str(SAMPLES), "camera.loop": True,
                                 "hardware.pin_factory": "mock", "hardware.led_on_s": 0.0,
                                 "record.capture": "uncertain", "status.enabled": False})
    marks: dict[int, tuple[int, int, int]] = {}
    checked: dict[int, int] = {}  # event-log checks done by each mark

    def on_event(ev):
        n = sorter.summary.items
        if n in (1000, ITEMS):
            sorter.record_guard.check.wait()  # an event-log check under way (its thread, its files) is no leak
            checked[n] = sorter.record_guard.check.checks
            marks[n] = (proc.memory_info().rss, proc.num_fds(), threading.active_count())

    with build_sorter(cfg, state_dir=tmp_path) as sorter:
        s = sorter.run(max_items=ITEMS, on_event=on_event)
        assert s.items == ITEMS and sorter.events.count() == ITEMS
    (rss0, fds0, thr0), (rss1, fds1, thr1) = marks[1000], marks[ITEMS]
    lat = np.asarray(s.latency_ms)
    early, late = np.percentile(lat[:1000], 99), np.percentile(lat[-1000:], 99)
    growth = rss1 / rss0 - 1
    for k, v in {"rss_mb_at_1000": rss0 / 1e6, "rss_mb_at_end": rss1 / 1e6, "rss_growth": growth,
                 "p99_ms_early": early, "p99_ms_late": late, "fds": fds1, "threads": thr1}.items():
        record_property(k, round(float(v), 4))
    print(f"soak: {ITEMS} items, RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB ({100 * growth:+.2f}%), "
          f"fds {fds0}->{fds1}, threads {thr0}->{thr1}, p99 {early:.2f} -> {late:.2f} ms")
    assert growth < 0.05
    # SQLite keeps the file of a closed connection open while another connection of the process holds
    # locks on it (closing it would drop those), and reuses it for the next: after the first event-log
    # check, one descriptor more, and never another
    assert fds1 <= fds0 + (checked[1000] == 0 < checked[ITEMS]) and thr1 <= thr0
    # Latency drift is reported above and measured in benchmarks/, never asserted: on a shared 2-core
    # machine a timing bound is a coin toss (it failed once at 6.1 ms against 5.3 while a benchmark ran).
