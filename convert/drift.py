"""Where does int8 lose the model? Compare every tensor of the int8 model with its float twin.

Both models run on the same photos with all intermediate tensors kept (and without the XNNPACK
delegate, which fuses ops and hides their outputs). For each op of the int8 model, the relative
RMS error of its output against the float model's tensor of the same name is the error
*accumulated* up to that point; the op's `jump` is what it adds over its inputs' error. Ops
with the largest jumps are the ones worth keeping in float; a steady climb with no large jump
means the error compounds through the depth and no small set of float layers will fix it.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np


def _interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=content, num_threads=2, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _value(it, detail) -> np.ndarray | None:
    try:
        a = it.get_tensor(detail["index"])
    except ValueError:
        return None
    scale, zp = detail["quantization"]
    if a.dtype != np.float32:
        a = (a.astype(np.float32) - zp) * scale if scale else a.astype(np.float32)
    return a


def drift(float_model: bytes, quant_model: bytes, float_inputs: list[np.ndarray],
          quant_inputs: list[np.ndarray]) -> list[dict]:
    """Per op of the quantized model, in execution order: accumulated error and its jump."""
    f, q = _interpreter(float_model), _interpreter(quant_model)
    f_in, q_in = f.get_input_details()[0]["index"], q.get_input_details()[0]["index"]
    f_by_name = {d["name"]: d for d in f.get_tensor_details()}
    q_details = {d["index"]: d for d in q.get_tensor_details()}
    sums: dict[int, list[float]] = {}
    for xf, xq in zip(float_inputs, quant_inputs, strict=True):
        f.set_tensor(f_in, xf)
        f.invoke()
        q.set_tensor(q_in, xq)
        q.invoke()
        for idx, d in q_details.items():
            twin = f_by_name.get(d["name"])
            if twin is None:
                continue
            a, b = _value(q, d), _value(f, twin)
            if a is None or b is None or a.shape != b.shape or b.size < 2:
                continue
            err = float(np.sqrt(np.mean((a - b) ** 2)) / (np.sqrt(np.mean(b**2)) + 1e-12))
            sums.setdefault(idx, []).append(err)
    ops = q._get_ops_details()
    # only activations: weights share names across the two models but not their meaning
    activations = {t for op in ops for t in op["outputs"]}
    err = {k: float(np.mean(v)) for k, v in sums.items() if k in activations}
    rows = []
    for op in ops:
        outs = [t for t in op["outputs"] if t in err]
        if not outs or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        e_in = max([err[t] for t in op["inputs"] if t in err], default=0.0)
        e_out = max(err[t] for t in outs)
        rows.append({"op": op["op_name"], "tensor": q_details[outs[0]]["name"], "error": e_out, "jump": e_out - e_in,
                     "float": bool(np.dtype(q_details[outs[0]]["dtype"]) == np.float32)})
    return rows


def candidates(rows: list[dict]) -> list[dict]:
    """The ops that keeping in float could change (see `sources`), in execution order."""
    return [r for r in rows if not r.get("float") and r["op"] != "SOFTMAX"]


def keep_float_choice(rows: list[dict], n: int) -> list[dict]:
    """What `--keep-float N` keeps in float (convert/pipeline.py): the N candidates with the largest
    jump, largest first (ties in execution order). The advice names the same ranking."""
    return sorted(candidates(rows), key=lambda r: r["jump"], reverse=True)[:n]


NAMED_MAX = 8  # ops named in the advice and listed in the summary; beyond that "and K more"
SOURCE_SHARE = 0.25  # an op is named as a source only when it adds this share of the error at the output
MIN_ERROR = 0.02  # below this relative RMS at the last int8 op, int8 loses nothing worth an op in float


def diagnosis(rows: list[dict]) -> tuple[list[dict], str]:
    """(the ops named as where int8 loses the model, one sentence why or why none). Named: int8 ops
    that each add at least SOURCE_SHARE of the error at the last int8 op, when that error is at least
    MIN_ERROR. Never named: ops already computed in float (the float head: nothing to keep in float
    there), and SOFTMAX, whose error is in probabilities and its input's in logits (its "jump" is
    how softmax magnifies the logit error, not error it adds). The rows are measured on calibration
    photos, so a small error there means the loss is on photos unlike them."""
    cand = candidates(rows)
    if not cand:
        return [], "the drift analysis finds no int8 op to keep in float"
    final = cand[-1]["error"]
    if final < MIN_ERROR:
        return [], (f"int8 adds little error on the calibration photos ({100 * final:.1f}% at the last int8 op), "
                    "so no op is to blame: the loss is on photos unlike them; calibrate on photos like the bin's "
                    "(--calibration)")
    # a prefix of keep_float_choice's ranking: every op ranked above a named one adds more
    ranked = keep_float_choice(rows, len(cand))
    found = list(itertools.takewhile(lambda r: r["jump"] >= SOURCE_SHARE * final, ranked))
    if found:
        more = f" and {len(found) - NAMED_MAX} more" if len(found) > NAMED_MAX else ""
        which = f"the {len(found)} ops" if len(found) > 1 else "the op"
        return found, (f"--keep-float {len(found)} keeps in float {which} adding the most int8 error "
                       f"({', '.join(r['op'] for r in found[:NAMED_MAX])}{more}; each adds >= "
                       f"{100 * SOURCE_SHARE:.0f}% of the {100 * final:.0f}% error at the last int8 op)")
    big = max(r["jump"] for r in cand)
    return [], (f"no op stands out (none adds {100 * SOURCE_SHARE:.0f}% of the {100 * final:.0f}% error at the last "
                f"int8 op; the largest adds {100 * big:.1f}%): the error compounds through the depth, so keeping a "
                "few ops in float (--keep-float) is unlikely to help")


def sources(rows: list[dict]) -> list[dict]:
    """The ops named as where int8 loses the model (see `diagnosis`)."""
    return diagnosis(rows)[0]


def summary_lines(rows: list[dict], top: int = NAMED_MAX) -> list[str]:
    if not rows:
        return []
    n = len(rows)
    marks = [rows[min(n - 1, round(i * (n - 1) / 4))] for i in range(5)]
    lines = ["int8 error through the depth (relative RMS vs float, on calibration photos): " +
             " -> ".join(f"{100 * r['error']:.1f}%" for r in marks)]
    found, why = diagnosis(rows)
    if found:
        lines.append(f"ops adding the most error: {why}:")
        for r in found[:top]:
            lines.append(f"  +{100 * r['jump']:5.1f}%  {r['op']:<16} {r['tensor'][:80]}")
        if len(found) > top:
            lines.append(f"  ... and {len(found) - top} more ({', '.join(r['op'] for r in found[top:])})")
    else:
        lines.append(why)
    return lines
