"""Draw docs/pi-wiring.png: the chute bin's wiring on a Raspberry Pi 4/5 (BCM numbers).

    .venv/bin/python tools/wiring.py docs/pi-wiring.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

RED, BLACK, ORANGE, BLUE, GREEN, PURPLE, GREY = "#d62728", "#222222", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"


def box(ax, x, y, w, h, title, lines=(), color="#f2f2f2"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.15", fc=color, ec="#444444"))
    ax.text(x + w / 2, y + h - 0.28, title, ha="center", va="top", fontsize=10.5, weight="bold")
    for i, line in enumerate(lines):
        ax.text(x + 0.15, y + h - 0.75 - 0.36 * i, line, ha="left", va="top", fontsize=8.2, family="monospace")


def wire(ax, pts, color, label=None, lw=2.2, label_at=0):
    xs, ys = zip(*pts, strict=True)
    ax.plot(xs, ys, color=color, lw=lw, solid_capstyle="round", zorder=3)
    if label:
        (x0, y0), (x1, y1) = pts[label_at], pts[label_at + 1]
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, label, color=color, fontsize=7.8, ha="center", va="bottom",
                zorder=4, bbox={"fc": "white", "ec": "none", "pad": 0.5})


def main(out: str) -> None:
    fig, ax = plt.subplots(figsize=(13, 8.2), dpi=110)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 10.2)
    ax.axis("off")
    ax.text(8, 9.95, "EcoSorter chute bin: wiring on a Raspberry Pi 4 / Pi 5 (BCM GPIO numbers)", ha="center",
            va="top", fontsize=13, weight="bold")

    box(ax, 5.6, 3.1, 4.6, 5.9, "Raspberry Pi 4 / 5", [
        "pin 2,4   5V (from its own USB-C PSU)",
        "pin 6     GND",
        "pin 32    GPIO12  PWM0 ch0 -> chute",
        "pin 33    GPIO13  PWM0 ch1 -> trapdoor",
        "pin 3,5   GPIO2/3 SDA/SCL (PCA9685)",
        "pin 11    GPIO17  lid switch",
        "pin 15    GPIO22  fill sensor c2",
        "pin 16    GPIO23  break-beam",
        "pin 18    GPIO24  'wrong?' button",
        "pin 37    GPIO26  UPS low-power",
        "CSI/CAM   camera ribbon",
        "",
        "config.txt:",
        " dtoverlay=pwm-2chan,pin=12,",
        "   func=4,pin2=13,func2=4",
    ], "#e8f4e8")
    box(ax, 0.3, 6.3, 4.2, 2.7, "Servo PSU 5-6 V, >= 3 A", [
        "not the Pi's 5 V rail:", "2 servos stall at ~1.5-2.5 A", "each (MG996R class)", "",
        "GND joined to Pi GND"], "#fdecea")
    box(ax, 11.4, 6.6, 4.3, 2.4, "Chute servo", ["signal (orange) <- GPIO12", "+ (red) <- servo PSU +",
                                                 "- (brown) <- common GND"], "#fff4e5")
    box(ax, 11.4, 3.9, 4.3, 2.4, "Trapdoor servo", ["signal (orange) <- GPIO13", "+ (red) <- servo PSU +",
                                                    "- (brown) <- common GND"], "#fff4e5")
    box(ax, 0.3, 2.9, 4.2, 2.9, "Inputs (pull-up, to GND)", ["lid switch       GPIO17", "fill c2 (NO)     GPIO22",
                                                           "break-beam rx    GPIO23", "'wrong?' button  GPIO24",
                                                           "UPS HAT LBO      GPIO26"], "#e8eef8")
    box(ax, 11.4, 0.4, 4.3, 2.9, "or: PCA9685 board", ["VCC <- Pi 3.3 V (pin 1)", "SDA/SCL <- GPIO2/3",
                                                       "V+ <- servo PSU +", "ch0 chute, ch1 trapdoor",
                                                       "servo_driver = \"pca9685\""], "#f1eaf8")
    box(ax, 5.6, 0.4, 4.6, 2.2, "Camera", ["Camera Module 3 on CSI", "(Pi 5: 22-pin mini cable)",
                                           "or USB UVC -> /dev/video0"], "#f2f2f2")

    # power: servo PSU + to both servos (over the Pi, not from it); grounds joined at the Pi
    wire(ax, [(4.5, 8.1), (4.9, 8.1), (4.9, 9.3), (11.15, 9.3), (11.15, 7.74), (11.4, 7.74)], RED, "servo V+ (own PSU)",
         label_at=2)
    wire(ax, [(11.15, 7.74), (11.15, 5.04), (11.4, 5.04)], RED)
    wire(ax, [(4.5, 6.66), (5.2, 6.66), (5.2, 7.74), (5.6, 7.74)], BLACK, "GND", label_at=0)
    wire(ax, [(10.2, 7.74), (10.85, 7.74), (10.85, 7.38), (11.4, 7.38)], BLACK)
    wire(ax, [(10.85, 7.38), (10.85, 4.68), (11.4, 4.68)], BLACK)
    # signals
    wire(ax, [(10.2, 7.38), (10.45, 7.38), (10.45, 8.1), (11.4, 8.1)], ORANGE)
    wire(ax, [(10.2, 7.02), (10.6, 7.02), (10.6, 5.4), (11.4, 5.4)], ORANGE)
    # I2C to the PCA9685
    wire(ax, [(10.2, 6.66), (10.35, 6.66), (10.35, 2.3), (11.4, 2.3)], PURPLE, "SDA/SCL", label_at=2)
    # inputs
    wire(ax, [(4.5, 4.3), (5.6, 4.3)], BLUE, "5 inputs", label_at=0)
    # camera
    wire(ax, [(7.9, 2.6), (7.9, 3.1)], GREY)
    ax.text(0.3, 0.25, "Servos never take power from the Pi's 5 V pins: a stalled servo browns the Pi out "
            "(doctor's 'power' line shows it).\nServo pins are the defaults; input pins are examples for interlock_pin, full_sensor_pins, item_sensor_pin, wrong_button_pin, power_fail_pin.",
            fontsize=8.5, style="italic")
    fig.savefig(out, bbox_inches="tight")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/pi-wiring.png")
