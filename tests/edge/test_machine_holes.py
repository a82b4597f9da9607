"""Issue 18, "the machine": unit-level regression tests (the scenarios are in tests/scenarios)."""

from __future__ import annotations

import pytest

from ecosorter.edge.clock import VirtualClock
from ecosorter.edge.machine import Machine


@pytest.mark.parametrize("since", [7.2, 0.1, 3.3, 1e5 + 0.7])
def test_a_fill_hold_is_raised_at_the_instant_wake_at_names(since):
    """#18.7: wake_at() said 9.2 s, but `9.2 - 7.2 >= 2.0` is False in floats: the simulator skipped
    to its next event (30 s) and the hold came late. Raised at exactly the instant it names."""
    clock = VirtualClock(start=since)
    m = Machine(clock, fill_confirm_s=2.0)
    m.fill({4}, {4})
    due = m.wake_at()
    assert due is not None
    clock.advance_to(due)
    m.fill({4}, {4})
    assert m.active("full", 4)


def _import_graph() -> dict[str, set[str]]:
    """ecosorter.edge module -> the ecosorter.edge modules it imports when run (top level or inside
    functions; `if TYPE_CHECKING:` blocks are not run). Importing a.b.c runs package a.b's __init__ too."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "edge"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = ["ecosorter", "edge", *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                bits = t.split(".")
                out |= {".".join(bits[:i]) for i in range(3, len(bits) + 1)}
        graph[name] = out
    return {k: {t for t in v if t in graph and t != k} for k, v in graph.items()}


def test_no_import_circle_through_the_config():
    """The house: edge.config -> hardware.check -> hardware.pins -> edge.config was a circle (held
    together by an import inside a function). Nothing edge.config runs may import edge.config back."""
    graph = _import_graph()
    start = "ecosorter.edge.config"
    stack, seen, back = [(start, [start])], set(), []
    while stack:
        mod, path = stack.pop()
        for nxt in graph.get(mod, ()):
            if nxt == start:
                back.append(" -> ".join([*path, nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    assert "ecosorter.edge.hardware.check" in seen  # the rules are still run
    assert not back, "import circle: " + "; ".join(back)
