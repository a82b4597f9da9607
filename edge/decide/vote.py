"""From per-frame probabilities to one decision per item, and its compartment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ecosorter.edge.decide.thresholds import calibrate, confident, decision_rule
from ecosorter.edge.errors import ConfigError

if TYPE_CHECKING:  # types only: edge.config runs rules that import this package back
    from ecosorter.edge.config import DecisionConfig


@dataclass(frozen=True)
class Decision:
    label: str  # the most likely class, even when uncertain
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool
    frames: int  # how many frames were averaged
    compartment: int


class CompartmentMap:
    """label -> compartment; uncertain items go to the fallback label's compartment."""

    def __init__(self, compartments: dict[str, int], labels: Sequence[str], fallback: str):
        missing = [lb for lb in labels if lb not in compartments]
        if missing:
            raise ConfigError("hardware.compartments", f"no compartment for {', '.join(missing)} "
                                                       f"(the model's labels: {', '.join(labels)})")
        extra = [k for k in compartments if k not in labels]
        if extra:
            raise ConfigError("hardware.compartments", f"{', '.join(extra)} not labels of the model "
                                                       f"({', '.join(labels)})")
        if fallback not in labels:
            raise ConfigError("decision.fallback", f"{fallback!r} is not a label of the model ({', '.join(labels)})")
        self.by_label = dict(compartments)
        self.fallback = fallback
        self.count = max(compartments.values()) + 1

    def __call__(self, label: str, uncertain: bool) -> int:
        return self.by_label[self.fallback if uncertain else label]


class Voter:
    """Average up to K frames; a first frame confident under its class's threshold and at or above
    `early_confidence` decides at once (one inference).

    Each frame's probabilities are first calibrated with the model's temperature (when its manifest
    has a decision block), so thresholds and `early_confidence` compare calibrated probabilities."""

    def __init__(self, cfg: DecisionConfig, labels: Sequence[str], route: CompartmentMap,
                 model_decision: dict | None = None):
        self.cfg, self.labels, self.route = cfg, list(labels), route
        self.rule = decision_rule(cfg, labels, model_decision)
        self._thresholds = self.rule.vector()
        self._temperature = self.rule.temperature
        self._sum: np.ndarray | None = None
        self._n = 0

    def add(self, probs: np.ndarray) -> Decision | None:
        probs = calibrate(probs, self._temperature)
        # early only when the frame is also confident under its class's threshold: a first frame at
        # 0.93 against a 0.963 threshold would otherwise be called uncertain without averaging more
        if self._n == 0:  # the argmax only for a first frame: later ones are summed, not judged
            best = int(probs.argmax())
            if float(probs[best]) >= self.cfg.early_confidence and confident(probs[best], self._thresholds[best]):
                self._sum, self._n = probs.astype(np.float64), 1
                return self._decide()
        self._sum = probs.astype(np.float64) if self._sum is None else self._sum + probs
        self._n += 1
        return self._decide() if self._n >= self.cfg.frames else None

    def flush(self) -> Decision | None:
        """The item left (or moved) before K frames: decide on what was seen, if anything."""
        return self._decide() if self._n else None

    def reset(self) -> None:
        self._sum, self._n = None, 0

    def _decide(self) -> Decision:
        assert self._sum is not None
        mean = self._sum / self._n
        best = int(mean.argmax())
        uncertain = not bool(confident(mean[best], self._thresholds[best]))
        label = self.labels[best]
        d = Decision(label, float(mean[best]), {lb: float(p) for lb, p in zip(self.labels, mean, strict=True)},
                     uncertain, self._n, self.route(label, uncertain))
        self.reset()
        return d
