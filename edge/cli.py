"""ecosorter: classify | run | bench | doctor | calibrate | export | label | model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ecosorter.edge.clikit import add_version, quiet_pipe, simulate_state_dir
from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.state_dirs import same_state_flag, simulated_run_state_dir

log = logging.getLogger("ecosorter")
SAMPLES = Path(__file__).resolve().parent / "demo" / "samples"


def _model_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument("--model", type=Path, help="a .tflite (default: the bundled demo model, or with --config "
                                                  "the bin's)")
    p.add_argument("--backend", default="auto", choices=["auto", "litert", "tflite-runtime", "tensorflow"],
                   help="the runtime (default auto: LiteRT, then tflite-runtime, then TensorFlow)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (default: all cores)")
    p.add_argument("--labels", type=Path, help="foreign .tflite: labels file, one per line")
    p.add_argument("--preprocess", choices=["caffe", "tf", "unit", "raw"], help="foreign .tflite: the transform")


def _bin_config(args):
    """--config's Config (loaded once per command), or None."""
    from ecosorter.edge.config import load_config

    config = getattr(args, "config", None)
    return load_config(config) if config is not None else None


def _load(args, cfg=None):
    from ecosorter.edge.model import load_model
    from ecosorter.edge.model.manifest import load_labels_file
    from ecosorter.edge.preprocess.spec import preset

    labels = load_labels_file(args.labels)
    path, source = model_choice(args, cfg if cfg is not None else _bin_config(args))
    model = load_model(path, args.backend, args.threads or None, labels,
                       preset(args.preprocess) if args.preprocess else None)
    # said on stderr once it loads (stdout stays the results; a failure's error names the file):
    # a config naming no model must not pass the demo off as the bin's
    print(f"model: {path} ({source})", file=sys.stderr)
    return model


def model_choice(args, cfg=None) -> tuple[Path, str]:
    """Which model a command uses and where that came from, as `run` chooses it: --model; with
    --config its model.path (missing: an error naming the key), else the installed model, else the
    bundled demo. `cfg`: --config's Config, loaded by the caller."""
    from ecosorter.edge.model.loader import DEMO_MODEL

    if args.model is not None:
        return args.model, "--model"
    config = getattr(args, "config", None)
    if cfg is None:
        return DEMO_MODEL, "the bundled demo model: no --model or --config given"
    from ecosorter.edge.sorter import default_model_path

    if cfg.model.path:
        path = Path(cfg.model.path)
        if not path.is_file():
            raise EcoSorterError(f"{config}: model.path = {str(path)!r}: file not found (fix the key, or remove it "
                                 "to use the installed model)")
        return path, f"model.path in {config}"
    models = Path(cfg.record.state_dir) / "models"
    installed = default_model_path(Path(cfg.record.state_dir))
    if installed is not None:
        return installed, f"the installed model in {models} (`ecosorter model install`); {config} sets no model.path"
    return DEMO_MODEL, (f"the bundled DEMO model: {config} sets no model.path and no model is installed in "
                        f"{models}; the bin would sort with this demo")


def cmd_classify(args) -> int:
    from ecosorter.edge.api import predict
    from ecosorter.edge.preprocess import Preprocessor, decode_image
    from ecosorter.edge.preprocess.transform import camera_roi

    failures = 0
    cfg = _bin_config(args)
    # with --config, the photo is a camera frame: cropped to camera.roi as `run` crops it
    roi = camera_roi(cfg.camera.roi) if cfg is not None else None
    with _load(args, cfg) as model:
        prep = Preprocessor(model.manifest.preprocess, model.manifest.input, roi)
        names = {lb.id: lb.name for lb in model.labels}
        decide = _decider(cfg, model)
        for image in args.images:
            try:
                p = predict(model, prep, decode_image(image), "rgb")
            except EcoSorterError as e:
                failures += 1
                if args.json:
                    print(json.dumps({"image": str(image), "error": str(e)}))
                else:
                    print(f"{image}: error: {e}", file=sys.stderr)
                continue
            if args.json:
                extra = {"decision": decide(p)} if decide is not None else {}
                print(json.dumps({"image": str(image), **p.to_dict(), **extra}))
            else:
                # the model's raw probability; `run` and the page show the bin's calibrated one, so
                # the same photo read 88.2% here and 97.7% there with nothing to say why
                bin_says = ""
                if decide is not None:
                    d = decide(p)
                    verdict = f"UNCERTAIN ({decide.rule.needs(p.label)}), " if d["uncertain"] else ""
                    bin_says = (f" -> {verdict}compartment {d['compartment_name']} "
                                f"(calibrated {100 * d['confidence']:.1f}%)")
                print(f"{image}: {p.label} ({names[p.label]}) {100 * p.confidence:.1f}%{bin_says}  "
                      f"[{p.latency_ms:.1f} ms]")
    return 1 if failures else 0


