"""What a person at the bin sees in each state, in real headless Chromium on a 1024x600 kiosk.

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
from tests.edge.browser import dump_dom, screenshot
from tests.edge.page_states import STATES

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("ECOSORTER_SHOTS") or os.environ.get("ECOSORTER_ARTIFACTS", ROOT / "artifacts"))
if not SHOTS.is_absolute():
    SHOTS = ROOT / SHOTS


def part(dom: str, start: str, end: str) -> str:
    return dom[dom.index(start):dom.index(end, dom.index(start))]


def text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    return html.unescape(m.group(1)) if m else ""


EXPECT = {
    "normal": lambda d: (text(d, "dest") == "→ Kompartemen\xa00 / Compartment\xa00" and 'class="dest"' in d
                         and 'class="banner' not in d),
    "uncertain": lambda d: ('class="dest uncertain"' in d and text(d, "label") == "Tidak yakin"
                            and text(d, "english") == "Uncertain"
                            and text(d, "conf") == "Mungkin / Maybe: Logam / Metal (41%)"
                            and text(d, "dest") == "→ Kompartemen\xa03 / Compartment\xa03"
                            and "To the fallback compartment (Khusus / Special/other)" in text(d, "why")),
    "lid-open": lambda d: ("The lid is open" in part(d, 'class="banner hold"', "</div></div>")
                           and "Close the lid" in d and "Penutup / Lid: TERBUKA / OPEN" in d),
    "full": lambda d: ("Compartment 4 is full" in part(d, 'class="banner hold"', "</div></div>")
                       and re.search(r'class="bin full" data-index="4">.*?PENUH / FULL', d) is not None),
    "jam": lambda d: ("Jammed: chute did not reach 0 deg" in part(d, 'class="banner fault"', "</div></div>")
                      and "Fixed: resume" in d and text(d, "dest") == "TIDAK DISORTIR / NOT ROUTED"
                      and "chute did not reach home" in text(d, "why")),
    "camera-down": lambda d: (text(d, "english") == "Camera not working" and "The camera is not working" in d
                              and 'data-shown="idle"' in d and 'id="photo" alt="">' in d),
    # a warning: the item is still routed (sorting goes on), the banner says what to do
    "model-drift": lambda d: ("The model no longer fits this bin: label items and retrain"
                              in part(d, 'class="banner warning"', "</div></div>")
                              and "Peringatan · Warning" in d and "uncertain 38 per 100 items" in d
                              and text(d, "dest") == "→ Kompartemen\xa06 / Compartment\xa06"),
}


@pytest.mark.browser
@pytest.mark.parametrize("state", list(STATES))
def test_each_state_reads_right_and_is_screenshotted(state, tmp_path):
    board = STATES[state]()
    server = start_status_server(board, "127.0.0.1", 0, on_flag=lambda _: True, on_label=lambda *_: True,
                                 on_clear_fault=lambda _: True, token="screenshot-token-000")
    base = f"http://127.0.0.1:{server.server_port}/"
    try:
        dom = dump_dom(base, tmp_path / "dom")
        # The normal state is the README's picture of the page.
        screenshot(base, tmp_path / "shot", SHOTS / ("status-page.png" if state == "normal" else f"status-{state}.png"))
        if state == "normal":
            screenshot(base + "#labels", tmp_path / "labels", SHOTS / "status-labels.png")
    finally:
        server.shutdown()
    main = part(dom, "<main>", "</main>")
    assert EXPECT[state](dom), main
    assert "-1" not in text(dom, "dest") and "Compartment -1" not in dom  # never a green "-> compartment -1"
    assert "Put an item on the tray" not in main  # every state here shows an item or a reason to wait
    holds = board.snapshot()["machine"]
    assert dom.count('class="banner ') == len(holds["holds"]) + len(holds["faults"]) + len(holds.get("warnings", []))


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
