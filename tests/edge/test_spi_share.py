"""Two feedback channels on one MCP3008, built after an earlier bin's closed one: gpiozero's shared SPI
interface must not be torn out from under the new build when the old one is finalized."""

from __future__ import annotations

import gc

import gpiozero

from ecosorter.edge.config import load_config
from ecosorter.edge.hardware import make_actuator
from ecosorter.edge.simulate.pins import ClockedMockFactory


def test_a_stale_spi_interface_finalized_mid_build_does_not_break_the_next_channel(monkeypatch):
    cfg = load_config(overrides={"hardware.profile": "chute", "hardware.feedback_adc": "mcp3008",
                                 "hardware.servo_speed_deg_s": 3000.0, "hardware.settle_s": 0.0})
    real = gpiozero.MCP3008
    gc.disable()  # the earlier bin's interface stays unreachable but unfinalized, as between two GC runs
    try:
        make_actuator(cfg.hardware, 7, ClockedMockFactory()).close()

        def mcp_then_collect(*a, **k):  # the collector happens to run right after the first channel
            d = real(*a, **k)
            gc.collect()
            return d
        monkeypatch.setattr(gpiozero, "MCP3008", mcp_then_collect)
        pins = ClockedMockFactory()
        act = make_actuator(cfg.hardware, 7, pins)  # GPIOPinInUse: pin GPIO11 ... without the fix
        try:
            assert act.park()
        finally:
            act.close()
    finally:
        gc.enable()
