"""Secrets (MQTT password, page token) kept out of the world-readable config.

Looked up, in order, in systemd's credentials folder ($CREDENTIALS_DIRECTORY/<name>, from
`LoadCredential=<name>:/etc/ecosorter/<name>` in the unit) and in a file named by the config
that only its owner can read (mode 0600 or 0400). A group- or world-readable file is refused:
a secret that anyone on the bin can read is not one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ecosorter.edge.errors import ConfigError

MAX_SECRET = 4096


def read_secret(name: str, path: str | Path = "") -> str:
    """The secret, stripped of surrounding whitespace; '' when neither source has it."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if creds and (Path(creds) / name).is_file():
        return _read(Path(creds) / name, name, check_mode=False)  # systemd made it private to us
    if path:
        return _read(Path(path), name, check_mode=True)
    return ""


def _read(path: Path, name: str, check_mode: bool) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ConfigError(f"secret {name}", f"{path}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"secret {name}", f"{path} is mode {stat.S_IMODE(st.st_mode):04o}; readable by "
                                                f"others: chmod 600 {path}")
        data = f.read(MAX_SECRET + 1)
    if len(data) > MAX_SECRET:
        raise ConfigError(f"secret {name}", f"{path} is longer than {MAX_SECRET} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"secret {name}", f"{path} is not UTF-8 text") from None
