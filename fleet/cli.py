"""`ecosorter fleet ...`: status, rollout, pool (see docs/fleet.md)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ecosorter.fleet.broker import Broker, FleetError

DEFAULT_DB = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "ecosorter" / "fleet.db"


def add_parser(sub) -> None:
    """The `fleet` sub-command of `ecosorter` (edge/cli.py)."""
    fp = sub.add_parser("fleet", help="many bins on one broker: status, staged rollouts, pooled labels")
    fsub = fp.add_subparsers(dest="fleet_cmd", required=True)

    def broker_args(p) -> None:
        p.add_argument("--broker", metavar="HOST:PORT", help="default: the --config file's [mqtt], else localhost:1883")
        p.add_argument("--config", type=Path, help="a config TOML like a bin's: its [mqtt] (login, TLS, prefix)")
        p.add_argument("--username", help="broker login (default: the --config file's mqtt.username)")
        p.add_argument("--password-file", type=Path, help="a file (mode 0600) holding the broker password")
        p.add_argument("--prefix", help="topic prefix (default ecosorter)")

    p = fsub.add_parser("status", help="every bin on the broker, from its retained state and last will")
    broker_args(p)
    p.add_argument("--json", action="store_true", help='{"bins": [...]}')
    p.add_argument("--watch", action="store_true", help="print again whenever a bin changes")
    p.add_argument("--bins", default="*", metavar="PATTERN", help="only bins matching (fnmatch, e.g. 'site2-*')")
    p.set_defaults(fn=cmd_status)

    p = fsub.add_parser("rollout", help="a signed model to canaries, a soak, then the rest in waves; "
                                       "rolled back on a regression")
    broker_args(p)
    p.add_argument("model", type=Path, nargs="?", help="the .tflite to roll out")
    p.add_argument("--key", type=Path, help="the owner's private key (ecosorter keys new)")
    p.add_argument("--version", type=int, help="the model's manifest version, checked before anything is sent")
    p.add_argument("--canary", type=int, default=2, metavar="K",
                   help="online bins updated first and soaked; then waves of 2K, 4K, ... (default 2)")
    p.add_argument("--soak", default="10m", metavar="DURATION", help="e.g. 30m, 2h (default 10m)")
    p.add_argument("--bins", default="*", metavar="PATTERN", help="only bins matching (fnmatch, e.g. 'site2-*')")
    p.add_argument("--min-items", type=int, default=20, help="new items per bin before it is judged (default 20)")
    p.add_argument("--max-uncertain-rise", type=float, default=0.15,
                   help="roll back when a bin's uncertain share rises more than this over its own before (default 0.15)")
    p.add_argument("--max-wrong-rise", type=float, default=0.10,
                   help="roll back when the share of items flagged wrong rises more than this (default 0.10)")
    p.add_argument("--resend", default="60s", metavar="DURATION", help="send again after no answer (default 60s)")
    p.add_argument("--url", help="a URL the bins may fetch the model from (their model.download_hosts); "
                                 "default: served by this command over HTTP (--serve)")
    p.add_argument("--serve", default="0.0.0.0:8765", metavar="BIND:PORT",
                   help="where this command serves the model file to the bins without --url (default 0.0.0.0:8765)")
    p.add_argument("--url-host", help="the host name the bins reach this machine by (default: the address "
                                      "this machine uses to reach the broker)")
    p.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"rollout state (default {DEFAULT_DB})")
    p.add_argument("--status", action="store_true", help="where the last rollout stands, then exit")
    p.add_argument("--resume", action="store_true", help="carry on with the unfinished rollout")
    p.add_argument("--abandon", action="store_true", help="mark the unfinished rollout ended, as it stands")
    p.add_argument("--json", action="store_true", help="with --status: as JSON")
    p.set_defaults(fn=cmd_rollout)

    p = fsub.add_parser("forget", help="remove retired or renamed bins from the broker's retained messages "
                                       "(status, rollouts and Home Assistant stop listing them)")
    broker_args(p)
    p.add_argument("bin_ids", nargs="+", metavar="BIN", help="a bin id as `fleet status` lists it")
    p.add_argument("--force", action="store_true", help="also a bin that is online (it comes back with its next state)")
    p.set_defaults(fn=cmd_forget)

    p = fsub.add_parser("pool", help="one training folder from many bins' exports, de-duplicated by event id")
    p.add_argument("out", type=Path, help="the training folder (class folders + labels.csv); pooling into it again adds only what is new")
    p.add_argument("exports", type=Path, nargs="*", help="`ecosorter export` folders (e.g. from a USB stick)")
    p.add_argument("--ssh", action="append", default=[], metavar="USER@HOST",
                   help="also fetch a bin's labelled photos over SSH (its own `ecosorter export`); repeatable")
    p.add_argument("--since", default="", help="with --ssh: only items since (7d, 2026-11-01)")
    p.set_defaults(fn=cmd_pool)


def _broker(args) -> Broker:
    return Broker.from_args(args.config, args.broker, args.username, args.password_file, args.prefix)


# ------------------------------------------------------------------------ status

def _words(row: dict) -> str:
    parts = [f"{e['kind']} {e['name']}: {e['reason']}" for e in row["holds"] + row["faults"]]
    return "; ".join(parts) or "-"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'bin':<14} {'online':<7} {'model':<18} {'today':>6} {'uncert':>7} {'full':<10} {'last seen':<24} "
             "holds/faults"]
    for r in rows:
        model = f"v{r['model_version']} {str(r['model_sha256'] or '')[:12]}" if r["model_sha256"] else "?"
        full = ",".join(f["name"] for f in r["fill"] if f["full"]) or "-"
        share = "-" if r["uncertain_share"] is None else f"{100 * r['uncertain_share']:.0f}%"
        online = {True: "yes", False: "NO", None: "?"}[r["online"]]
        lines.append(f"{r['bin_id']:<14} {online:<7} {model:<18} {r['items_today']:>6} {share:>7} {full:<10} "
                     f"{str(r['last_seen'] or '-')[:23]:<24} {_words(r)}")
    on = sum(1 for r in rows if r["online"])
    lines.append(f"{len(rows)} bins, {on} online")
    return "\n".join(lines)


def cmd_status(args) -> int:
    import threading

    from ecosorter.fleet.view import FleetView

    changed = threading.Event()
    view = FleetView(_broker(args), on_change=lambda b, k: changed.set()).start()
    try:
        while True:
            rows = view.rows(args.bins)
            print(json.dumps({"bins": rows}) if args.json else format_table(rows), flush=True)
            if not args.watch:
                return 0
            changed.clear()
            changed.wait()
            time.sleep(0.5)  # several bins change at once: one print for them
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()


# ------------------------------------------------------------------------ forget

def cmd_forget(args) -> int:
    """A bin's retained state, last will and Home Assistant discovery stay on the broker after it is
    retired or renamed: it is listed offline for ever, and a rollout waits for it. Empty retained
    messages remove them (MQTT's own way to delete a retained message)."""
    import threading

    from ecosorter.edge.record.ha import PREFIX as HA
    from ecosorter.fleet.view import FleetView

    broker = _broker(args)
    view = FleetView(broker).start()
    try:
        for b in args.bin_ids:
            seen = view.get(b)
            if seen is None:
                known = ", ".join(r["bin_id"] for r in view.rows()) or "none"
                raise FleetError(f"no bin {b!r} on {broker.host}:{broker.port} (bins there: {known})")
            if seen.online and not args.force:
                raise FleetError(f"{b} is online: stop it first (its next state would list it again), "
                                 "or give --force")
        discovery: set[str] = set()
        lock = threading.Lock()

        def on_message(client, userdata, msg) -> None:
            if msg.retain and msg.payload:
                with lock:
                    discovery.add(msg.topic)
        view.client.on_message = on_message  # the view's picture is taken; now only the discovery topics
        view.client.subscribe([(f"{HA}/+/ecosorter_{b}/+/config", 0) for b in args.bin_ids])
        view.sync(settle_s=0.3)  # the broker sends them before it acknowledges the sync publish
        topics = sorted(discovery) + [f"{broker.prefix}/{b}/{k}" for b in args.bin_ids for k in ("state", "availability")]
        for topic in topics:
            view.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        for b in args.bin_ids:
            n = sum(1 for x in discovery if f"/ecosorter_{b}/" in x)
            print(f"forgot {b}: retained state and availability, {n} Home Assistant discovery messages")
    finally:
        view.close()
    return 0


# ------------------------------------------------------------------------ rollout

def cmd_rollout(args) -> int:
    from ecosorter.fleet import rollout as ro

    db = ro.open_db(args.db)
    if args.status:
        st = ro.status_rows(db)
        if args.json:
            print(json.dumps(st))
        else:
            print(format_rollout(st))
        return 0
    unfinished = db.execute("SELECT id FROM rollouts WHERE state NOT IN (?, ?, ?)", ro.FINISHED).fetchone()
    if args.abandon:
        if unfinished is None:
            print("no unfinished rollout")
            return 0
        db.execute("UPDATE rollouts SET state = ?, reason = 'abandoned by hand', updated = ? WHERE id = ?",
                   (ro.ABANDONED, time.time(), unfinished["id"]))
        print(f"rollout {unfinished['id']} abandoned as it stands (`--status` shows which bins had it)")
        return 0
    if args.key is None:
        raise FleetError("rollout needs --key OWNER.key (the private key whose public half the bins hold)")
    from ecosorter.edge.secrets import read_secret

    key = read_secret("signing_key", args.key)
    if not key:
        raise FleetError(f"--key {args.key}: empty or unreadable")
    broker = _broker(args)
    if args.resume or args.model is None:
        if unfinished is None:
            raise FleetError("no unfinished rollout to resume; give a MODEL")
        rid = int(unfinished["id"])
    else:
        rid = _new_rollout(args, db, broker, ro)
    print(f"rollout {rid}: {'resuming' if args.resume else 'running'} (state in {args.db})", flush=True)
    state = ro.Rollout(db, rid, broker, key, say=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)).run()
    st = ro.status_rows(db, rid)
    print(format_rollout(st))
    return 0 if state == ro.DONE else 4


