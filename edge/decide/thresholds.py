"""The bin's decision rule: calibrated probabilities against per-class thresholds.

A model converted with `ecosorter-convert ... --contamination X` carries a `decision` block in its
manifest (convert/thresholds.py chooses it on labelled photos): a softmax temperature and, for each
class, the probability an item must reach to be routed as that class; below it the item is
uncertain and goes to the fallback's compartment. The config can pick another of the model's
budgets (`decision.contamination_budget`), override single classes (`decision.class_thresholds`)
or ignore the block (`decision.model_thresholds = false`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecosorter.edge.errors import ConfigError

MAX_LADDER = 100  # budgets a model carries thresholds for (convert writes a handful)
EPS = 1e-7  # int8 outputs hold exact zeros: log(0) would make a class impossible at any temperature
NEVER = 1.0  # a threshold of 1 is never reached: "never confident" (an uncertifiable budget's rule)


def confident(top: np.ndarray | float, threshold: np.ndarray | float) -> np.ndarray | bool:
    """Whether a top (calibrated) probability makes an item confident under its class's threshold.

    A threshold of 1 means never: a float model's softmax, or a temperature below ~0.4, gives a top
    probability of exactly 1.0, which `>=` alone would let through a rule meant to route nothing."""
    return (np.asarray(top) >= threshold) & (np.asarray(threshold) < NEVER)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on probabilities: softmax(log p / T), the same as on the logits."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class DecisionRule:
    """What the Voter applies: temperature, then one threshold per class (in label order)."""

    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    temperature: float = 1.0
    budget: float | None = None  # the contamination budget the thresholds were chosen for, if any
    source: str = "config"  # where the thresholds came from, for the page and logs
    chosen: dict[str, Any] = field(default_factory=dict)  # the model's figures for that budget (n, bound, ...)

    def vector(self) -> np.ndarray:
        return np.array(self.thresholds, dtype=np.float64)

    def threshold(self, label: str) -> float:
        return self.thresholds[self.labels.index(label)]

    def needs(self, label: str) -> str:
        """What `label` needs to be routed, in words: '96.32%' (two decimals, so an item at 96.29%
        printed as 96.3% is seen to be under it), or 'never' for an uncertifiable class."""
        t = self.threshold(label)
        return "never confident" if t >= NEVER else f"needs {100 * t:.2f}%"

    def words(self) -> str:
        """One line for a person: the thresholds and where they came from."""
        ts = sorted(set(self.thresholds))
        each = (f"{100 * ts[0]:.2f}% for every class" if len(ts) == 1
                else f"{100 * ts[0]:.2f}-{100 * ts[-1]:.2f}% by class")
        src = {"model": "the model's calibrated thresholds", "model+config":
               "the model's calibrated thresholds, decision.class_thresholds over them",
               "config": "decision.threshold / decision.class_thresholds"}.get(self.source, self.source)
        budget = f" for a {100 * self.budget:g}% contamination budget" if self.budget else ""
        return f"{each} ({src}{budget})"


def check_decision_block(d: Any, label_ids: Sequence[str]) -> dict[str, Any]:
    """Validate a manifest's `decision` block (ValueError names the field); returns it as a dict."""
    if not isinstance(d, dict):
        raise ValueError(f"manifest 'decision' must be an object, got {type(d).__name__}")
    t = d.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0.01 <= t <= 100:
        raise ValueError(f"manifest decision.temperature must be a number in 0.01..100, got {t!r}")
    if not isinstance(d.get("ladder", []), list) or len(d.get("ladder") or []) > MAX_LADDER:
        raise ValueError(f"manifest decision.ladder must be a list of at most {MAX_LADDER} budgets")
    entries = [("decision", d)] + [(f"decision.ladder[{i}]", e) for i, e in enumerate(d.get("ladder") or [])]
    for where, e in entries:
        if not isinstance(e, dict):
            raise ValueError(f"manifest {where} must be an object")
        b = e.get("budget")
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0 < b < 1:
            raise ValueError(f"manifest {where}.budget must be a number between 0 and 1, got {b!r}")
        if not isinstance(e.get("feasible", True), bool):
            raise ValueError(f"manifest {where}.feasible must be true or false, got {e.get('feasible')!r}")
        th = e.get("thresholds")
        if not isinstance(th, dict) or set(th) != set(label_ids):
            raise ValueError(f"manifest {where}.thresholds must give one threshold for each label "
                             f"({', '.join(label_ids)})")
        for lb, v in th.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ValueError(f"manifest {where}.thresholds.{lb} must be a number in 0..1, got {v!r}")
    seen: dict[float, str] = {}
    for where, e in entries:  # two rungs for one budget: which one the config's budget picks is a guess
        if e["budget"] in seen:
            raise ValueError(f"manifest {where}.budget {e['budget']:g} repeats {seen[e['budget']]}.budget")
        seen[e["budget"]] = where
    return dict(d)


def decision_rule(cfg, labels: Sequence[str], model_decision: dict[str, Any] | None = None) -> DecisionRule:
    """The rule for `cfg` (edge/config.py DecisionConfig) and the model's decision block.

    Order: the model's thresholds for its own budget (or the largest of its budgets at or below
    `decision.contamination_budget`), then `decision.class_thresholds` on top; classes left without
    one use `decision.threshold`. Without a block (an older model) it is the config alone."""
    labels = list(labels)
    for lb in cfg.class_thresholds:
        if lb not in labels:
            raise ConfigError(f"decision.class_thresholds.{lb}", f"not a label of the model ({', '.join(labels)})")
    use = model_decision if (model_decision and cfg.model_thresholds) else None
    budget_wanted = cfg.contamination_budget
    if budget_wanted > 0 and use is None:
        why = "the model carries no thresholds (convert it with --contamination)" if not model_decision \
            else "decision.model_thresholds is false"
        raise ConfigError("decision.contamination_budget", f"{budget_wanted:g} cannot be kept: {why}")
    per_class: dict[str, float] = {}
    temperature, budget, source, chosen = 1.0, None, "config", {}
    if use is not None:
        entry: dict[str, Any] = use
        if budget_wanted > 0:
            # a rung its photos could not certify (feasible false) holds "never confident" thresholds:
            # picking it would send every item to the fallback, so only certified rungs are options
            rungs = [e for e in [use, *(use.get("ladder") or [])] if e.get("feasible", True) is not False]
            options = [e for e in rungs if e["budget"] <= budget_wanted + 1e-12]
            if not options:
                have = sorted({e["budget"] for e in rungs})
                raise ConfigError("decision.contamination_budget",
                                  f"{budget_wanted:g} is below every budget the model has certified thresholds for "
                                  f"({', '.join(f'{b:g}' for b in have)}); choose one of them, or rerun "
                                  "ecosorter-convert thresholds with this --contamination and more labelled photos")
            entry = max(options, key=lambda e: e["budget"])
        per_class = {lb: float(v) for lb, v in entry["thresholds"].items()}
        temperature, budget = float(use.get("temperature", 1.0)), float(entry["budget"])
        chosen = {k: v for k, v in entry.items() if k != "ladder"}
        source = "model"
    if cfg.class_thresholds:
        per_class.update(cfg.class_thresholds)
        source = "model+config" if use is not None else "config"
    vec = tuple(float(per_class.get(lb, cfg.threshold)) for lb in labels)
    return DecisionRule(tuple(labels), vec, temperature, budget, source, chosen)


__all__ = ["NEVER", "DecisionRule", "calibrate", "check_decision_block", "confident", "decision_rule"]
