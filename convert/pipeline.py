"""convert(): load -> calibrate -> convert -> embed manifest -> test-load -> verify -> gate -> write."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecosorter.convert.drift import drift, summary_lines
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
    convert_mixed,
    convert_selective,
    convert_tflite,
)
from ecosorter.convert.source_model import load_source_model
from ecosorter.convert.train import read_sidecar, sidecar_path
from ecosorter.convert.verify import BinRules, format_outcome, format_table, verify
from ecosorter.edge.backends import open_classifier
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
            seed: int = 0, progress: bool = True, log=print, model_version: int = 0, gate: str = "outcome",
            bin_rules: BinRules | None = None, per_channel: bool = True,
            float_ops: str = "none") -> ConversionResult:
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
    if preprocess is None:
        preprocess = trained["preprocess"] if trained else "caffe"
    if labels is None and trained:
        names = {lb.id: lb.name for lb in DEFAULT_LABELS}
        labels = [Label(i, names.get(i, i)) for i in trained["labels"]]
        log(f"labels and preprocessing ({preprocess}) from {sidecar_path(model).name}")
    prep = preset(preprocess) if isinstance(preprocess, str) else preprocess
    src = load_source_model(model)
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
            worst = sorted(drift_rows, key=lambda r: r["jump"], reverse=True)[:keep_float]
            kept_float = [r["tensor"] for r in worst]
            log(f"keeping the {keep_float} ops that add the most int8 error in float: " +
                ", ".join(f"{r['tensor'][:40]} (+{100 * r['jump']:.0f}%)" for r in worst))
        else:
            kept_float = list(keep_float)
        tflite = convert_selective(src, calib, kept_float, bar)
    else:
        tflite = convert_tflite(src, quantize, calib, io_dtype, bar, per_channel)

    source = {"file": src.path.name, "format": src.kind, "sha256": src.sha256, **src.versions,
              "quantization": quantize, "calibration_images": 0 if calib is None else int(len(calib)),
              "float_layers": kept_float, **({} if per_channel else {"per_channel": False}),
              **({"float_compute_ops": mixed} if mixed else {})}
    classifier = _test_load(tflite, runtime, quantize)  # the runtime the bins use must load it
    log(f"loads in {classifier.runtime} {classifier.version}: input {classifier.input.dtype}, "
        f"{len(tflite) / 1e6:.1f} MB")
    draft = Manifest(labels=tuple(labels), input=classifier.input, preprocess=prep,
                     output={"activation": "softmax"}, source=source)

    if bin_rules is None:  # the bin's defaults (decision.threshold 0.55, fallback khusus when it is a label)
        bin_rules = BinRules(fallback="khusus" if "khusus" in label_ids else None)
    report = verify(src, classifier, prep, label_ids, verify_images, progress, rules=bin_rules)
    classifier.close()
    sizes = {"source": _size(src.path), "tflite": len(tflite)}
    threshold = _min_agreement(quantize, min_agreement)
    report.update({"mode": quantize, "min_agreement": threshold, "file_size_bytes": sizes,
                   "runtime": {"name": runtime}, "float_layers": kept_float})
    log(format_table(report, sizes))
    passed = report["agreement"] >= threshold
    outcome = report.get("bin_outcome")
    if outcome is not None:
        log(format_outcome(outcome))
    if gate == "outcome" and outcome is not None and not outcome["passed"]:
        passed = False
        log(f"FAILED: the int8/float change in what the bin does is outside the gate (correct routing "
            f"{100 * outcome['correct_routing']['change']:+.1f} pt, contamination "
            f"{100 * outcome['contamination']['change']:+.1f} pt)")
    report["gate"] = gate if outcome is not None else "agreement"
    report["passed"] = passed
    if quantize == "int8" and (not passed or drift_rows):
        # Say where int8 loses the model, so the user can keep those ops in float (--keep-float).
        drift_rows = drift_rows or _drift(src, tflite, calib)
        report["int8_drift"] = drift_rows
        for line in summary_lines(drift_rows):
            log(line)

    verification = {k: report[k] for k in ("images", "agreement", "mean_abs_dprob", "max_abs_dprob")}
    verification.update({k: report[k] for k in ("keras_accuracy", "tflite_accuracy") if k in report})
    verification["min_agreement"] = threshold
    if outcome is not None:
        verification["correct_routing_change"] = outcome["correct_routing"]["change"]
        verification["contamination_change"] = outcome["contamination"]["change"]
        verification["compartment_agreement"] = outcome["compartment_agreement"]
    final = Manifest(labels=draft.labels, input=draft.input, preprocess=prep, output=draft.output,
                     source=source, verification=verification, version=model_version)
    if report_path:
        _atomic_write(Path(report_path), json.dumps(report, indent=1).encode())
    if not passed and not force:
        log(f"FAILED: agreement {100 * report['agreement']:.1f}% is below --min-agreement "
            f"{100 * threshold:.1f}%; nothing written (use --force to write anyway)")
        return ConversionResult(False, output, report, final)
    content = embed_metadata(tflite, final.to_json())
    _check_final(content, runtime, quantize, final)  # the exact bytes written load and carry the manifest
    _atomic_write(output, content)
    log(f"wrote {output} ({len(content) / 1e6:.1f} MB)" + ("" if passed else " despite failed verification (--force)"))
    return ConversionResult(True, output, report, final)


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["ConversionError", "ConversionResult", "ImageSetError", "convert"]