def _decider(bin_cfg, model):
    """What the bin would do with one photo: the model's thresholds under --config's [decision]
    and compartments (defaults without one); None when the labels have no fallback to route to."""
    import numpy as np

    from ecosorter.edge.config import Config
    from ecosorter.edge.decide import CompartmentMap, Voter
    from ecosorter.edge.machine import compartment_label

    ids = model.manifest.label_ids
    given = bin_cfg is not None
    cfg = bin_cfg if given else Config()
    comps = dict(cfg.hardware.compartments) if given or set(ids) == set(cfg.hardware.compartments) \
        else {lb: i for i, lb in enumerate(ids)}
    if not given and cfg.decision.fallback not in ids:
        return None
    voter = Voter(cfg.decision, ids, CompartmentMap(comps, ids, cfg.decision.fallback), model.manifest.decision)

    def decide(p) -> dict:
        voter.reset()
        d = voter.add(np.array([p.probabilities[lb] for lb in ids], np.float32)) or voter.flush()
        # compartment: the index as in labels.csv and the config (from 0); compartment_name: as
        # printed on the bin and by `run` (hardware.compartment_names, else numbered from 1)
        return {"label": cfg.decision.fallback if d.uncertain else d.label, "compartment": d.compartment,
                "compartment_name": compartment_label(d.compartment, cfg.hardware.compartment_names),
                "uncertain": d.uncertain, "confidence": round(d.confidence, 6)}
    decide.rule = voter.rule  # type: ignore[attr-defined]  # for the plain line's "needs N%"
    return decide


def _config(args, simulate: bool, errors: list | None = None):
    from ecosorter.edge.config import DEFAULT_PATH, load_config

    overrides: dict = {}
    if simulate:
        overrides.update({"camera.source": "folder", "camera.device": str(args.source or SAMPLES),
                          "hardware.pin_factory": "mock", "camera.realtime": not args.fast,
                          "camera.loop": args.loop,
                          # mock pins idle high: a lid switch would read open and position switches
                          # away, forever. Lids, switches and time are `ecosorter simulate`'s job.
                          "hardware.interlock_pin": -1, "hardware.chute_home_switch_pin": -1,
                          "hardware.trapdoor_closed_switch_pin": -1})
        if args.config is None:  # the demo: every photo kept (within 200 MB), so `export` has them all
            overrides.update({"record.capture": "all", "record.capture_quota_mb": 200.0})
    elif args.source:
        overrides.update({"camera.source": "folder", "camera.device": str(args.source)})
    if getattr(args, "model", None):
        overrides["model.path"] = str(args.model)
    path = args.config
    if path is None and not simulate and DEFAULT_PATH.exists():
        path = DEFAULT_PATH
    return load_config(path, overrides, errors)