def _new_rollout(args, db, broker: Broker, ro) -> int:
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.fleet.view import FleetView

    model = args.model
    try:
        content = model.read_bytes()
    except OSError as e:
        raise FleetError(f"{model}: cannot read: {e.strerror or e}") from None
    try:
        manifest = read_manifest(content, model)
    except Exception as e:  # the bins would refuse it: say so here, before anything is sent
        raise FleetError(f"{model}: {e}") from None
    if manifest is None:
        raise FleetError(f"{model}: has no EcoSorter manifest; the bins refuse it")
    if args.version is not None and manifest.version != args.version:
        raise FleetError(f"--version {args.version}: {model} says version {manifest.version}")
    params = ro.Params(canary=max(1, args.canary), soak_s=ro.parse_duration(args.soak), pattern=args.bins,
                       min_items=max(1, args.min_items), max_uncertain_rise=args.max_uncertain_rise,
                       max_wrong_rise=args.max_wrong_rise, resend_s=ro.parse_duration(args.resend, "--resend"))
    view = FleetView(broker).start()
    try:
        serve, url = "", args.url
        if url is None:
            bind, _, port = args.serve.rpartition(":")
            if not bind or not port.isdigit():
                raise FleetError(f"--serve {args.serve!r}: expected BIND:PORT")
            host = args.url_host or view.client.socket().getsockname()[0]
            serve, url = f"{bind}:{port}", f"http://{host}:{port}/models/{ro.sha256_of(model)}.tflite"
        return ro.Rollout.create(db, view, model, params, url, serve, manifest.version)
    finally:
        view.close()


def format_rollout(st: dict) -> str:
    r = st["rollout"]
    if r is None:
        return "no rollout yet"
    lines = [f"rollout {r['id']}: model {r['sha256'][:12]} v{r['version']} - {r['state']}"
             + (f" ({r['reason']})" if r["reason"] else ""), f"  url {r['url']}"]
    for t in st["targets"]:
        wave = "-" if t["wave"] < 0 else t["wave"]
        lines.append(f"  {t['bin_id']:<14} wave {wave!s:<3} {t['phase']:<15} {t['detail']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ pool

def cmd_pool(args) -> int:
    from ecosorter.fleet.pool import pool_online

    if not args.exports and not args.ssh:
        raise FleetError("pool needs export folders and/or --ssh USER@HOST")
    n = pool_online(args.out, args.ssh, args.exports, args.since,
                    warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    print(f"{n['photos']} photos from {n['bins']} bins in {args.out} ({n['duplicates']} duplicates skipped); "
          f"train with: ecosorter-train {args.out} -o model.keras")
    return 0
