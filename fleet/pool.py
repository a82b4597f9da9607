"""Pooled labels: one training folder from many bins' `ecosorter export` folders.

Offline: export folders carried on a USB stick (`ecosorter export /media/usb/bin7 --labeled-only` on
each bin). Online: over SSH (`--ssh pi@bin7.lan`): the bin runs its own `ecosorter export` into a
temporary folder and streams it back as a tar through the same SSH connection; SSH's keys are the
authentication, and nothing listens on the bin that does not already.

Every row is checked before anything is copied (nothing from a bin or a stick is trusted: names,
folders and ids have fixed character sets, no paths out of the folder). Rows are de-duplicated by
event id (ids are unique across bins and restarts), across the sources and across runs: pooling into
the same folder again adds only what is new. A row with a person's label replaces one without.
The photo goes to `<out>/<class>/<bin_id>-<file>` and labels.csv keeps the bin id per row, so
`ecosorter-train <out>` reads it as it reads one bin's export (`_unlabeled/` is skipped there).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from ecosorter.edge.record.export import CSV_COLUMNS, UNLABELED, _cell
from ecosorter.fleet.broker import FleetError

FOLDER = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.jpg")
EVENT_ID = re.compile(r"[A-Za-z0-9]{1,64}")
BIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CSV_ROWS = 1_000_000


def _read(labels: Path) -> list[dict]:
    try:
        with open(labels, newline="") as f:
            r = csv.DictReader(f)
            missing = [c for c in ("photo", "id", "bin_id", "true_label") if c not in (r.fieldnames or [])]
            if missing:
                raise FleetError(f"{labels}: not an `ecosorter export` labels.csv (no column {missing[0]!r})")
            rows = []
            for row in r:
                rows.append(row)
                if len(rows) > MAX_CSV_ROWS:
                    raise FleetError(f"{labels}: more than {MAX_CSV_ROWS} rows")
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FleetError(f"{labels}: cannot read: {e}") from None


def pool(out: Path, exports: list[Path], warn: Callable[[str], None] = lambda m: None) -> dict:
    """Merge export folders into `out`; {'photos': new photos, 'duplicates', 'bins': bins seen}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged = out / "labels.csv"
    have: dict[str, dict] = {r["id"]: r for r in _read(merged)} if merged.exists() else {}
    added = dups = 0
    bins: set[str] = set()
    for src in map(Path, exports):
        if not (src / "labels.csv").is_file():
            raise FleetError(f"{src}: no labels.csv; give folders written by `ecosorter export`")
        root = src.resolve()
        for n, row in enumerate(_read(src / "labels.csv"), 2):
            where = f"{src / 'labels.csv'} line {n}"
            folder, _, name = (row.get("photo") or "").partition("/")
            bin_id = row.get("bin_id") or src.name  # an export from before bin ids: the folder's name
            if not (FOLDER.fullmatch(folder) and FILE.fullmatch(name) and EVENT_ID.fullmatch(row.get("id") or "")
                    and BIN_ID.fullmatch(bin_id)):
                warn(f"{where}: photo {row.get('photo')!r}, id {row.get('id')!r} or bin {bin_id!r} malformed; skipped")
                continue
            if folder != UNLABELED and row.get("true_label") and row["true_label"] != folder:
                warn(f"{where}: in folder {folder!r} but labelled {row['true_label']!r}; skipped")
                continue
            photo = src / folder / name
            if not photo.is_file() or photo.is_symlink():
                warn(f"{where}: {photo} is missing; skipped")
                continue
            if not photo.resolve().is_relative_to(root):  # a class folder linked elsewhere on this machine
                warn(f"{where}: {photo} leads outside the export folder (a link); skipped")
                continue
            old = have.get(row["id"])
            if old is not None and old.get("bin_id") and old["bin_id"] != bin_id:
                # ids are unique across bins: another bin's copy of it is a forgery, never a replacement
                warn(f"{where}: id {row['id']} came from bin {old['bin_id']!r} already, not {bin_id!r}; skipped")
                continue
            if old is not None and (old.get("true_label") or not row.get("true_label")):
                dups += 1
                continue
            if old is not None:  # now labelled by a person: the photo moves to its true class
                (out / old["photo"]).unlink(missing_ok=True)
            row = {**{c: row.get(c, "") for c in CSV_COLUMNS}, "bin_id": bin_id,
                   "photo": f"{folder}/{bin_id}-{name}"}
            dst = out / row["photo"]
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(photo, dst)
            have[row["id"]] = row
            bins.add(bin_id)
            added += 1
    tmp = merged.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        # a stick's cells are not trusted: what a spreadsheet would run gets the export's leading '
        w.writerows({k: _cell(v) for k, v in r.items()}
                    for r in sorted(have.values(), key=lambda r: (r.get("time", ""), r["id"])))
    tmp.replace(merged)
    return {"photos": added, "duplicates": dups, "bins": len(bins)}


def fetch_over_ssh(host: str, dest: Path, since: str = "", labeled_only: bool = True,
                   ssh: tuple[str, ...] = ("ssh", "-o", "BatchMode=yes")) -> Path:
    """Run `ecosorter export` on the bin over SSH and unpack it under `dest`; returns the folder."""
    if not re.fullmatch(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+", host):
        raise FleetError(f"--ssh {host!r}: give user@host")
    flags = (" --labeled-only" if labeled_only else "") + (f" --since {since}" if since else "")
    if since and not re.fullmatch(r"[0-9A-Za-z:.+-]{1,40}", since):
        raise FleetError(f"--since {since!r}: not a date or duration")
    remote = ("set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
              f"ecosorter export \"$d/x\"{flags} >&2; tar -C \"$d/x\" -cf - .")
    folder = Path(dest) / host.rpartition("@")[2]
    folder.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen([*ssh, host, remote], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        try:
            with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
                tar.extractall(folder, filter="data")  # no links, no paths out of the folder
        except tarfile.TarError as e:
            p.kill()
            raise FleetError(f"--ssh {host}: no export came back ({e}): "
                             f"{p.stderr.read().decode(errors='replace')[-300:]}") from None
        err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        raise FleetError(f"--ssh {host}: exit {p.returncode}: {err.strip()[-300:]}")
    return folder


def pool_online(out: Path, hosts: list[str], exports: list[Path], since: str = "",
                warn: Callable[[str], None] = lambda m: None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ecosorter-pool-") as tmp:
        fetched = [fetch_over_ssh(h, Path(tmp), since) for h in hosts]
        return pool(out, [*fetched, *exports], warn)