def run_until_signalled(sorter, **kw):
    """Run the loop; SIGTERM, SIGINT and SIGHUP finish the current item and return (the caller's
    `with` then leaves the hardware safe). SIGHUP does not reload: a config change is a restart,
    which systemd does with the same safe path. Handlers are restored afterwards."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: finishing the current item, then stopping safely", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return sorter.run(stop, **kw)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def cmd_run(args) -> int:
    from ecosorter.edge.machine import compartment_label
    from ecosorter.edge.sorter import build_sorter, percentiles

    simulate = args.simulate or (args.config is None and not Path("/etc/ecosorter/config.toml").exists())
    from ecosorter.edge.errors import ConfigErrors
    from ecosorter.edge.preflight import preflight

    errors: list = []
    cfg = _config(args, simulate, errors)
    cfg, more, notes = preflight(cfg, None)  # the same checks `config check` makes (labels: build_sorter)
    if errors + more:  # one report, as `config check` gives
        raise ConfigErrors(errors + more)
    if simulate:  # kept, so `ecosorter label` and `export` (same --config or --state-dir) find this run
        again = same_state_flag(args.state_dir, args.config)
        args.state_dir = simulated_run_state_dir(args.state_dir, args.config, cfg.record.state_dir)
    for note in notes:
        log.warning("%s", note)
        print(f"note: {note}", file=sys.stderr)
    check_state_dir(Path(args.state_dir or cfg.record.state_dir))
    # a simulated run's hardware (mock pins, no switches) is no config for `ecosorter safe` to fall back on
    with build_sorter(cfg, state_dir=args.state_dir, remember_hardware=not simulate) as sorter:
        names = {lb.id: lb.name for lb in sorter.model.labels}
        server = None
        if cfg.status.enabled and not args.no_status:
            from ecosorter.edge.secrets import read_secret
            from ecosorter.edge.status.server import start_status_server

            server = start_status_server(sorter.board, cfg.status.bind, cfg.status.port, sorter.flag,
                                         on_label=sorter.label, on_clear_fault=sorter.clear_fault,
                                         token=read_secret("page_token", cfg.status.token_file) or None,
                                         public_read=cfg.status.public_read,
                                         history=history_for(sorter, cfg))
            if server is not None and server.bound:
                print(f"status page: http://{cfg.status.bind}:{server.server_port}/")
        if simulate:
            print(f"simulating: photos from {cfg.camera.device}, mock pins ({cfg.hardware.profile}), "
                  f"model {sorter.model.path.name} on {sorter.model.classifier.runtime}; state in {args.state_dir}")
        fallback = compartment_label(sorter.voter.route(cfg.decision.fallback, True), cfg.hardware.compartment_names)
        # why an item at 96% can be UNCERTAIN: the rule's thresholds, said before the first item
        print(f"decision: routed when the top class reaches {sorter.voter.rule.words()}; below that: "
              f"UNCERTAIN, to {cfg.decision.fallback} (compartment {fallback})")

        def show(ev) -> None:
            flag = ""
            if ev.uncertain:
                rule = sorter.voter.rule  # the running one: a model swapped in brings its own
                flag = f" UNCERTAIN ({rule.needs(ev.label)})" if ev.label in rule.labels else " UNCERTAIN"
            where = (f"compartment {compartment_label(ev.routed_to, cfg.hardware.compartment_names)}"
                     if ev.routed_ok else f"NOT ROUTED ({ev.note})")
            print(f"[{sorter.summary.items:3d}] {ev.source_name or ev.time[11:23]}  id {ev.id}\n      {ev.label:<8} "
                  f"{names[ev.label]:<24} {100 * ev.confidence:5.1f}%{flag} -> {where} "
                  f"({ev.frames} frame{'s' if ev.frames > 1 else ''}, {ev.latency_ms['total']:.0f} ms)", flush=True)

        t0 = time.monotonic()
        s = run_until_signalled(sorter, max_items=args.max_items, on_event=show)
        if server is not None:
            server.shutdown()
        lat = ", ".join(f"{q} {v:.1f} ms" for q, v in percentiles(s.latency_ms).items()) or "none"
        print(f"\n{s.items} items in {time.monotonic() - t0:.1f} s, {s.uncertain} uncertain, "
              f"{s.inferences} inferences for {s.frames} frames; decision latency {lat}")
        print(format_counts(s, names, cfg.hardware.compartments, cfg.hardware.compartment_names))
        if simulate:
            print(f"events and photos kept in {args.state_dir}: `ecosorter label ID LABEL{again}` and "
                  f"`ecosorter export OUT/{again}` find them there")
    if sorter.events is not None and sorter.events.unsaved:
        print(f"ecosorter: error: {sorter.events.unsaved} events could not be saved: {sorter.events.error}",
              file=sys.stderr)
        return 3
    return 0


def history_for(sorter, cfg):
    """The /history page's data: this sorter's event log and photos, and the model it runs now."""
    from ecosorter.edge.machine import compartment_label
    from ecosorter.edge.status.history import History, model_panel

    if sorter.events is None:
        return None
    captures = sorter.captures.root if sorter.captures is not None else sorter.events.path.parent / "captures"
    names = cfg.hardware.compartment_names
    return History(sorter.events.path, captures, sorter.board.labels,
                   model=lambda: model_panel(sorter.model, sorter.model.classifier.runtime, sorter.board.model),
                   compartment_name=lambda c: compartment_label(c, names))


def format_counts(s, names: dict[str, str], compartments: dict[str, int], shown: list[str] | None = None) -> str:
    """What physically went where (per compartment, by the name printed on the bin), then per predicted label."""
    from ecosorter.edge.machine import compartment_label

    by_comp: dict[int, list[str]] = {}
    for label, c in compartments.items():
        by_comp.setdefault(c, []).append(label)
    lines = ["  per compartment (what went where):"]
    for c in sorted(s.routed):
        lines.append(f"    {compartment_label(c, shown or ()):<3} {'/'.join(by_comp.get(c, [])):<16} {s.routed[c]}")
    lines.append(f"    rerouted {s.rerouted} (counted where they went), not routed {s.unrouted}, "
                 f"waited on a hold {s.held}")
    lines.append("  per label (what the model said):")
    lines += [f"    {label:<8} {names.get(label, label):<24} {n}" for label, n in s.counts.items() if n]
    return "\n".join(lines)


def cmd_simulate(args) -> int:
    from ecosorter.edge.machine import compartment_label
    from ecosorter.edge.simulate import run_scenario

    # the timeline is streamed to its file as it happens: a week's run in bounded memory
    result = run_scenario(args.scenario, args.config, timeline_path=args.timeline, keep=False)
    if args.json:
        print(json.dumps(result.summary, indent=1))
    else:
        s, it = result.summary, result.summary["items"]
        print(f"{it['placed']} items placed, {it['decided']} decided, {it['routed']} routed "
              f"({it['rerouted']} rerouted), {it['not_routed']} not routed, {it['held']} waited on a hold; "
              f"{s['virtual_s']:.0f} virtual s in {s['wall_s']:.1f} s")
        comps = s["compartments"]

        def shown(counts: dict) -> str:  # as printed on the bin, like `run`'s summary and the page
            return ", ".join(f"{compartment_label(int(c), comps['names'])}: {n}" for c, n in counts.items()) or "none"
        print(f"  routed per compartment (as printed on the bin): {shown(comps['routed'])}; "
              f"landed (physics): {shown(comps['landed'])}")
        print(f"  holds raised: {s['holds'] or 'none'}; faults raised: {s['faults'] or 'none'}")
        if it["never_recorded"]:
            print(f"  WARNING: {it['never_recorded']} items were put on the tray and never recorded")
    return 0


def check_state_dir(state: Path) -> None:
    """Refuse to start sorting when nothing could be recorded: a clear error, not a silent loss."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=state, prefix=".write-test-")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise EcoSorterError(f"state folder {state} is not writable ({e.strerror or e}): events could not be "
                             "saved; fix its owner/permissions (deploy/install.sh) or set record.state_dir") from None


