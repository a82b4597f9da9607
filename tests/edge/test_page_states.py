"""What a person at the bin sees in each state, in real headless Chromium on both 7-inch screens
(the official 800x480 display and the common 1024x600): the words, nothing cut off, and a screenshot.

Screenshots go to artifacts/ (or to $ECOSORTER_SHOTS: `ECOSORTER_SHOTS=docs pytest tests/edge/test_page_states.py`
refreshes the ones committed under docs/).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

from ecosorter.edge.status.server import start_status_server
from tests.edge.browser import SCREENS, Browser, dump_dom
from tests.edge.page_states import STATES

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("ECOSORTER_SHOTS") or os.environ.get("ECOSORTER_ARTIFACTS", ROOT / "artifacts"))
if not SHOTS.is_absolute():
    SHOTS = ROOT / SHOTS
# The README's five states (and the others) by file name; 1024x600 keeps the names docs/ always had.
SHOT_NAMES = {"normal": "ready", "lid-open": "hold", "jam": "fault", "full": "full", "uncertain": "uncertain",
              "camera-down": "camera-down", "parts-failing": "parts-failing",
              "everything-at-once": "everything-at-once"}
MIN_READABLE_PX = 28  # the state word and the chips, read from 2 m on a 7-inch screen


def shot(state: str, size: str) -> Path:
    if size == "1024x600":
        return SHOTS / ("status-page.png" if state == "normal" else f"status-{state}.png")
    return SHOTS / f"status-{size}-{SHOT_NAMES.get(state, state)}.png"


def part(dom: str, start: str, end: str) -> str:
    return dom[dom.index(start):dom.index(end, dom.index(start))]


def text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    return html.unescape(m.group(1)) if m else ""


EXPECT = {
    "normal": lambda d: (text(d, "dest") == "→ Kompartemen\xa01 / Compartment\xa01" and 'class="dest"' in d
                         and 'class="banner' not in d and text(d, "word") == "Siap / Ready"),
    "uncertain": lambda d: ('class="dest uncertain"' in d and text(d, "label") == "Tidak yakin"
                            and text(d, "english") == "Uncertain"
                            and text(d, "conf") == "Mungkin / Maybe: Logam / Metal (41%)"
                            and text(d, "dest") == "→ Kompartemen\xa04 / Compartment\xa04"
                            and "To the fallback compartment (Khusus / Special/other)" in text(d, "why")),
    "lid-open": lambda d: ("The lid is open" in part(d, 'class="banner hold"', "</div></div>")
                           and "Close the lid" in d and text(d, "word") == "Tunggu / Hold"
                           and re.search(r'data-link="lid"><span class="id">Penutup TERBUKA</span>'
                                         r'<span class="en">Lid: OPEN</span>', d) is not None),
    # the fifth compartment (index 4) is "5" on the bin; it and the third have fill sensors
    "full": lambda d: ("Compartment 5 is full" in part(d, 'class="banner hold"', "</div></div>")
                       and re.search(r'class="bin full sensor" data-index="4">.*?PENUH / FULL', d) is not None
                       and re.search(r'class="bin sensor" data-index="2">.*?Ada ruang / Room', d) is not None
                       and d.count("Ada ruang / Room") == 1 and text(d, "word") == "Tunggu / Hold"),
    "jam": lambda d: ("Jammed: chute did not reach 0 deg" in part(d, 'class="banner fault"', "</div></div>")
                      and "Fixed: resume" in d and text(d, "dest") == "TIDAK DISORTIR / NOT ROUTED"
                      and "chute did not reach home" in text(d, "why") and text(d, "word") == "Berhenti / Fault"),
    "parts-failing": lambda d: ("Sistem rusak" in d and "System failing: model, disk" in d
                                and "self-test failed after the update" in part(d, 'id="parts"', "<main>")
                                and "97% full" in part(d, 'id="parts"', "<main>")
                                and "connection refused" in d and text(d, "word") == "Tunggu / Hold"),
    "everything-at-once": lambda d: (d.count('class="banner ') == 3 and "Sistem rusak" in d
                                     and text(d, "word") == "Berhenti / Fault"),
    "camera-down": lambda d: (text(d, "english") == "Camera not working" and "The camera is not working" in d
                              and 'data-shown="idle"' in d and 'id="photo" alt="">' in d),
    # a warning: the item is still routed (sorting goes on), the banner says what to do
    "model-drift": lambda d: ("The model no longer fits this bin: label items and retrain"
                              in part(d, 'class="banner warning"', "</div></div>")
                              and "Peringatan · Warning" in d and "uncertain 38 per 100 items" in d
                              and text(d, "dest") == "→ Kompartemen\xa07 / Compartment\xa07"),
}

# Every visible element: no horizontal overflow (text cut or "..."), nothing outside the screen;
# where a box must hold its text (the item, tiles, chips, banners, the Today line), no vertical overflow.
LAYOUT_JS = """(() => {
  const bad = [], vw = innerWidth, vh = innerHeight;
  const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + String(e.className).trim().replace(/ +/g, '.') : '');
  const panel = !document.getElementById('panel').hidden;
  for (const e of document.body.querySelectorAll('*')) {
    if (e.closest('[hidden]') || e.getClientRects().length === 0) continue;
    if (panel && !e.closest('#panel')) continue;
    const r = e.getBoundingClientRect();
    if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
      bad.push(`${name(e)}: scrollWidth ${e.scrollWidth} > clientWidth ${e.clientWidth}`);
    if (r.left < -1 || r.right > vw + 1) bad.push(`${name(e)}: x ${r.left.toFixed(0)}..${r.right.toFixed(0)} outside 0..${vw}`);
    if (!panel && r.bottom > vh + 1) bad.push(`${name(e)}: bottom ${r.bottom.toFixed(0)} below ${vh}`);
  }
  for (const e of document.querySelectorAll('#item, .bin, .chip, .banner, .strip, #kinds, #top, #word')) {
    if (e.getClientRects().length && e.scrollHeight > e.clientHeight + 1)
      bad.push(`${name(e)}: scrollHeight ${e.scrollHeight} > clientHeight ${e.clientHeight}`);
  }
  if (!panel && document.documentElement.scrollHeight > vh) bad.push(`page scrolls: ${document.documentElement.scrollHeight} > ${vh}`);
  return bad;
})()"""

SIZES_JS = """(() => {
  const px = (e) => parseFloat(getComputedStyle(e).fontSize);
  return {word: px(document.getElementById('word')), chips: [...document.querySelectorAll('.chip .id')].map(px),
          viewport: [innerWidth, innerHeight]};
})()"""

DRAWN = ("document.body.dataset.state !== 'loading' && document.querySelectorAll('.bin').length > 0"
         " && (!document.getElementById('photo').getAttribute('src') || document.getElementById('photo').complete)"
         " && 'drawn'")


def serve(board):
    server = start_status_server(board, "127.0.0.1", 0, on_flag=lambda _: True, on_label=lambda *_: True,
                                 on_clear_fault=lambda _: True, token="screenshot-token-000")
    return server, f"http://127.0.0.1:{server.server_port}/"


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SCREENS))
@pytest.mark.parametrize("state", list(STATES))
def test_each_state_reads_right_fits_and_is_screenshotted(state, size, tmp_path):
    board = STATES[state]()
    server, base = serve(board)
    browser = Browser(tmp_path / "kiosk", SCREENS[size])
    try:
        browser.open(base)
        browser.wait(DRAWN)
        dom = browser.js("document.documentElement.outerHTML")
        overflow = browser.js(LAYOUT_JS)
        sizes = browser.js(SIZES_JS)
        browser.screenshot(shot(state, size))
    finally:
        browser.close()
        server.shutdown()
    assert sizes["viewport"] == list(SCREENS[size])
    assert not overflow, overflow
    assert sizes["word"] >= MIN_READABLE_PX and sizes["chips"] and min(sizes["chips"]) >= MIN_READABLE_PX, sizes
    main = part(dom, "<main>", "</main>")
    assert EXPECT[state](dom), main
    assert "-1" not in text(dom, "dest") and "Compartment -1" not in dom  # never a green "-> compartment -1"
    assert "Put an item on the tray" not in main  # every state here shows an item or a reason to wait
    holds = board.snapshot()["machine"]
    assert dom.count('class="banner ') == len(holds["holds"]) + len(holds["faults"]) + len(holds.get("warnings", []))


@pytest.mark.browser
@pytest.mark.parametrize("size", list(SCREENS))
def test_labelling_view_shows_at_least_four_items_whole(size, tmp_path):
    server, base = serve(STATES["normal"]())
    browser = Browser(tmp_path / "kiosk", SCREENS[size])
    try:
        browser.open(base + "#labels")
        browser.wait("document.querySelectorAll('#recent .row img[src]').length >= 4 && "
                     "[...document.querySelectorAll('#recent .row img[src]')].every((i) => i.complete) && 'drawn'")
        overflow = browser.js(LAYOUT_JS)
        whole = browser.js("[...document.querySelectorAll('#recent .row')].filter((r) => "
                           "r.getBoundingClientRect().bottom <= innerHeight).length")
        touch = browser.js("Math.min(...[...document.querySelectorAll('.choices button')].map((b) => "
                           "b.getBoundingClientRect().height))")
        browser.screenshot(SHOTS / ("status-labels.png" if size == "1024x600" else f"status-{size}-labelling.png"))
    finally:
        browser.close()
        server.shutdown()
    assert not overflow, overflow
    assert whole >= 4, f"{whole} whole rows of 'what was it?' on {size}"
    assert touch >= 56  # touch targets


@pytest.mark.browser
def test_compartment_names_as_printed_on_the_bin(tmp_path):
    """[hardware] compartment_names reach the tiles, the destination and the full banner."""
    from tests.edge.page_states import base, item, machine

    names = ["A1", "A2", "B1", "B2", "C1", "C2", "Sisa"]
    board = base(compartment_names=names)
    item(board, "logam", 0.9)
    from ecosorter.edge.machine import Machine

    m = Machine(compartment_names=names)
    m.raise_("full", "", 4)
    board.set_machine(m.snapshot())
    server, url = serve(board)
    try:
        dom = dump_dom(url, tmp_path / "p", size=SCREENS["800x480"])
    finally:
        server.shutdown()
    assert text(dom, "dest") == "→ Kompartemen\xa0C1 / Compartment\xa0C1"
    assert re.findall(r'<div class="no">([^<]*)</div>', dom)[:7] == names
    assert "Compartment C1 is full" in dom and "Kompartemen C1 penuh" in dom
    assert machine  # the registry writes the words; nothing here makes them up


@pytest.mark.browser
def test_ready_only_when_the_camera_works(tmp_path):
    """Before any item: "Ready: put an item on the tray" with a working camera, never with a dead one."""
    from ecosorter.edge.status import StatusBoard
    from tests.edge.page_states import COMPARTMENTS, LABELS

    board = StatusBoard("b1", LABELS, COMPARTMENTS)
    board.set_link("camera", "ok")
    server = start_status_server(board, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}/"
    try:
        before = dump_dom(base, tmp_path / "a")
        board.set_link("camera", "down", "unplugged")
        after = dump_dom(base, tmp_path / "b")
    finally:
        server.shutdown()
    assert "Put an item on the tray" in before and text(before, "label") == "Siap"
    assert "Put an item on the tray" not in after and text(after, "label") == "Kamera mati"
    assert "unplugged" in text(after, "why")
