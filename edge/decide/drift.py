"""The bin watches its own model: rolling figures over the last N items against what the model
showed on its validation photos (the manifest's decision block, else its verification figures).

Signals, each over the last `window` items:
- share uncertain (expected: the validation fallback share),
- "wrong" presses per item (expected at most: the validation share not routed right),
- label disagreements per item: a person labels an item as another class than the model said
  (expected at most: the validation top-1 error),
- mean top confidence (expected: the validation mean).

Rule (docs/training.md "The bin watches its model"): with at least `min_items` items seen, a rate
raises when the 99% Wilson lower bound of the window's share is above the expected share (its 99%
Wilson upper bound when the manifest says on how many photos it was measured), and the
mean confidence when the window's mean plus 2.58 standard errors is below the expected mean. Each
clears by itself, with hysteresis, when the window's own estimate is back within the expected value.
It is a warning: it never holds or stops the bin.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

Z = 2.576  # 99%, two-sided; one-sided it is 99.5%: a watch that raises on noise is soon ignored
WINDOW = 200
MIN_ITEMS = 50


def wilson_lower(k: int, n: int, z: float = Z) -> float:
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def wilson_upper(p: float, n: float, z: float = Z) -> float:
    """Upper bound of a share p measured on n items (the validation photos)."""
    if n <= 0:
        return p
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / (1 + z * z / n))


@dataclass
class _Item:
    label: str
    uncertain: bool
    confidence: float
    wrong: bool = False
    disagree: bool = False


def expected_from_manifest(decision: dict | None, verification: dict | None) -> dict[str, float]:
    """What the model showed on its validation photos, as far as its manifest says."""
    out: dict[str, float] = {}
    if decision:
        for key, name in (("fallback_share", "uncertain"), ("routed_right", "routed_right"),
                          ("mean_confidence", "mean_confidence"), ("confidence_sd", "confidence_sd"),
                          ("top1_error", "top1_error"), ("n_certify", "n")):
            v = decision.get(key)
            if _plausible(v, name):
                out[name] = float(v)
    ver = verification or {}
    if "top1_error" not in out and _plausible(ver.get("tflite_accuracy"), "accuracy"):
        out["top1_error"] = 1.0 - float(ver["tflite_accuracy"])
    return out


def _plausible(v: Any, name: str) -> bool:
    """A figure a conversion could have written: a finite share in 0..1, or a count n >= 1. Anything
    else (NaN, n = 0) is left out; the watch would fail, or never raise, on it."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return False
    return v >= 1 if name == "n" else 0.0 <= v <= 1.0


def expected_for(rule, verification: dict | None) -> dict[str, float]:
    """The figures for the rule the bin runs (edge/decide/thresholds.py DecisionRule): the model's
    entry for the chosen budget; with the config overriding classes, the uncertain share and
    routing it measured no longer apply, only its top-1 error and confidence."""
    e = expected_from_manifest(rule.chosen or None, verification)
    if rule.source != "model":
        e = {k: v for k, v in e.items() if k not in ("uncertain", "routed_right")}
    return e


class DriftWatch:
    """Feed it every item, "wrong" press and label; `check()` says whether to raise or clear."""

    def __init__(self, expected: dict[str, float], window: int = WINDOW, min_items: int = MIN_ITEMS):
        self.expected, self.window, self.min_items = dict(expected), window, min_items
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._lock = threading.Lock()  # presses and labels come from the page and MQTT threads
        self.active: dict[str, str] = {}  # signal -> why, while outside its band

    def item(self, event_id: str, label: str, uncertain: bool, confidence: float) -> None:
        with self._lock:
            self._items[event_id] = _Item(label, bool(uncertain), float(confidence))
            while len(self._items) > self.window:
                self._items.popitem(last=False)

    def wrong(self, event_id: str) -> None:
        with self._lock:
            if event_id in self._items:
                self._items[event_id].wrong = True

    def label(self, event_id: str, true_label: str) -> None:
        with self._lock:
            it = self._items.get(event_id)
            if it is not None:
                it.disagree = true_label != it.label

    def figures(self) -> dict[str, Any]:
        with self._lock:
            items = list(self._items.values())
        n = len(items)
        conf = [i.confidence for i in items]
        mean = sum(conf) / n if n else 0.0
        sd = math.sqrt(sum((c - mean) ** 2 for c in conf) / (n - 1)) if n > 1 else 0.0
        return {"items": n, "uncertain": sum(i.uncertain for i in items), "wrong": sum(i.wrong for i in items),
                "disagree": sum(i.disagree for i in items), "mean_confidence": mean, "confidence_sd": sd,
                "per_100": {k: round(100 * v / n, 2) if n else 0.0 for k, v in
                            (("uncertain", sum(i.uncertain for i in items)), ("wrong", sum(i.wrong for i in items)),
                             ("disagree", sum(i.disagree for i in items)))},
                "expected": dict(self.expected)}

    def check(self) -> tuple[bool, str]:
        """(outside the band, why): updates which signals are out, with hysteresis."""
        f = self.figures()
        n, e = f["items"], self.expected
        if n < self.min_items:
            return bool(self.active), self._why()
        rates = (("uncertain", f["uncertain"], e.get("uncertain")),
                 ("wrong", f["wrong"], None if "routed_right" not in e else 1 - e["routed_right"]),
                 ("disagree", f["disagree"], e.get("top1_error")))
        for name, k, p0 in rates:
            if p0 is None:
                continue
            # the expected share is itself measured on e["n"] photos (0 of 36 is not "never"): judge
            # against its upper bound, else one press after a faultless validation would raise
            hi = wilson_upper(p0, e["n"]) if "n" in e else p0
            if name not in self.active and wilson_lower(k, n) > hi:
                self.active[name] = f"{name} {100 * k / n:.0f} per 100 items (expected {100 * p0:.0f})"
            elif name in self.active and k / n <= hi:
                del self.active[name]
        mu0 = e.get("mean_confidence")
        if mu0 is not None:
            se = math.hypot(f["confidence_sd"] / math.sqrt(n), e.get("confidence_sd", 0.0) / math.sqrt(e.get("n", 1e9)))
            m = f["mean_confidence"]
            if "confidence" not in self.active and m + Z * se < mu0:
                self.active["confidence"] = f"mean confidence {m:.2f} (expected {mu0:.2f})"
            elif "confidence" in self.active and m >= mu0 - se:
                del self.active["confidence"]
        return bool(self.active), self._why()

    def _why(self) -> str:
        return "; ".join(self.active.values())


__all__ = ["DriftWatch", "expected_for", "expected_from_manifest", "wilson_lower", "wilson_upper"]
