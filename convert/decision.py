"""Write a decision rule (convert/thresholds.py) into a model: during conversion, or into an
already-converted .tflite:

    ecosorter-convert thresholds MODEL.tflite --validation DIR --contamination 0.02 -o OUT.tflite

The photos go through the edge's own preprocessing and runtime, so the thresholds are chosen on the
probabilities the bin will see."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ecosorter.convert import thresholds as th
from ecosorter.convert.images import LabelledImage, list_images, progress_bar
from ecosorter.edge.errors import EcoSorterError, ImageError
from ecosorter.edge.model.manifest import Manifest
from ecosorter.edge.preprocess import Preprocessor, decode_image


def edge_probs(classifier, manifest: Manifest, images: list[LabelledImage],
               progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities, true label index, skipped) for labelled images, as the bin computes them."""
    prep = Preprocessor(manifest.preprocess, classifier.input)
    probs, truth, skipped = [], [], []
    for im in progress_bar([i for i in images if i.label is not None], "thresholds", progress):
        try:
            pixels = decode_image(im.path)
        except ImageError as e:
            skipped.append(str(e))
            continue
        probs.append(np.asarray(classifier.classify(prep(pixels, "rgb")), np.float64))
        truth.append(im.label)
    if not probs:
        raise EcoSorterError("thresholds need labelled photos (class subfolders named after the labels)")
    return np.stack(probs), np.array(truth), skipped


def choose_block(probs: np.ndarray, truth: np.ndarray, label_ids: list[str], budget: float, *,
                 method: str = "crc", fallback: str | None = "khusus",
                 compartments: dict[str, int] | None = None, seed: int = 0, family: str = "auto",
                 fit: tuple[np.ndarray, np.ndarray] | None = None,
                 log=print) -> tuple[dict[str, Any], th.Choice]:
    try:
        block, choice = th.decision_block(probs, truth, label_ids, budget, method=method, fallback=fallback,
                                          compartments=compartments, seed=seed, family=family, fit=fit)
    except th.ThresholdError as e:
        raise EcoSorterError(f"--contamination: {e}") from None
    log(th.format_choice(choice))
    return block, choice


def write_report(path: Path, choice: th.Choice, extra: dict[str, Any] | None = None) -> Path:
    """JSON report plus the capture-vs-contamination PNG beside it (same name, .png)."""
    body = {**(extra or {}), "decision": th.report(choice)}
    png = th.plot_curve(choice, path.with_suffix(".png"))
    body["decision"]["curve_png"] = png.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1))
    return png


def shared_photos(fit: list[LabelledImage], certify: list[LabelledImage], fit_dir: Path | None,
                  certify_dir: Path) -> None:
    """Refuse --fit-on photos that are also --validation photos (the same file, or the same bytes
    under another name): a photo that shaped the thresholds' family cannot also certify it, or the
    guarantee is void without a word."""
    if not fit:
        return

    def key(im: LabelledImage) -> str:
        try:
            return hashlib.sha256(im.path.read_bytes()).hexdigest()
        except OSError:  # unreadable: edge_probs skips it and says so; it certifies nothing
            return f"unreadable:{im.path}"
    seen = {key(im): im.path for im in fit if im.label is not None}  # unlabelled photos take no part
    both = [(seen[k], im.path) for im in certify if im.label is not None and (k := key(im)) in seen]
    if both:
        shown = "; ".join(f"{a} = {b}" for a, b in both[:3]) + (f" (and {len(both) - 3} more)" if len(both) > 3 else "")
        raise EcoSorterError(f"--fit-on {fit_dir} and --validation {certify_dir} share {len(both)} photo(s): {shown}. "
                             "Photos that shape the thresholds cannot certify them: give --validation photos "
                             "that are not in --fit-on")


