"""Issue 18 item 13: junk on the command topic must not starve the owner's signed commands.

Before, every message spent the one rate bucket before authentication: 5 junk messages a second
from any client the broker lets publish, and 0 of 8 signed `clear_fault` got through.
"""

from __future__ import annotations

import json
import time

from tests.security.conftest import Attacker, RunningSorter, signed, sorter_cfg, wait


def junk(i: int, private_of_someone_else: str) -> bytes:
    """What an attacker without the owner's key can send: garbage, unsigned and forged commands."""
    kinds = [b"\xff not json", json.dumps({"action": "clear_fault"}).encode(),
             json.dumps(signed(private_of_someone_else, "clear_fault")).encode(),
             json.dumps({"action": "flag", "id": "0" * 32}).encode(), b"{}"]
    return kinds[i % len(kinds)]


def test_5_junk_messages_a_second_do_not_starve_8_signed_clear_faults(mosquitto, tmp_path, monkeypatch, keys):
    from ecosorter.edge.security import new_keypair

    private, public = keys
    stranger, _ = new_keypair()
    cfg = sorter_cfg(tmp_path / "state", mosquitto.port, **{"model.public_keys": [public]})
    attacker = Attacker(mosquitto.port)
    with RunningSorter(cfg, monkeypatch, tmp_path) as bin7:
        commands = bin7.sorter.commands
        bin7.sorter.machine.raise_("jam", "test: chute stuck")
        n = 0
        for _ in range(24):  # ~5 s of junk at 5 msg/s first: more than the whole burst of the bucket
            attacker.send(junk(n, stranger))
            n += 1
            time.sleep(0.2)
        assert wait(lambda: commands.dropped > 0), "the junk alone should hit the rate limit"
        nonces = []
        for _ in range(8):  # the owner's commands, with the junk going on around them
            cmd = signed(private, "clear_fault", by="owner")
            nonces.append(cmd["nonce"])
            attacker.send(cmd)
            for _ in range(2):
                attacker.send(junk(n, stranger))
                n += 1
                time.sleep(0.1)
        answered = lambda: {r.get("nonce"): r for r in attacker.results if r.get("nonce") in nonces}  # noqa: E731
        assert wait(lambda: len(answered()) == 8, 30), f"signed replies: {answered()}; dropped {commands.dropped}"
        assert all(r["ok"] and r["action"] == "clear_fault" for r in answered().values()), answered()
        assert not bin7.sorter.machine.faulted
        print(f"\n{n} junk messages, {commands.dropped} dropped; 8 of 8 signed clear_fault answered ok")
    attacker.close()
