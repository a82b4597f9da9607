"""ecosorter-convert MODEL -o OUT.tflite --quantize MODE ...   |   ecosorter-convert inspect MODEL.tflite"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ecosorter.edge.clikit import add_version, quiet_pipe
from ecosorter.edge.errors import EcoSorterError

EPILOG = """examples:
  ecosorter-convert model.h5 -o model_int8.tflite --quantize int8 --calibration data/ --report report.json
  ecosorter-convert inspect model_int8.tflite
  ecosorter-convert thresholds model_int8.tflite --validation held_out/ --contamination 0.02 -o model_t.tflite"""


def build_parser() -> argparse.ArgumentParser:
    from ecosorter.convert.quantize import IO_DTYPES, MODES
    from ecosorter.convert.thresholds import FAMILIES as THRESHOLD_FAMILIES
    from ecosorter.convert.thresholds import METHODS
    from ecosorter.edge.preprocess.spec import PRESETS

    ap = argparse.ArgumentParser(prog="ecosorter-convert", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="Convert a Keras image classifier (.h5, .keras, SavedModel) "
                                             "to a verified, self-describing TFLite model.")
    ap.add_argument("model", type=Path, help="Keras .h5 / .keras file or SavedModel folder")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the .tflite to write")
    ap.add_argument("--quantize", choices=MODES, default="int8", help="the mode (default int8: full integer)")
    ap.add_argument("--calibration", type=Path, help="images for int8 calibration (class subfolders or flat)")
    ap.add_argument("--calibration-size", type=int, default=200, help="images sampled per class share (default 200)")
    ap.add_argument("--validation", type=Path, help="labelled images (class subfolders) to verify on; "
                                                    "default: calibration images not sampled")
    ap.add_argument("--validation-size", type=int, default=300, help="photos verified on (default 300)")
    ap.add_argument("--labels", type=Path, help="one label per line (id or id,Display name), in output order")
    ap.add_argument("--preprocess", choices=list(PRESETS), default=None,
                    help="the training transform (default: MODEL.train.json's from ecosorter-train, "
                         "else caffe: the seed's vgg16.preprocess_input)")
    ap.add_argument("--io-dtype", choices=IO_DTYPES, default="int8", help="int8 model input type (and output type with --int8-head int8; the default float head outputs float32)")
    ap.add_argument("--keep-float", default="0", metavar="N|NAMES",
                    help="int8 only: keep in float the N ops that add the most int8 error (the drift "
                         "analysis ranks them and its advice names them), or a comma list of tensor names")
    ap.add_argument("--float-ops", default="none", metavar="none|auto|REGEX",
                    help="int8: convs (output names matching REGEX) computed in float from int8 weights; auto: "
                         "the projection convs of EfficientNet-Lite models (where the int8 error starts), "
                         "closer to float at ~1.6x int8's latency; none (default): plain int8 "
                         "(docs/int8_study.md)")
    ap.add_argument("--int8-head", choices=["float", "int8"], default="float",
                    help="int8: the classifier head (last dense + softmax) computed in float (default), so the "
                         "probabilities are continuous float32 for the decision thresholds, not steps of "
                         "1/256; int8: the whole model int8 (int8 output)")
    ap.add_argument("--per-tensor", action="store_true",
                    help="int8: one scale per weight tensor instead of per output channel (for comparison)")
    ap.add_argument("--runtime", choices=["litert", "tflite-runtime", "tensorflow"], default="litert",
                    help="runtime the bins use; the output must load in it (default litert)")
    ap.add_argument("--min-agreement", type=float,
                    help="also gate on top-1 agreement (reported, not a gate, unless given; the agreement gate's "
                         "default is 0.98 for int8, 0.995 otherwise)")
    ap.add_argument("--gate", choices=["outcome", "agreement"], default="outcome",
                    help="outcome (default): on labelled photos the model must keep what the bin does: "
                         "correct routing within --max-routing-loss, contamination within "
                         "--max-contamination-gain, judged on 95%% bounds; agreement: top-1 agreement only")
    ap.add_argument("--contamination", type=float, metavar="SHARE",
                    help="choose calibrated thresholds on the labelled --validation photos so that at "
                         "most this share of items lands confidently in a wrong compartment (e.g. 0.02), and "
                         "write them into the model (docs/training.md)")
    ap.add_argument("--guarantee", choices=METHODS, default="crc",
                    help="for --contamination: crc, expected contamination <= budget (default); ltt, "
                         "contamination <= budget with 95% probability")
    ap.add_argument("--threshold-family", choices=THRESHOLD_FAMILIES, default="auto",
                    help="for --contamination: " + "auto (default): a class gets its own threshold only with enough validation photos for the budget (>= 5/budget it takes), the rest share one; per-class; global: one threshold for all")
    ap.add_argument("--bin-config", type=Path, help="the bin's config.toml: its threshold, class thresholds, "
                                                    "fallback and compartments judge the outcome")
    ap.add_argument("--threshold", type=float, help="decision threshold (default 0.55, or the bin config's)")
    ap.add_argument("--fallback", help="label taking uncertain items (default khusus, or the bin config's)")
    ap.add_argument("--max-routing-loss", type=float, default=1.0, metavar="POINTS",
                    help="correct-routing may drop by at most this many points (default 1.0)")
    ap.add_argument("--max-contamination-gain", type=float, default=0.5, metavar="POINTS",
                    help="confident-but-wrong items may rise by at most this many points (default 0.5)")
    ap.add_argument("--report", type=Path, help="write the verification report as JSON")
    ap.add_argument("--force", action="store_true", help="write the model even if verification fails; its manifest "
                                                         "says verified: false and bins refuse it unless "
                                                         "model.allow_unverified = true")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed for calibration and validation (default 0)")
    add_version(ap)
    ap.add_argument("--model-version", type=int, default=None, metavar="N",
                    help="monotonic version in the manifest: bins refuse a lower one than they run (default: the "
                         "conversion's UTC time, YYYYMMDDhhmmss, so each conversion is newer than the last)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def inspect(path: Path) -> int:
    from ecosorter.edge.model import load_model

    with load_model(path) as m:
        c = m.classifier
        print(json.dumps(m.manifest.to_dict(), indent=1))
        print(f"\nfile     {path} ({m.size_bytes / 1e6:.2f} MB, sha256 {m.sha256[:16]}...)")
        print(f"runtime  {c.runtime} {c.version}")
        i = c.input
        print(f"input    1x{i.height}x{i.width}x3 {i.dtype} scale={i.quant_scale:g} zero_point={i.quant_zero_point}")
        print(f"output   {c.output_size} {getattr(c, 'output_dtype', '?')}")
    return 0


def bin_rules(args):
    """The bin's decision rules for the outcome gate: its config file, then the flags on top."""
    from ecosorter.convert.verify import BinRules

    rules: dict = {}
    if args.bin_config is not None:
        from ecosorter.edge.config import load_config

        cfg = load_config(args.bin_config)
        rules = {"threshold": cfg.decision.threshold, "fallback": cfg.decision.fallback,
                 "class_thresholds": dict(cfg.decision.class_thresholds),
                 "compartments": dict(cfg.hardware.compartments), "decision_config": cfg.decision}
    if args.threshold is not None:
        if not 0 <= args.threshold <= 1:
            raise EcoSorterError(f"--threshold {args.threshold}: must be between 0 and 1")
        rules["threshold"] = args.threshold
    if args.fallback is not None:
        rules["fallback"] = args.fallback or None
    if not rules and args.max_routing_loss == 1.0 and args.max_contamination_gain == 0.5:
        return None  # the converter's defaults (fallback khusus only when the model has it)
    return BinRules(**rules, max_routing_loss=args.max_routing_loss / 100,
                    max_contamination_gain=args.max_contamination_gain / 100)


