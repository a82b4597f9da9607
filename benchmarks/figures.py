"""The one place performance figures become words: docs/performance.md and the marked blocks that
README.md and other docs quote, all rendered from docs/performance.json (written by `python -m benchmarks`).

`python -m benchmarks.figures` re-renders the documents from the committed JSON without measuring;
tests/test_figures.py fails when a committed document and the JSON disagree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "performance.json"
REPORT = ROOT / "docs" / "performance.md"
# document -> the blocks it quotes; each block sits between <!-- figures:NAME --> and <!-- /figures:NAME -->
QUOTED = {"README.md": ("readme-speed", "readme-simulate"), "docs/simulate.md": ("simulate-day",),
          "docs/training.md": ("training-speed",), "docs/status-page.md": ("status-page",)}
BLOCK = re.compile(r"^(?P<indent>[ ]*)(?P<open><!-- figures:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)"
                   r"^(?P=indent)(?P<close><!-- /figures:(?P=name) -->)", re.S | re.M)


def where(r: dict) -> str:
    return f"{r['cpu']}, {r['machine']}, {r['date']}"


def _x(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


def blocks(r: dict) -> dict[str, str]:
    inf, loop, day, page = r["inference_ms"], r["loop"], r["day24h"], r["status_page"]
    cores = r["cores"]
    lite, res = inf["litert demo int8 (1 thr)"], inf["litert resnet50 int8 (1 thr)"]
    lite_n, res_n = inf[f"litert demo int8 ({cores} thr)"], inf[f"litert resnet50 int8 ({cores} thr)"]
    src = "[docs/performance.md](docs/performance.md)"
    return {
        "readme-speed": (
            f"Measured by `python -m benchmarks` ({where(r)}; a shared machine): int8 inference\n"
            f"{lite:.1f} ms for the demo (EfficientNet-Lite2) against {res:.1f} ms for the seed ResNet50 int8 on 1 thread "
            f"({_x(res, lite)}; {_x(res_n, lite_n)} on {cores}),\n"
            f"the whole loop per item {loop['demo']['loop_ms_per_item']:.1f} ms against "
            f"{loop['resnet50']['loop_ms_per_item']:.1f} ms "
            f"({_x(loop['resnet50']['loop_ms_per_item'], loop['demo']['loop_ms_per_item'])}); all figures: {src}.\n"),
        "readme-simulate": (
            f"24 hours and {day['items']['placed']:,} items (`ecosorter simulate benchmarks/day24h.toml`) in "
            f"{day['wall_s']:.0f} s here, {where(r)}, by `python -m benchmarks`: {src}.\n"),
        "simulate-day": (
            f"`ecosorter simulate benchmarks/day24h.toml --json` ({where(r)}, by `python -m benchmarks`):\n"
            f"{day['virtual_s']:,.0f} virtual seconds; {day['items']['placed']:,} items placed, "
            f"{day['items']['decided']:,} decided, {day['items']['routed']:,} routed "
            f"({day['items']['rerouted']} rerouted to the fallback's compartment), never recorded "
            f"{day['items']['never_recorded']}; holds {_counts(day['holds'])}; faults {_counts(day['faults'])}; "
            f"**{day['wall_s']:.1f} s wall** (goal: <= 5 minutes).\n"),
        "training-speed": (
            f"Speed (`python -m benchmarks`, {where(r)}): int8 {lite:.1f} ms against the seed ResNet50 int8's\n"
            f"{res:.1f} ms per image ({_x(res, lite)}, 1 thread); the loop per item "
            f"{loop['demo']['loop_ms_per_item']:.1f} against {loop['resnet50']['loop_ms_per_item']:.1f} ms "
            f"([performance.md](performance.md)).\n"),
        "status-page": (
            f"`python -m benchmarks` ({where(r)}; shared with other jobs):\n\n"
            "| measure | value | note |\n|---|---|---|\n"
            + "".join(f"| {m} | {v} | {n} |\n" for m, v, n in page["rows"])),
    }


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def report(r: dict) -> str:
    lat = r["inference_ms"]
    base = lat["keras model.predict (resnet50)"]
    rows = "\n".join(f"| {k} | {v:.1f} | {base / v:.1f}x |" for k, v in lat.items())
    sizes = "\n".join(f"| {k} | {v:.1f} |" for k, v in r["size_mb"].items())
    p, loop = r["process"], r["loop"]
    loops = "\n".join(
        f"| the loop per item, {name} int8: trigger, preprocess, invoke, vote, route, SQLite commit (fsync), status "
        f"| {v['loop_ms_per_item']:.1f} ms (bare invoke {v['bare_invoke_ms']:.1f} ms: "
        f"{100 * v['overhead']:.0f}% more) | |" for name, v in loop.items())
    day = r["day24h"]
    return f"""# Performance

Every figure here, and every performance figure the README and the other documents quote, comes
from one run of `python -m benchmarks` (`make bench`), which writes `docs/performance.json` and
renders this page and the quoted blocks from it (`tests/test_figures.py` fails when they disagree).

- CPU: **{r['cpu']}** ({r['machine']}), Python {r['python']}, TensorFlow {r['tensorflow']},
  LiteRT {r['litert']}; {r['date']}; {r['wall_s']:.0f} s for the whole run.
