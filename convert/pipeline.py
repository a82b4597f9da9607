"""convert(): load -> calibrate -> convert -> embed manifest -> test-load -> verify -> gate -> write."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ecosorter.convert.drift import drift, keep_float_choice, summary_lines
from ecosorter.convert.embed import embed_metadata
from ecosorter.convert.images import (
    ImageSetError,
    LabelledImage,
    TrainingTransform,
    list_images,
    load_tensors,
    progress_bar,
    stratified_sample,
)
from ecosorter.convert.quantize import (
    IO_DTYPES,
    MODES,
    PROJECTION_CONVS,
    convert_float_head,
    convert_mixed,
    convert_selective,
    convert_tflite,
)
from ecosorter.convert.source_model import load_source_model
from ecosorter.convert.thresholds import plot_curve
from ecosorter.convert.thresholds import report as thresholds_report
from ecosorter.convert.train import PRESET as PRESET_OF
from ecosorter.convert.train import read_sidecar, sidecar_path
from ecosorter.convert.verify import (
    BinRules,
    bin_outcome,
    format_outcome,
    format_table,
    gate_lines,
    points,
    verify,
)
from ecosorter.edge.backends import open_classifier
from ecosorter.edge.durable import write_durably
from ecosorter.edge.errors import BackendError, EcoSorterError
from ecosorter.edge.model.manifest import DEFAULT_LABELS, Label, Manifest
from ecosorter.edge.preprocess.spec import PreprocessSpec, preset

DEFAULT_MIN_AGREEMENT = {"int8": 0.98}
GATES = ("outcome", "agreement")  # outcome: also judge the bin's routing on labelled photos
MIN_CALIBRATION_IMAGES = 8


class ConversionError(EcoSorterError):
    pass


@dataclass
class ConversionResult:
    written: bool
    output: Path
    report: dict
    manifest: Manifest | None = None
    messages: list[str] = field(default_factory=list)


def _min_agreement(mode: str, given: float | None) -> float:
    return given if given is not None else DEFAULT_MIN_AGREEMENT.get(mode, 0.995)


def convert(model: str | Path, output: str | Path, quantize: str = "int8", *,
            calibration: str | Path | None = None, calibration_size: int = 200,
            validation: str | Path | None = None, validation_size: int = 300,
            labels: list[Label] | None = None, preprocess: PreprocessSpec | str | None = None,
            io_dtype: str = "int8", min_agreement: float | None = None, force: bool = False,
            runtime: str = "litert", keep_float: int | list[str] = 0, report_path: str | Path | None = None,
            seed: int = 0, progress: bool = True, log=print, model_version: int | None = None, gate: str = "outcome",
            bin_rules: BinRules | None = None, per_channel: bool = True,
            contamination: float | None = None, guarantee: str = "crc", threshold_family: str = "auto",
            float_ops: str = "none",
            float_head: bool = True) -> ConversionResult:
    converted_at = datetime.now(timezone.utc)
    if model_version is None:  # monotonic by default: a later conversion is never a "downgrade"
        model_version = default_version(converted_at)
        log(f"model version {model_version} (the conversion's UTC time; --model-version N to choose)")
    if not 0 <= model_version < 2**53:
        raise ConversionError(f"--model-version {model_version}: must be a whole number >= 0")
    if quantize not in MODES:
        raise ConversionError(f"--quantize {quantize!r}; allowed: {', '.join(MODES)}")
    if gate not in GATES:
        raise ConversionError(f"--gate {gate!r}; allowed: {', '.join(GATES)}")
    if io_dtype not in IO_DTYPES:
        raise ConversionError(f"--io-dtype {io_dtype!r}; allowed: {', '.join(IO_DTYPES)}")
    output = Path(output)
    # A model from ecosorter-train carries its labels and preset in MODEL.train.json beside it;
    # anything given explicitly wins, and without either it is the seed's contract (caffe, 7 labels).
    trained = read_sidecar(model)
    if labels is None and trained:
        names = {lb.id: lb.name for lb in DEFAULT_LABELS}
        labels = [Label(i, names.get(i, i)) for i in trained["labels"]]
        log(f"labels from {sidecar_path(model).name}")
    if contamination is None and trained and trained.get("decision"):
        budget = trained["decision"].get("budget") if isinstance(trained["decision"], dict) else None
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < 1:
            raise ConversionError(f"{sidecar_path(model)}: decision.budget {budget!r} must be a share between 0 "
                                  "and 1; give --contamination SHARE instead")
        contamination = float(budget)
        log(f"decision rule: contamination budget {100 * contamination:g}% from {sidecar_path(model).name}, "
            "thresholds chosen again on the converted model's outputs")
    src = load_source_model(model)
    preprocess, preprocess_from = choose_preprocess(src, preprocess, trained, log)
    prep = preset(preprocess) if isinstance(preprocess, str) else preprocess
    labels = list(labels) if labels is not None else list(DEFAULT_LABELS)
    if len(labels) != src.num_outputs:
        raise ConversionError(f"{len(labels)} labels but {src.path} has {src.num_outputs} outputs; "
                              "give --labels FILE with one label per output, in output order")
    label_ids = [lb.id for lb in labels]
    transform = TrainingTransform(prep, src.height, src.width)
    log(f"loaded {src.path} ({src.kind}, input {src.height}x{src.width}x3, {src.num_outputs} classes)")

    # Images: calibration sample, and what is held out from it for verification.
    calib_images: list[LabelledImage] = []
    held_out: list[LabelledImage] = []
    if calibration is not None:
        calib_images, held_out = stratified_sample(list_images(calibration, label_ids), calibration_size, seed)
    verify_images = list_images(validation, label_ids) if validation is not None else held_out
    if len(verify_images) > validation_size:
        verify_images, _ = stratified_sample(verify_images, validation_size, seed + 1)
    if not verify_images:
        raise ConversionError("verification needs images: give --validation DIR, or --calibration DIR "
                              "with more images than --calibration-size")

    calib = None
    if quantize == "int8":
        if calibration is None:
            raise ConversionError("--quantize int8 needs --calibration DIR (class subfolders or a flat folder)")
        calib, kept, skipped = load_tensors(calib_images, transform, "calibration images", progress)
        for s in skipped:
            log(f"skipped unreadable calibration image: {s}")
        if len(kept) < min(MIN_CALIBRATION_IMAGES, calibration_size):
            raise ConversionError(f"only {len(kept)} usable calibration images in {calibration} "
                                  f"({len(skipped)} unreadable); need at least "
                                  f"{min(MIN_CALIBRATION_IMAGES, calibration_size)}")

    def bar(items):
        return progress_bar(list(items), "int8 calibration", progress)

    kept_float: list[str] = []
    drift_rows: list[dict] = []
    mixed = _float_ops(src, quantize, float_ops, keep_float, per_channel)
    if mixed:
        # The projection convs computed in float (their weights still int8, the file stays small):
        # closer to float, at ~1.6x int8's latency (docs/int8_study.md); opt-in.
        log(f"int8, with the ops matching {mixed!r} computed in float from int8 weights (--float-ops)")
        tflite = convert_mixed(src, calib, mixed, bar)
    elif quantize == "int8" and keep_float:
        if isinstance(keep_float, int):
            full = convert_tflite(src, "int8", calib, "float32", bar)
            drift_rows = _drift(src, full, calib)
            # the ranking the drift advice names (convert/drift.py keep_float_choice)
            worst = keep_float_choice(drift_rows, keep_float)
            kept_float = [r["tensor"] for r in worst]
            log(f"keeping the {keep_float} ops that add the most int8 error in float: " +
                ", ".join(f"{r['tensor'][:40]} (+{100 * r['jump']:.0f}%)" for r in worst))
        else:
            kept_float = list(keep_float)
        tflite = convert_selective(src, calib, kept_float, bar)
    elif quantize == "int8" and float_head:
        # The head (last dense + softmax) in float: continuous probabilities for the thresholds.
        log("int8, with the classifier head (dense + softmax) in float: float32 probabilities (--int8-head float)")
        tflite = convert_float_head(src, calib, io_dtype, bar, per_channel)
    else:
        tflite = convert_tflite(src, quantize, calib, io_dtype, bar, per_channel)

    source = {"file": src.path.name, "format": src.kind, "sha256": src.sha256, **src.versions,
              "converted_at": converted_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
              "preprocess_from": preprocess_from,
              "quantization": quantize, "calibration_images": 0 if calib is None else int(len(calib)),
              "float_layers": kept_float, **({} if per_channel else {"per_channel": False}),
              **({"float_compute_ops": mixed} if mixed else {}),
              **({"float_head": True} if quantize == "int8" and float_head and not mixed and not keep_float else {})}
    classifier = _test_load(tflite, runtime, quantize)  # the runtime the bins use must load it
    log(f"loads in {classifier.runtime} {classifier.version}: input {classifier.input.dtype}, "
        f"{len(tflite) / 1e6:.1f} MB")
    draft = Manifest(labels=tuple(labels), input=classifier.input, preprocess=prep,
                     output={"activation": "softmax"}, source=source)

    if bin_rules is None:  # the bin's defaults (decision.threshold 0.55, fallback khusus when it is a label)
        bin_rules = BinRules(fallback="khusus" if "khusus" in label_ids else None)
    arrays: dict = {}
    report = verify(src, classifier, prep, label_ids, verify_images, progress,
                    rules=None if contamination is not None else bin_rules, arrays=arrays)
    classifier.close()
    decision, choice = None, None
    if contamination is not None:
        # The bin's rule for this model: chosen on what the converted model outputs, then judged
        # (Keras vs TFLite) under those thresholds, as the bin will route.
        from ecosorter.convert.decision import choose_block

        known = arrays["truth"] >= 0
        decision, choice = choose_block(arrays["tflite"][known], arrays["truth"][known], label_ids, contamination,
                                        method=guarantee, fallback=bin_rules.fallback,
                                        compartments=bin_rules.compartments, seed=seed, family=threshold_family,
                                        log=log)
        if not choice.feasible:
            # nothing certified: "everything uncertain" would pass int8's gate trivially, so int8 is
            # judged under the bin's rule without model thresholds (its config, else the default)
            log("bin outcome judged under the bin's own rule: the budget's thresholds could not be certified")
        elif bin_rules.decision_config is not None:  # the bin's config on top, as its Voter combines them
            from ecosorter.edge.decide.thresholds import decision_rule

            rule = decision_rule(bin_rules.decision_config, label_ids, decision)
            bin_rules = dataclasses.replace(bin_rules, class_thresholds=dict(zip(label_ids, rule.thresholds, strict=True)),
                                            temperature=rule.temperature)
        else:
            bin_rules = dataclasses.replace(bin_rules, class_thresholds=dict(decision["thresholds"]),
                                            temperature=decision["temperature"])
        report["bin_outcome"] = bin_outcome(arrays["keras"][known], arrays["tflite"][known],
                                            arrays["truth"][known], label_ids, bin_rules,
                                            arrays["names"][known].tolist())
        report["decision"] = thresholds_report(choice)
    sizes = {"source": _size(src.path), "tflite": len(tflite)}
    threshold = _min_agreement(quantize, min_agreement)
    report.update({"mode": quantize, "min_agreement": threshold, "file_size_bytes": sizes,
                   "runtime": {"name": runtime}, "float_layers": kept_float})
    log(format_table(report, sizes))
    outcome = report.get("bin_outcome")
    if outcome is not None:
        log(format_outcome(outcome))
    # One gate, on the bin's outcome. Agreement gates only when asked for (--gate agreement or
    # --min-agreement), or when no photo is labelled and there is no outcome to judge.
    agreement_gates = gate == "agreement" or min_agreement is not None or outcome is None
    gate_failed = gate == "outcome" and outcome is not None and not outcome["passed"]
    agreement_failed = agreement_gates and report["agreement"] < threshold
    passed = not gate_failed and not agreement_failed and not (choice is not None and not choice.feasible)
    # only when int8 failed a rule: a budget too small for the photos is no fault of int8's, and
    # --keep-float advice there sends the user after the wrong cause
    if quantize == "int8" and (gate_failed or agreement_failed or drift_rows):
        # Where int8 loses the model, before the next steps: they name ops only where it finds some.
        drift_rows = drift_rows or _drift(src, tflite, calib)
        report["int8_drift"] = drift_rows
    if gate == "outcome" and outcome is not None:
        for line in gate_lines(outcome, quantize, drift_rows or None):
            log(line)
    if agreement_failed:
        log(f"FAILED: agreement rule: top-1 agreement {100 * report['agreement']:.1f}% is below --min-agreement "
            f"{100 * threshold:.1f}% (on {report['images']} photos). Next: 1) more verification photos, if the "
            "estimate is near the minimum; 2) mixed precision (--keep-float N); 3) --quantize float16")
    if choice is not None and not choice.feasible:
        decision = None  # never a rule that certifies nothing, even with --force
        log(f"FAILED: decision rule: a {100 * contamination:g}% contamination budget cannot be certified with "
            f"{choice.n} labelled photos. Next: 1) give at least {choice.photos_needed} labelled photos "
            "(--validation DIR), or a larger --contamination")
    report["gate"] = gate if outcome is not None else "agreement"
    report["agreement_gates"] = agreement_gates
    report["passed"] = passed
    for line in summary_lines(drift_rows):
        log(line)

    verification = {k: report[k] for k in ("images", "agreement", "mean_abs_dprob", "max_abs_dprob")}
    verification.update({k: report[k] for k in ("keras_accuracy", "tflite_accuracy") if k in report})
    if agreement_gates:  # only a minimum that judged the model: the bin prints it beside "passed"
        verification["min_agreement"] = threshold
    # what the bin checks before running it: a --force'd model says so in its own manifest
    verification["verified"] = bool(passed)
    if not passed:
        verification["failed"] = failed_rules(report, threshold, gate, agreement_gates)
    if outcome is not None:
        verification["correct_routing_change"] = outcome["correct_routing"]["change"]
        verification["contamination_change"] = outcome["contamination"]["change"]
        verification["compartment_agreement"] = outcome["compartment_agreement"]
        verification["gate_verdict"] = outcome["verdict"]
    final = Manifest(labels=draft.labels, input=draft.input, preprocess=prep, output=draft.output,
                     source=source, verification=verification, version=model_version, decision=decision)
    if report_path:
        if choice is not None:
            report["decision"]["curve_png"] = plot_curve(choice, Path(report_path).with_suffix(".png")).name
        _atomic_write(Path(report_path), json.dumps(report, indent=1).encode())
    if not passed and not force:
        log("nothing written (the lines above say why; --force writes anyway)")
        return ConversionResult(False, output, report, final)
    content = embed_metadata(tflite, final.to_json())
    _check_final(content, runtime, quantize, final)  # the exact bytes written load and carry the manifest
    _atomic_write(output, content)
    log(f"wrote {output} ({len(content) / 1e6:.1f} MB, version {model_version})" + (
        "" if passed else " despite failed verification (--force): its manifest says verified: false, and bins "
                          "refuse it unless their config says model.allow_unverified = true"))
    return ConversionResult(True, output, report, final)


def default_version(when: datetime) -> int:
    """The conversion's UTC time as YYYYMMDDhhmmss: rises with every conversion, fits the manifest's 2**53."""
    return int(when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S"))


def choose_preprocess(src, given: PreprocessSpec | str | None, trained: dict | None, log) -> tuple:
    """The training transform and where it came from, said out loud: --preprocess, MODEL.train.json,
    the architecture the layers show, or (loudly) the seed's caffe default."""
    arch = src.architecture()
    if given is not None:
        name = given if isinstance(given, str) else "custom"
        how = "--preprocess"
    elif trained:
        given, name, how = trained["preprocess"], trained["preprocess"], f"{sidecar_path(src.path).name}"
    elif arch is not None:
        given = name = PRESET_OF[arch]
        how = f"the architecture: {src.path.name} is {arch} (no {sidecar_path(src.path).name})"
    else:
        given = name = "caffe"
        how = "the seed default"
        log(f"WARNING: no {sidecar_path(src.path).name} beside {src.path.name} and its layers do not show the "
            "architecture: using caffe (the seed's ResNet50 vgg16.preprocess_input). If this model was trained "
            "with another transform, give --preprocess (tf for EfficientNet-Lite): the wrong one converts "
            "fine and then classifies badly")
    if arch is not None and isinstance(given, str) and given != PRESET_OF[arch]:
        log(f"WARNING: preprocessing {given} from {how}, but the layers look like {arch}, trained with "
            f"{PRESET_OF[arch]}: check it")
    log(f"preprocessing: {name} (from {how})")
    return given, how


