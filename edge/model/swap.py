"""A verified model swapped in between items: the new one is loaded and checked beside the running
one, which keeps sorting on any refusal (an update never stops the loop)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecosorter.edge.config import Config
from ecosorter.edge.decide import CompartmentMap, Voter
from ecosorter.edge.errors import ConfigError, ModelError
from ecosorter.edge.model import LoadedModel, load_model
from ecosorter.edge.model.store import ModelStore
from ecosorter.edge.model.trust import describe_running
from ecosorter.edge.preprocess import Preprocessor


@dataclass
class Replacement:
    model: LoadedModel
    voter: Voter
    preprocessor: Preprocessor
    trust: dict  # edge/model/trust.py's describe_running: what the page and MQTT say of it

    @property
    def names(self) -> dict[str, str]:
        return {lb.id: lb.name for lb in self.model.labels}


def prepare_swap(path: Path, cfg: Config, running: LoadedModel, store: ModelStore | None,
                 route: CompartmentMap, roi) -> Replacement:
    """Everything the loop needs to switch at once; EcoSorterError (the new model closed) when it may
    not replace the running one: other labels, not trusted, or thresholds the config's budget refuses."""
    new = load_model(path, cfg.model.backend, cfg.model.num_threads or None)
    try:
        if new.manifest.label_ids != running.manifest.label_ids:
            raise ModelError(path, "labels differ from the running model's")
        trust = describe_running(new, store, cfg.model.allow_unverified)
        try:  # its thresholds must meet the config's budget too
            voter = Voter(cfg.decision, new.manifest.label_ids, route, new.manifest.decision)
        except ConfigError as e:
            raise ModelError(path, str(e)) from None
        return Replacement(new, voter, Preprocessor(new.manifest.preprocess, new.manifest.input, roi), trust)
    except BaseException:
        new.close()
        raise