def thresholds_main(argv: list[str]) -> int:
    """ecosorter-convert thresholds MODEL.tflite --validation DIR --contamination X -o OUT.tflite"""
    from ecosorter.convert.embed import embed_metadata
    from ecosorter.convert.pipeline import _atomic_write, _check_final
    from ecosorter.edge.model import load_model

    ap = argparse.ArgumentParser(prog="ecosorter-convert thresholds",
                                 description="Choose calibrated thresholds for a contamination budget "
                                             "on labelled photos and write them into a converted model.")
    ap.add_argument("model", type=Path, help="a .tflite made by ecosorter-convert")
    ap.add_argument("--validation", type=Path, required=True, help="labelled photos (class subfolders) the "
                                                                    "model never trained on")
    ap.add_argument("--contamination", type=float, required=True, metavar="SHARE",
                    help="budget: share of items confidently in a wrong compartment, e.g. 0.02")
    ap.add_argument("--guarantee", choices=th.METHODS, default="crc",
                    help="crc: expected contamination <= budget (default); ltt: contamination <= budget with "
                         "95%% probability (needs more photos)")
    ap.add_argument("--threshold-family", choices=th.FAMILIES, default="auto",
                    help="auto (default): a class gets its own threshold only with enough validation photos for the budget (>= 5/budget it takes), the rest share one; per-class; global: one threshold for all")
    ap.add_argument("--fit-on", type=Path, metavar="DIR",
                    help="labelled photos that shape the temperature and the thresholds' family, so that every "
                         "--validation photo certifies: use it for photos that chose the model (the validation "
                         "split that picked one training run of several is optimistic about it), and give "
                         "--validation photos that chose nothing")
    ap.add_argument("--fallback", default="khusus", help="label taking uncertain items (default khusus)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--report", type=Path, help="JSON report; the curve is written beside it as .png")
    ap.add_argument("--seed", type=int, default=0, help="the fit/certify split")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    with load_model(args.model) as m:
        label_ids = m.manifest.label_ids
        certify = list_images(args.validation, label_ids)
        shaping = list_images(args.fit_on, label_ids) if args.fit_on is not None else []
        shared_photos(shaping, certify, args.fit_on, args.validation)
        probs, truth, skipped = edge_probs(m.classifier, m.manifest, certify, not args.quiet)
        fit = None
        if args.fit_on is not None:
            fit_probs, fit_truth, fit_skipped = edge_probs(m.classifier, m.manifest, shaping, not args.quiet)
            fit, skipped = (fit_probs, fit_truth), skipped + fit_skipped
        manifest, runtime = m.manifest, m.classifier.runtime
    for s in skipped:
        print(f"skipped unreadable photo: {s}")
    block, choice = choose_block(probs, truth, label_ids, args.contamination, method=args.guarantee,
                                 fallback=args.fallback or None, seed=args.seed, family=args.threshold_family,
                                 fit=fit)
    if args.report:
        png = write_report(args.report, choice, {"model": str(args.model), "validation": str(args.validation),
                                                **({"fit_on": str(args.fit_on)} if args.fit_on else {})})
        print(f"report {args.report}, curve {png}")
    if not choice.feasible:
        if choice.fit_apart:
            print(f"FAILED: decision rule: a {100 * args.contamination:g}% budget cannot be certified with "
                  f"{choice.n_certify} certify photos (--validation); nothing written. Next: give at least "
                  f"{choice.photos_needed} labelled photos in --validation, or a larger --contamination")
        else:
            apart = th.photos_needed(choice.budget, choice.method, choice.delta, 0.0)
            print(f"FAILED: decision rule: a {100 * args.contamination:g}% budget cannot be certified with "
                  f"{choice.n} photos; nothing written. Next: give at least {choice.photos_needed} labelled photos "
                  f"(or {apart} in --validation with other labelled photos to shape the rule: --fit-on DIR), "
                  "or a larger --contamination")
        return 1
    final = dataclasses.replace(manifest, decision=block)
    content = embed_metadata(args.model.read_bytes(), final.to_json())
    _check_final(content, "litert" if runtime != "tensorflow" else "tensorflow", "int8", final)
    _atomic_write(args.output, content)
    others = ", ".join(f"{100 * e['budget']:g}%" for e in block["ladder"])
    print(f"wrote {args.output} with thresholds for a {100 * args.contamination:g}% budget "
          f"(and {others} for decision.contamination_budget)")
    return 0