def failed_rules(report: dict, threshold: float, gate: str, agreement_gates: bool) -> list[str]:
    """Why the gate failed, one item per rule, for the manifest's `failed` list."""
    out = []
    if agreement_gates and report["agreement"] < threshold:
        out.append(f"agreement {100 * report['agreement']:.1f}% < {100 * threshold:.1f}%")
    outcome = report.get("bin_outcome")
    if gate == "outcome" and outcome is not None and not outcome["passed"]:
        out.append(f"bin outcome ({outcome['verdict']}): correct routing {points(100 * outcome['correct_routing']['change'])} pt, "
                   f"contamination {points(100 * outcome['contamination']['change'])} pt")
    return out or ["gate failed"]


def _float_ops(src, quantize: str, given: str, keep_float, per_channel: bool) -> str:
    """The ops computed in float from int8 weights: `auto` picks the projection convs of a model
    that has them (EfficientNet-Lite), nothing otherwise; `none`: plain int8."""
    if quantize != "int8" or given == "none" or (given == "auto" and (keep_float or not per_channel)):
        return ""
    if given != "auto":
        return given
    import re

    return PROJECTION_CONVS if any(re.search(PROJECTION_CONVS, n) for n in src.layer_names) else ""


def _drift(src, quant: bytes, calib) -> list[dict]:
    """Accumulated int8 error per op on a few calibration images (see convert/drift.py)."""
    float_model = convert_tflite(src, "float32")
    probe = _test_load(quant, "litert", "int8")
    spec = probe.input
    probe.close()
    xs = [calib[i:i + 1] for i in range(min(8, len(calib)))]
    if spec.dtype == "float32":
        qs = xs
    else:  # the calibration tensors are float: quantize them as the edge table would
        info = np.iinfo(spec.dtype)
        qs = [np.clip(np.round(x / spec.quant_scale) + spec.quant_zero_point, info.min, info.max).astype(spec.dtype)
              for x in xs]
    return drift(float_model, quant, xs, qs)


def _check_final(content: bytes, runtime: str, mode: str, manifest: Manifest) -> None:
    from ecosorter.edge.model.loader import read_manifest

    if read_manifest(content, "output") != manifest:
        raise ConversionError("internal error: the embedded manifest does not read back identically")
    _test_load(content, runtime, mode).close()


def _test_load(content: bytes, runtime: str, mode: str):
    try:
        return open_classifier(content, runtime, num_threads=os.cpu_count())
    except BackendError as e:
        hint = ""
        if runtime == "tflite-runtime" and mode == "dynamic":
            hint = " (tflite-runtime 2.14 cannot run TF >= 2.16 dynamic-range models: use int8 or float16)"
        raise ConversionError(f"the converted model does not load in the target runtime {runtime!r}: {e}{hint}") from None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, data)


__all__ = ["ConversionError", "ConversionResult", "ImageSetError", "convert"]
