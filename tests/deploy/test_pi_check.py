"""tools/pi_compare.py, the cross-architecture comparison of tools/pi-check (the check itself needs
root, debootstrap and qemu: `make pi-check`, run by .ci/run; its lint is in test_deploy.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
LABELS = ["kaca", "kardus", "kertas"]


def answers(path: Path, rows: dict[str, list[float]], folder: str) -> Path:
    with path.open("w") as f:
        for name, probs in rows.items():
            label = LABELS[max(range(len(probs)), key=probs.__getitem__)]
            f.write(json.dumps({"image": f"{folder}/{name}", "label": label, "confidence": max(probs),
                                "probabilities": dict(zip(LABELS, probs, strict=True)), "latency_ms": 1.0}) + "\n")
    return path


def compare(tmp_path, a: dict, b: dict, *extra):
    fa = answers(tmp_path / "a.jsonl", a, "/host/samples")
    fb = answers(tmp_path / "b.jsonl", b, "/src/edge/demo/samples")  # other folder, same photos
    return subprocess.run([sys.executable, str(TOOLS / "pi_compare.py"), str(fa), str(fb), "--names", "x86_64", "arm64",
                           *extra], capture_output=True, text=True)


def test_agreement_and_largest_dprob(tmp_path):
    a = {"1.jpg": [0.7, 0.2, 0.1], "2.jpg": [0.1, 0.8, 0.1], "3.jpg": [0.45, 0.1, 0.45]}
    b = {"1.jpg": [0.68, 0.22, 0.1], "2.jpg": [0.1, 0.8, 0.1], "3.jpg": [0.40, 0.1, 0.50]}
    r = compare(tmp_path, a, b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "label agreement 2/3 (66.7%), largest |dprob| 0.0500 (3.jpg " in r.stdout
    assert "label changed: 3.jpg: kaca on x86_64, kertas on arm64" in r.stdout
    r = compare(tmp_path, a, b, "--max-flips", "0")
    assert r.returncode == 1 and "FAIL: the label changed on 1 photos (at most 0 allowed)" in r.stdout


def test_two_flips_fail_and_missing_photos_are_an_error(tmp_path):
    a = {"1.jpg": [0.6, 0.3, 0.1], "2.jpg": [0.3, 0.6, 0.1]}
    b = {"1.jpg": [0.3, 0.6, 0.1], "2.jpg": [0.6, 0.3, 0.1]}
    assert compare(tmp_path, a, b).returncode == 1
    r = compare(tmp_path, a, {"1.jpg": [0.6, 0.3, 0.1]})
    assert r.returncode == 2 and "different photos: ['2.jpg']" in r.stderr