def cmd_bench(args) -> int:
    from ecosorter.edge.bench import run_bench

    with _load(args) as model:
        print(json.dumps(run_bench(model, args.iterations, args.source or SAMPLES), indent=1))
    return 0


def cmd_doctor(args) -> int:
    from ecosorter.edge.doctor import run_doctor

    return run_doctor(args)


def _state_dir(args) -> Path:
    """--state-dir; else --config's record.state_dir (as `run --config` uses it); else the installed
    bin's; else (no config: `run` simulates) the simulated bin's folder."""
    from ecosorter.edge.config import DEFAULT_PATH, load_config

    if args.state_dir is not None:
        return args.state_dir
    if args.config is not None:
        if not args.config.exists():
            raise EcoSorterError(f"--config {args.config}: file not found")
        return Path(load_config(args.config).record.state_dir)
    if DEFAULT_PATH.exists():
        return Path(load_config(DEFAULT_PATH).record.state_dir)
    return simulate_state_dir()


def _event_log(args) -> Path:
    """The state folder that holds an event log; a clear error (and nothing created) otherwise."""
    state = _state_dir(args)
    if not (state / "events.db").is_file():
        raise EcoSorterError(f"no event log at {state / 'events.db'}: nothing has been sorted there yet. "
                             "Run `ecosorter run` (or `run --simulate`) first, or give the run's --config or --state-dir")
    return state


def _model_store(args):
    """The store as the bin's config sets it up: --config, else /etc/ecosorter/config.toml like `run`.
    No config is said, not skipped: it means no key, so only --allow-unsigned installs."""
    from ecosorter.edge.config import DEFAULT_PATH, load_config
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.store import ModelStore

    path = args.config if args.config is not None else DEFAULT_PATH if DEFAULT_PATH.exists() else None
    if args.config is not None and not args.config.exists():
        raise EcoSorterError(f"--config {args.config}: file not found")
    cfg = load_config(path)
    where = f"config {path}" if path else f"no config file ({DEFAULT_PATH} not found; give --config)"
    store = ModelStore.from_config(cfg, args.state_dir or Path(cfg.record.state_dir), keys_from=where)
    if store.current.exists():  # the labels the bin is wired for: the manifest is enough
        running = read_manifest(store.current.read_bytes(), store.current)
        store.expected_labels = running.label_ids if running else None
    return cfg, store


def _picked_up(cfg, args) -> str:
    """When the installed model runs: at the next start, unless model.path names another file,
    which `run` loads instead (the install would otherwise look done and never run)."""
    if cfg.model.path:
        from ecosorter.edge.config import DEFAULT_PATH

        where = args.config or DEFAULT_PATH
        return (f"NOT run by this bin: model.path in {where} is {cfg.model.path}, and `ecosorter run` loads "
                "that file; empty model.path (then restart) to run the installed model")
    return ("a running sorter picks it up on restart: systemctl restart ecosorter (a foreground "
            "`ecosorter run`: stop it and start it again)")


def cmd_model(args) -> int:
    from ecosorter.edge.model.store import ModelInstallError

    cfg, store = _model_store(args)
    if args.action == "install":
        if args.file is None:
            raise EcoSorterError("model install needs a FILE")
        if args.signature and args.allow_unsigned:
            raise EcoSorterError("model install: give --signature or --allow-unsigned, not both")
        sig = _read_signature(args.signature) if args.signature else None
        try:
            r = store.install(args.file, args.sha256, sig, cfg.model.backend, allow_downgrade=args.allow_downgrade,
                              allow_unsigned=args.allow_unsigned, origin="cli")
        except ModelInstallError as e:
            if e.checks:
                print("\n".join(f"  {line}" for line in [*e.checks, "REFUSED: see below"]))
            raise
        print(f"installed {r.sha256[:12]} as {store.current}; checked:")
        print("\n".join(f"  {line}" for line in r.checks))
        print(f"its decision rule: {_decision(r.path)}")
        print(_picked_up(cfg, args))
    elif args.action == "rollback":
        print(f"rolled back to {store.rollback()}; {_picked_up(cfg, args)}")
    else:
        for name in ("current", "previous"):
            print("\n".join(_describe_installed(store, name)))
    return 0


