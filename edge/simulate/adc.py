"""An MCP3008 on gpiozero's own mock SPI: the slave side of the bus, answering each conversion
with a voltage read from the world at that instant (a servo's potentiometer).

gpiozero's `MCP3008` on a MockFactory bit-bangs SPI over mock pins (SCLK 11, MOSI 10, MISO 9,
CE0 8); this device listens on those pins exactly as the chip would. The protocol state machine
follows gpiozero's own test double for the MCP3xxx family.
"""

from __future__ import annotations

from collections.abc import Callable

from gpiozero.pins.mock import MockSPIDevice

from ecosorter.edge.hardware.pins import SPI0_PINS


class SimMCP3008(MockSPIDevice):
    """`channels`: channel -> a callable giving that input as a fraction of Vref (0-1)."""

    BITS = 10

    def __init__(self, channels: dict[int, Callable[[], float]], pin_factory):
        super().__init__(SPI0_PINS["SCLK"], SPI0_PINS["MOSI"], SPI0_PINS["MISO"], SPI0_PINS["CE0"],
                         pin_factory=pin_factory)
        self.channels = channels
        self.state = "idle"
        self.conversions = 0

    def rx_word(self) -> int:  # the MOSI pin is a PWM-capable mock pin here: its levels are 0.0 / 1.0
        result = 0
        for bit in self.rx_buf:
            result = (result << 1) | int(bit)
        return result

    def on_start(self) -> None:
        super().on_start()
        self.state = "idle"
        # gpiozero's mock SPI pins keep every level they ever had (50 per conversion): a week of
        # polling the servos' feedback grew the process ~48 MB a day. Only the last is needed.
        for pin in (self.clock_pin, self.select_pin, self.mosi_pin, self.miso_pin):
            if pin is not None and len(pin.states) > 1:
                del pin.states[:-1]

    def on_bit(self) -> None:
        if self.state == "idle":  # leading zeros, then the start bit
            if self.rx_buf[-1]:
                self.state, self.rx_buf = "mode", []
        elif self.state == "mode":  # 1 = single-ended, 0 = differential
            self.state, self.rx_buf = ("single" if self.rx_buf[-1] else "diff"), []
        elif self.state in ("single", "diff"):
            if len(self.rx_buf) == 3:
                channel = self.rx_word()
                read = self.channels.get(channel)
                value = min(1.0, max(0.0, read() if read is not None else 0.0))
                self.conversions += 1
                self.tx_word(round(value * (2 ** self.BITS - 1)), self.BITS + 2)  # a null bit, then the result
                self.state = "result"
        elif self.state == "result" and not self.tx_buf:
            self.state, self.rx_buf = "idle", []