- Load: {r['load']}
- Medians of {r['iterations']} runs after warm-up; two models compared call by call (interleaved), so
  noise from other jobs hits both. Speed goals are ratios against a baseline in the same run.
- The seed ResNet50 (ResNet50 + Flatten + Dense(7)) has random weights (latency does not depend on
  them), converted by `ecosorter-convert` as a user's model would be; the demo (EfficientNet-Lite2) is the bundled
  `edge/demo/demo_int8.tflite`.

![latency per path](latency.png)

## Inference per image (batch 1)

| path | ms | speed-up vs Keras `model.predict` |
|---|---|---|
{rows}

## File size

| file | MB |
|---|---|
{sizes}

## The edge loop

| what | measured | goal |
|---|---|---|
| preprocess a 640x480 BGR frame (int8 table) | {r['preprocess_640x480_ms']:.2f} ms | <= 2 ms |
{loops}
| peak RSS, bare LiteRT + OpenCV process, demo int8 | {p['bare_litert_opencv']['rss_mb']:.0f} MB | baseline |
| peak RSS, `ecosorter` edge process (sorter, SQLite, pins), demo int8 | {p['ecosorter_edge']['rss_mb']:.0f} MB | <= 150 MB |
| peak RSS, TensorFlow/Keras process, ResNet50 | {p['tensorflow_keras']['rss_mb']:.0f} MB | for comparison |
| start-up to first inference, bare | {p['bare_litert_opencv']['first_s']:.2f} s | baseline |
| start-up to first decision, `ecosorter` | {p['ecosorter_edge']['first_s']:.2f} s | <= 1 s |
| empty tray at 15 fps: inferences | {r['idle']['inferences']} in {r['idle']['frames']} frames | none |
| empty tray at 15 fps: CPU | {100 * r['idle']['cpu_of_one_core']:.1f}% of one core | <= 5% |

The loop's overhead over a bare `invoke()` is a fixed cost per item (trigger, SQLite commit with
fsync, board): large beside the demo's few milliseconds, small beside ResNet50's.

## 24 hours in the simulator

`ecosorter simulate benchmarks/day24h.toml`: {day['items']['placed']:,} items over {day['virtual_s']:,.0f} virtual
seconds in **{day['wall_s']:.1f} s** of wall time (goal: <= 5 minutes).

## Status page

{blocks(r)['status-page']}
## Event-log check

{log_check(r['log_check'])}
## On a Raspberry Pi

Not measured here: `ecosorter bench` on the bin gives its own figures; `make pi-check` compares
answers (not speed) on the Pi's platform under qemu ([pi.md](pi.md)). This CPU has AVX2 but no
int8 dot-product instructions (VNNI), so int8 here gains size more than speed; ARM cores with
`sdot` (the Pi 5's Cortex-A76) gain more from int8, the Pi 4's A72 less.
"""


def log_check(c: dict) -> str:
    """benchmarks/log_check.py's figures, on the smaller log `python -m benchmarks` writes."""
    during = c["append_during_check_ms"]
    return f"""`record.log_check_s`: `PRAGMA quick_check` of events.db on its own thread, against one append (what
the loop pays per item), on a {c['events']:,}-event log ({c['file_mb']:.1f} MB, SQLite {c['sqlite']}; medians of
{c['repeat']}). The run on a 100,000-event log, and what it means on a Pi: [reliability.md](reliability.md).

| measure | value |
|---|---|
| one append (commit + fsync), the baseline | {c['append_ms']:.3f} ms (max {c['append_max_ms']:.3f} of {c['appends']}) |
| quick_check, file in the OS page cache | {c['quick_check_warm_ms']:.1f} ms = {c['warm_over_append']:g}x one append |
| quick_check, file evicted from the page cache first | {c['quick_check_cold_ms']:.1f} ms = {c['cold_over_append']:g}x one append |
| appends while a cold check runs on its thread ({c['appends_during_checks']:,}) | median {_ms(during['median'])}, max {_ms(during['max'])} |
| the recovery on the loop thread (set aside, new log, {c['journal_max']:,} journal events written) | {c['recover_with_full_journal_ms']:.1f} ms |
"""


def _ms(v: float | None) -> str:
    return "none ran" if v is None else f"{v:.3f} ms"


def _indent(text: str, indent: str) -> str:
    # a block inside a list item keeps the item's indentation
    return "".join(indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def render_docs(r: dict, root: Path = ROOT) -> dict[Path, str]:
    """Every document this JSON decides: path -> its full text as it should be."""
    out = {root / "docs" / "performance.md": report(r)}
    made = blocks(r)
    for doc, names in QUOTED.items():
        path = root / doc
        text = path.read_text(encoding="utf-8")
        found = {m.group("name") for m in BLOCK.finditer(text)}
        missing = set(names) - found
        if missing:
            raise ValueError(f"{doc}: no <!-- figures:{sorted(missing)[0]} --> block")
        out[path] = BLOCK.sub(lambda m: m["indent"] + m["open"] + _indent(made[m["name"]], m["indent"])
                              + m["indent"] + m["close"], text)
    return out


def write_docs(r: dict, root: Path = ROOT) -> None:
    for path, text in render_docs(r, root).items():
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_docs(json.loads(FIGURES.read_text()))
    print(f"rendered {', '.join(sorted({'docs/performance.md', *QUOTED}))} from {FIGURES.relative_to(ROOT)}",
          file=sys.stderr)