def _decision(path: Path) -> str:
    """An installed model's decision rule, printable (the manifest's text is the model's, not ours)."""
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.trust import decision_summary

    line = decision_summary(read_manifest(path.read_bytes(), path))
    return "".join(c if c.isprintable() else "?" for c in line)


def _read_signature(path: Path) -> bytes:
    """An ed25519 signature is 64 raw bytes (`ecosorter keys sign`): read no more than that, so
    /dev/zero or a huge file is refused, not read until memory runs out."""
    try:
        with open(path, "rb") as f:
            sig = f.read(65)
    except OSError as e:
        raise EcoSorterError(f"--signature {path}: cannot read: {e.strerror or e}") from None
    if len(sig) != 64:
        size = "more than 64" if len(sig) > 64 else str(len(sig))
        raise EcoSorterError(f"--signature {path}: {size} bytes; an ed25519 signature file is 64 raw bytes "
                             "(as `ecosorter keys sign` writes it): refused")
    return sig


def _describe_installed(store, name: str) -> list[str]:
    """`model list`: version, date, source, labels, verification, signer of current/previous."""
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.trust import decision_summary, verification_status

    digest = store.installed(name)
    tag = f"{name} ({'running' if name == 'current' else 'rollback target'})"
    if digest is None:
        return [f"{tag}: -" + (f" (none installed in {store.dir}: the bin runs model.path, else the bundled demo)"
                               if name == "current" else "")]
    path = store.dir / f"sha-{digest}.tflite"
    try:
        m = read_manifest(path.read_bytes(), path)
    except (OSError, EcoSorterError) as e:
        return [f"{tag}: sha-{digest[:12]} cannot be read: {e}"]
    rec = store.record(digest) or {}
    if not rec:
        signer = "not recorded (installed before install records were kept)"
    elif rec.get("signed"):
        signer = f"key {rec.get('key_id')} ({rec.get('key_name')})" + (" via a signed command" if rec.get("how") == "command" else "")
    else:
        signer = "UNSIGNED (installed with --allow-unsigned)"
    src = m.source if m else {}
    lines = [f"{tag}: sha-{digest[:12]}",
            f"  version       {m.version if m else '-'}",
            f"  converted     {src.get('converted_at', '-')}",
            f"  source        {src.get('file', '-')} ({src.get('quantization', '?')})",
            f"  labels        {','.join(m.label_ids) if m else '-'}",
            f"  verification  {verification_status(m)[1]}",
            f"  decision      {decision_summary(m)}",
            f"  signed by     {signer}",
            f"  installed     {rec.get('installed_at', '-')} from {rec.get('installed_from', '-')}"]
    # the manifest's and the record's text is the model's, not ours: no escapes to the terminal
    return ["".join(c if c.isprintable() else "?" for c in line) for line in lines]


