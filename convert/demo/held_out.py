"""The demo model's held-out photos as class folders (symlinks), for --validation:

    python -m ecosorter.convert.demo.held_out build/held_out [--data ../shared/data/waste7]

The list is edge/demo/demo_training.json's `held_out.files` (15% of every class, seed 7, never
trained on); a newer demo model's training record there names its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ecosorter.convert.demo.train_demo import DEMO_DIR, link_split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecosorter.convert.demo.held_out")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/waste7"))
    args = ap.parse_args(argv)
    files = json.loads((DEMO_DIR / "demo_training.json").read_text())["held_out"]["files"]
    missing = [f for f in files if not (args.data / f).is_file()]
    if missing:
        print(f"error: {len(missing)} of {len(files)} held-out photos are not under {args.data} "
              f"(first: {missing[0]}); give --data the waste7 folder", file=sys.stderr)
        return 2
    link_split(args.data, args.out, files)
    print(f"{args.out}: {len(files)} held-out photos in class folders")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
