"""Compare two `ecosorter classify --json` outputs (one photo per line) from two machines.

Prints the label agreement and the largest |dprob| over all classes and photos; exits 1 when
the label changed on more than --max-flips photos, 2 when the files do not cover the same photos.
Photos are matched by file name, so the two runs may see them under different folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_answers(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = Path(row["image"]).name
            if "error" in row:
                raise ValueError(f"classify failed: {row['error']}")
            out[name] = {"label": str(row["label"]), "probabilities": {k: float(v) for k, v in row["probabilities"].items()}}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"{path}:{n}: not a classify --json line: {e}") from None
    return out


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict:
    if set(a) != set(b) or not a:
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the two runs cover different photos: {only[:5] or 'none at all'}")
    flips, worst, worst_at = [], 0.0, ""
    for name in sorted(a):
        pa, pb = a[name]["probabilities"], b[name]["probabilities"]
        if set(pa) != set(pb):
            raise ValueError(f"{name}: different label sets {sorted(pa)} vs {sorted(pb)}")
        if a[name]["label"] != b[name]["label"]:
            flips.append((name, a[name]["label"], b[name]["label"]))
        for k in pa:
            d = abs(pa[k] - pb[k])
            if d > worst:
                worst, worst_at = d, f"{name} {k}"
    return {"photos": len(a), "agree": len(a) - len(flips), "flips": flips, "max_dprob": worst, "max_at": worst_at}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--max-flips", type=int, default=1)
    ap.add_argument("--names", nargs=2, default=["first", "second"])
    args = ap.parse_args(argv)
    try:
        r = compare(read_answers(args.first), read_answers(args.second))
    except ValueError as e:
        print(f"pi_compare: {e}", file=sys.stderr)
        return 2
    one, two = args.names
    print(f"{one} vs {two}: label agreement {r['agree']}/{r['photos']} "
          f"({100 * r['agree'] / r['photos']:.1f}%), largest |dprob| {r['max_dprob']:.4f} ({r['max_at']})")
    for name, la, lb in r["flips"]:
        print(f"  label changed: {name}: {la} on {one}, {lb} on {two}")
    if len(r["flips"]) > args.max_flips:
        print(f"FAIL: the label changed on {len(r['flips'])} photos (at most {args.max_flips} allowed)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