def cmd_keys(args) -> int:
    from ecosorter.edge.security import new_keypair

    if args.action == "sign":
        return _sign_model(args)
    private, public = new_keypair()
    try:
        fd = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # never over a key whose public half bins may already trust
        raise EcoSorterError(f"keys new: {args.private} already exists; a key pair is never overwritten "
                             "(bins may trust its public key): give another file name") from None
    except OSError as e:
        raise EcoSorterError(f"keys new: cannot write {args.private}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
    from ecosorter.edge.model.trust import key_id
    from ecosorter.edge.security import decode_public_key

    print(f"private key written to {args.private} (mode 0600): keep it off the bins")
    print(f'in each bin\'s config, [model]: public_key = "{public}"')
    print(f"key id {key_id(decode_public_key(public))} (what `ecosorter model list` shows as the signer)")
    return 0


def _sign_model(args) -> int:
    from ecosorter.edge.secrets import read_secret
    from ecosorter.edge.security import sign_file

    if args.file is None:
        raise EcoSorterError("keys sign needs the model FILE to sign")
    out = args.output or args.file.with_suffix(".sig")
    try:
        sig = sign_file(read_secret("signing_key", args.private), args.file.read_bytes())
    except OSError as e:
        raise EcoSorterError(f"{args.file}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise EcoSorterError(f"{args.private}: not a key from `ecosorter keys new` ({e})") from None
    out.write_bytes(sig)
    print(f"signature written to {out}: ecosorter model install {args.file} --signature {out}")
    return 0


def cmd_sign_command(args) -> int:
    from ecosorter.edge.commands import parse_command
    from ecosorter.edge.secrets import read_secret
    from ecosorter.edge.security import sign_command

    kv = {}
    for a in args.args:
        k, sep, v = a.partition("=")
        if not sep:
            raise EcoSorterError(f"argument {a!r}: give KEY=VALUE")
        kv[k] = v
    try:
        cmd = sign_command(read_secret("signing_key", args.key), args.command, kv, args.bin_id)
    except ValueError as e:
        raise EcoSorterError(f"sign-command: {e}") from None
    text = json.dumps(cmd, separators=(",", ":"))
    parse_command(text.encode())  # what the bin will check: fail here, not there
    print(text)
    return 0


def cmd_export(args) -> int:
    from ecosorter.edge.record.export import export

    state = _event_log(args)
    r = export(state, args.out, args.since or "", labeled_only=args.labeled_only, replace=args.replace,
               warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    which = f"{' labelled' if args.labeled_only else ''} event{'s' * (r.events != 1)}"
    which += f" since {args.since}" if args.since else ""
    print(f"exported {r.photos} photo{'s' * (r.photos != 1)} of {r.events}{which} from {state} to {args.out} (class folders + labels.csv)")
    if r.summary():
        print(r.summary())
    return 0


def cmd_label(args) -> int:
    from ecosorter.edge.record.labels import import_labels, label_one

    state = _event_log(args)
    if args.import_csv is not None:
        if args.id or args.label:
            raise EcoSorterError("label: give ID LABEL or --import CSV, not both")
        n = import_labels(state, args.import_csv, args.by)
        print(f"labelled {n} events from {args.import_csv}")
    else:
        if not (args.id and args.label):
            raise EcoSorterError("label needs ID LABEL (or --import CSV)")
        replaced = label_one(state, args.id, args.label, args.by)
        # two people disagreeing is said, not silently settled by whoever typed last
        print(f"{args.id}: true label {args.label}{f' (replaces {replaced})' if replaced else ''}")
    return 0


def cmd_calibrate(args) -> int:
    from dataclasses import replace

    from ecosorter.edge.config import load_config
    from ecosorter.edge.errors import ConfigErrors
    from ecosorter.edge.hardware import make_actuator
    from ecosorter.edge.hardware.calibrate import calibrate
    from ecosorter.edge.hardware.check import compartment_count

    errors: list = []
    cfg = load_config(args.config, errors=errors)
    stale = [e for e in errors if e.key.startswith("hardware.feedback_at_")]  # what calibrate replaces
    if len(stale) < len(errors):
        raise ConfigErrors([e for e in errors if e not in stale])
    if stale:
        cfg = replace(cfg, hardware=replace(cfg.hardware, feedback_at_min=[], feedback_at_max=[]))
    with make_actuator(cfg.hardware, compartment_count(cfg.hardware)) as actuator:
        return 0 if calibrate(args.config, actuator, names=cfg.hardware.compartment_names) else 1


def _raw_state_dir(config: Path) -> Path | None:
    """record.state_dir as written in a config that may not validate (a bad edit elsewhere in it):
    the folder where the last good hardware section was kept."""
    import tomllib

    try:
        raw = tomllib.loads(config.read_text()).get("record", {}).get("state_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(raw) if isinstance(raw, str) and raw else None


def cmd_safe(args) -> int:
    """Run by systemd after every stop (ExecStopPost), also after a watchdog kill or SIGKILL,
    when the sorter itself could not: trapdoor closed and waited for, then chute home, then
    detach; with the lid open, detach only. A config that no longer loads (a bad edit) falls back
    to the hardware section of the last config that started, kept in the state folder."""
    from ecosorter.edge.config import config_from_dict, load_config
    from ecosorter.edge.hardware import make_actuator
    from ecosorter.edge.hardware.check import compartment_count
    from ecosorter.edge.sorter import LAST_GOOD_HARDWARE

    kept = (args.state_dir or _raw_state_dir(args.config) or Path("/var/lib/ecosorter")) / LAST_GOOD_HARDWARE
    try:
        if not args.config.exists():
            raise EcoSorterError(f"{args.config}: file not found")
        cfg, source = load_config(args.config), str(args.config)
    except Exception as e:  # whatever is wrong with the file, the hardware must still be made safe
        print(f"ecosorter safe: {args.config} does not load ({e}); using {kept}", file=sys.stderr)
        try:
            cfg, source = config_from_dict({"hardware": json.loads(kept.read_text())}), str(kept)
        except (OSError, ValueError, EcoSorterError) as e2:
            raise EcoSorterError(f"no usable hardware config: {args.config} does not load and {kept} cannot be "
                                 f"used ({e2}); fix the config and run `ecosorter safe` again") from None
    with make_actuator(cfg.hardware, compartment_count(cfg.hardware)) as act:
        lid_open = act.lid_open()
        parked = act.park()  # building parked it already: this confirms (no travel left) and detaches
        faults = [e.to_dict() for e in act.machine.entries() if e.condition.kind == "fault"]
    if faults:
        print(f"ecosorter safe: NOT safe ({cfg.hardware.profile}): {'; '.join(f['reason_en'] for f in faults)}; "
              "servos detached where they stand", file=sys.stderr)
        return 1
    print(f"hardware safe ({cfg.hardware.profile}) from {source}"
          + (": lid open, servos detached where they stand" if lid_open else "" if parked else ": not parked"))
    return 0


def cmd_config(args) -> int:
    from ecosorter.edge.config import example_toml, load_config

    if args.action == "example":
        print(example_toml(), end="")
        return 0
    from ecosorter.edge.errors import ConfigErrors
    from ecosorter.edge.hardware.check import machine_warnings
    from ecosorter.edge.model.loader import read_manifest
    from ecosorter.edge.model.manifest import load_labels_file
    from ecosorter.edge.preflight import preflight
    from ecosorter.edge.sorter import default_model_path

    errors: list = []
    cfg = load_config(args.file, errors=errors)  # schema and machine rules: all of them, then the rest
    # the compartment map against the model it will run (its manifest is enough): model.path, else
    # the installed one, else the bundled demo, as `run` chooses
    model = Path(cfg.model.path) if cfg.model.path else \
        default_model_path(Path(cfg.record.state_dir)) or Path(__file__).resolve().parent / "demo" / "demo_int8.tflite"
    labels = load_labels_file(cfg.model.labels_file, "model.labels_file")
    try:
        manifest = read_manifest(model.read_bytes(), model)
    except OSError as e:
        raise EcoSorterError(f"model.path {model}: cannot read ({e.strerror or e})") from None
    ids = labels if labels else (manifest.label_ids if manifest else None)
    cfg, more, notes = preflight(cfg, list(ids) if ids else None)  # what `run` checks, checked the same way
    if errors + more:
        raise ConfigErrors(errors + more)
    for note in notes:
        print(f"note: {note}")
    for w in machine_warnings(cfg):
        print(f"warning: {w}")
    print(f"{args.file}: valid" + ("" if ids else " (labels not checked: the model has no manifest)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ecosorter", description="EcoSorter Edge: sort waste on a Raspberry Pi")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("classify", help="classify image files")
    p.add_argument("images", nargs="+", type=Path, help="JPEG/PNG files")
    p.add_argument("--json", action="store_true", help="one JSON object per line, with the bin's decision")
    p.add_argument("--config", type=Path, help="the bin's config.toml: its model (model.path, else the "
                                               "installed one), camera.roi, [decision] and compartments decide "
                                               "(default: the whole photo, the defaults and the model's thresholds)")
    _model_args(p)
    p.set_defaults(fn=cmd_classify)

    p = sub.add_parser("run", help="the sorting loop (simulated without a config file)")
    p.add_argument("--config", type=Path, help="TOML config (default /etc/ecosorter/config.toml)")
    p.add_argument("--source", type=Path, help="a folder of photos as the camera")
    p.add_argument("--simulate", action="store_true",
                   help="bundled photos, mock pins; events kept in --config's record.state_dir (never an "
                        "installed bin's), without a config in ~/.local/state/ecosorter/simulate")
    p.add_argument("--model", type=Path, help="a .tflite (default: model.path, else the bundled demo model)")
    p.add_argument("--max-items", type=int, help="stop after this many items")
    p.add_argument("--state-dir", type=Path, help="events, photos, models (default: record.state_dir; "
                                                  "--simulate without a config: ~/.local/state/ecosorter/simulate)")
    p.add_argument("--no-status", action="store_true", help="no status page")
    p.add_argument("--fast", action="store_true", help="simulation: no camera pacing, as fast as it sorts")
    p.add_argument("--loop", action="store_true", help="simulation: show the photos again and again")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("simulate", help="the real sorter against a simulated bin in virtual time (docs/simulate.md)")
    p.add_argument("scenario", type=Path, help="scenario TOML")
    p.add_argument("--config", type=Path, help="the bin's config (default: defaults + the scenario's [config])")
    p.add_argument("--timeline", type=Path, help="write every pin command and physical event as JSON lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("bench", help="latency per stage (p50/p90/p99) and end to end")
    p.add_argument("model", nargs="?", type=Path, help="a .tflite (default: the bundled demo model)")
    p.add_argument("--iterations", type=int, default=50, help="timed runs per stage (default 50)")
    p.add_argument("--source", type=Path, help="photos to feed (default: the bundled ones)")
    _model_args(p, with_model=False)
    p.set_defaults(fn=cmd_bench)

    from ecosorter.fleet.cli import add_parser as add_fleet_parser  # fleet/: many bins on one broker

    add_fleet_parser(sub)

    p = sub.add_parser("safe", help="put the hardware in its safe state (systemd runs it after every stop)")
    p.add_argument("--config", type=Path, default=Path("/etc/ecosorter/config.toml"),
                   help="TOML config (default /etc/ecosorter/config.toml)")
    p.add_argument("--state-dir", type=Path, help="where the last good hardware config is kept (default /var/lib/ecosorter)")
    p.set_defaults(fn=cmd_safe)

    p = sub.add_parser("calibrate", help="set servo angles per compartment by eye; saved into the config "
                                         "(docs/calibrate.md)")
    p.add_argument("--config", type=Path, default=Path("/etc/ecosorter/config.toml"),
                   help="the config whose [hardware] angles are set (default /etc/ecosorter/config.toml)")
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("model", help="install a new model (signed, verified, tested, atomic), roll back, or list")
    p.add_argument("action", choices=["install", "rollback", "list"], help="what to do")
    p.add_argument("file", nargs="?", type=Path, help="install: the .tflite")
    p.add_argument("--config", type=Path, help="TOML config with the keys (default /etc/ecosorter/config.toml)")
    p.add_argument("--sha256", help="refuse the file unless its sha256 is this")
    p.add_argument("--signature", type=Path, help="raw ed25519 signature file (`ecosorter keys sign`); checked against "
                                                  "model.public_key and model.public_keys")
    p.add_argument("--allow-unsigned", action="store_true", help="install it without a signature: logged, and shown "
                                                                 "as unsigned until a signed model replaces it")
    p.add_argument("--allow-downgrade", action="store_true", help="install a model whose version is below the running one")
    p.add_argument("--state-dir", type=Path, help="where models are kept (default: record.state_dir)")
    p.set_defaults(fn=cmd_model)

    p = sub.add_parser("keys", help="make an ed25519 key pair (new), or sign a model file with it (sign)")
    p.add_argument("action", choices=["new", "sign"], help="new: make a pair; sign: sign FILE")
    p.add_argument("private", type=Path, help="the private key file (new: written mode 0600; keep it off the bin)")
    p.add_argument("file", nargs="?", type=Path, help="sign: the .tflite to sign")
    p.add_argument("-o", "--output", type=Path, help="sign: where the signature goes (default: FILE with .sig for its suffix, model.tflite -> model.sig)")
    p.set_defaults(fn=cmd_keys)

    p = sub.add_parser("sign-command", help="print a signed command for <prefix>/<bin_id>/cmd (e.g. for mosquitto_pub)")
    p.add_argument("command", help="install_model, rollback_model, flag, label or clear_fault")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE", help="the command's arguments, e.g. sha256=... url=...")
    p.add_argument("--key", type=Path, required=True, help="the private key file from `ecosorter keys new`")
    p.add_argument("--bin-id", required=True, help="the bin the command is for (its [mqtt] bin_id)")
    p.set_defaults(fn=cmd_sign_command)

    p = sub.add_parser("export", help="captured photos as class folders + CSV, for retraining and calibration")
    p.add_argument("out", type=Path, help="an empty (or earlier export's) folder")
    p.add_argument("--since", help="a date (2026-11-01), a timestamp, or a duration back from now (7d, 12h)")
    p.add_argument("--labeled-only", action="store_true", help="only items a person labelled")
    p.add_argument("--replace", action="store_true", help="clear an earlier export in OUT first")
    p.add_argument("--config", type=Path, help="the bin's (or a simulated run's) config: its record.state_dir "
                                               "(default /etc/ecosorter/config.toml)")
    p.add_argument("--state-dir", type=Path, help="the bin's state folder (default: --config's record.state_dir; "
                                                  "without a config, the simulated bin's)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("label", help="record what an item really was (true label), or import a CSV of them")
    p.add_argument("id", nargs="?", help="event id (as printed, published and exported)")
    p.add_argument("label", nargs="?", help="label id, e.g. kaca")
    p.add_argument("--import", dest="import_csv", type=Path, metavar="CSV",
                   help="CSV with columns id and true_label (or label), e.g. an edited export labels.csv")
    p.add_argument("--by", default="", help="who labelled (default: cli:<user>)")
    p.add_argument("--config", type=Path, help="the bin's (or a simulated run's) config: its record.state_dir "
                                               "(default /etc/ecosorter/config.toml)")
    p.add_argument("--state-dir", type=Path, help="the bin's state folder (default: --config's record.state_dir; "
                                                  "without a config, the simulated bin's)")
    p.set_defaults(fn=cmd_label)

    p = sub.add_parser("config", help="print the documented example config, or check a config file")
    p.add_argument("action", choices=["example", "check"], help="example: print it; check: validate FILE")
    p.add_argument("file", nargs="?", type=Path, default=Path("/etc/ecosorter/config.toml"),
                   help="check: the config (default /etc/ecosorter/config.toml)")
    p.set_defaults(fn=cmd_config)

    p = sub.add_parser("doctor", help="check backend, model, camera, pins, disk")
    p.add_argument("--config", type=Path, help="TOML config (default /etc/ecosorter/config.toml)")
    p.set_defaults(fn=cmd_doctor)
    return ap


@quiet_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ecosorter.edge.service import setup_logging

    setup_logging(args.verbose)
    try:
        return args.fn(args)
    except EcoSorterError as e:
        print(f"ecosorter: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
