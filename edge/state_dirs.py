"""Where a command's state folder is: `run --simulate`'s, and which folders belong to an installed bin
(kept out of clikit, which the runtimes import: this reads the config)."""

from __future__ import annotations

import os
from pathlib import Path

from ecosorter.edge.clikit import simulate_state_dir
from ecosorter.edge.errors import EcoSorterError


def installed_state_dirs() -> list[Path]:
    """The state folders an installed bin writes: record.state_dir's default (/var/lib/ecosorter, the
    service's) and, when /etc/ecosorter/config.toml exists and loads, the one it sets."""
    from ecosorter.edge.config import DEFAULT_PATH, RecordConfig, load_config

    dirs = [Path(RecordConfig().state_dir)]
    if DEFAULT_PATH.exists():
        try:
            dirs.append(Path(load_config(DEFAULT_PATH).record.state_dir))
        except Exception:  # a broken installed config: the default still stands guard
            pass
    return dirs


def simulated_run_state_dir(given: Path | None, config: Path | None, configured: str) -> Path:
    """Where `run --simulate` keeps events, labels, holds and photos: --state-dir, else the config's
    record.state_dir, else (no config) simulate_state_dir(). Never an installed bin's folder: a
    simulated run there would mix demo events into the bin's log and could roll back its models."""
    if given is not None:
        state, how = given, f"--state-dir {given}"
    elif config is not None:
        state, how = Path(configured), f"record.state_dir in {config} is {configured}"
    else:
        return simulate_state_dir()
    real = os.path.realpath(state)
    # the folder itself or one inside it (its models/, photos/ ... belong to the installed bin)
    if any(real == (r := os.path.realpath(d)) or real.startswith(r.rstrip(os.sep) + os.sep)
           for d in installed_state_dirs()):
        hint = ("give another --state-dir" if given is not None else
                f"set record.state_dir in {config} to another folder, or pass --state-dir DIR")
        raise EcoSorterError(f"run --simulate: {how}, an installed bin's state folder (its events, models and "
                             f"last good hardware config); a simulated run does not write there: {hint} "
                             "(and give `ecosorter label` and `export` the same --config or --state-dir)")
    return state


def same_state_flag(given: Path | None, config: Path | None) -> str:
    """What `ecosorter label` and `export` need to read the folder a simulated run wrote (see
    cli._state_dir): the run's --state-dir, else its --config; bare only where they would look
    there by themselves (no config given, none installed)."""
    from ecosorter.edge.config import DEFAULT_PATH

    if given is not None:
        return f" --state-dir {given}"
    if config is not None:
        return f" --config {config}"
    return f" --state-dir {simulate_state_dir()}" if DEFAULT_PATH.exists() else ""