@quiet_pipe
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["thresholds"]:
            from ecosorter.convert.decision import thresholds_main

            return thresholds_main(argv[1:])
        if argv[:1] == ["inspect"]:
            if len(argv) != 2:
                print("usage: ecosorter-convert inspect MODEL.tflite", file=sys.stderr)
                return 2
            return inspect(Path(argv[1]))
        args = build_parser().parse_args(argv)
        from ecosorter.convert.pipeline import convert
        from ecosorter.edge.model.manifest import load_labels_file

        labels = load_labels_file(args.labels)
        keep = args.keep_float
        keep_float: int | list[str] = int(keep) if keep.isdigit() else [k for k in keep.split(",") if k]
        result = convert(args.model, args.output, args.quantize, calibration=args.calibration,
                         calibration_size=args.calibration_size, validation=args.validation,
                         validation_size=args.validation_size, labels=labels, preprocess=args.preprocess,
                         io_dtype=args.io_dtype, min_agreement=args.min_agreement, force=args.force,
                         runtime=args.runtime, keep_float=keep_float, report_path=args.report,
                         seed=args.seed, progress=not args.quiet, model_version=args.model_version,
                         gate=args.gate, bin_rules=bin_rules(args), per_channel=not args.per_tensor,
                         contamination=args.contamination, guarantee=args.guarantee,
                         threshold_family=args.threshold_family,
                         float_ops=args.float_ops, float_head=args.int8_head == "float")
        return 0 if result.written and result.report["passed"] else 1
    except EcoSorterError as e:
        print(f"ecosorter-convert: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
