"""Choose the bin's decision rule on labelled photos: temperature + per-class thresholds that keep
contamination within a budget with a finite-sample guarantee, routing as many items right as that
allows. numpy only (the plot imports matplotlib when asked), so it is tested in milliseconds.

Definitions, used everywhere (docs/training.md "The decision rule"):
- an item is *confident* when its top calibrated probability reaches its top class's threshold;
  it is then routed to that class's compartment, otherwise to the fallback's (uncertain);
- *contamination*: confident and routed to a compartment that is not its own (the recycler's cost);
- *fallback*: uncertain (routed to the fallback's compartment); *fallback wrong*: uncertain and not
  of the fallback's compartment: counted apart, never as contamination;
- *routed right*: ends in its own compartment (a true `khusus` item that is uncertain counts).

Method (split conformal): the photos are split, stratified by class, into a *fit* part and a
*certify* part. On the fit part: the temperature (NLL) and a one-parameter family of per-class
thresholds t_c(lam) (lam = the wrong-share allowed among the fit items a class takes confidently; a
larger lam lowers every threshold, so contamination can only grow with lam). Which classes shape
their own thresholds is the *family* (`auto` by default): a class does only when the fit part
gives it at least MIN_ERRORS / budget items (enough to see a handful of errors at the budget's
rate); the others share one pooled threshold. With the few hundred photos a pilot has, that is one
global threshold, which routed more items right than per-class thresholds at the same
contamination in every measurement here (docs/training.md). On the certify part,
lam is chosen along that family, which the certify photos never shaped:
- `crc` (default), conformal risk control (Angelopoulos et al. 2022): the largest lam with
  n/(n+1) * R(lam) + 1/(n+1) <= budget. Guarantee: E[contamination of the next item] <= budget,
  over draws of the certify photos, if the bin's items are exchangeable with them.
- `ltt`, Learn-then-Test with fixed-sequence testing and exact binomial (Clopper-Pearson) tests:
  the largest lam such that every lam' <= lam has a one-sided (1 - delta) upper bound <= budget.
  Guarantee: with probability >= 1 - delta over the certify photos, the true contamination <= budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecosorter.edge.decide.thresholds import NEVER, calibrate, confident

METHODS = ("crc", "ltt")
FAMILIES = ("auto", "per-class", "global")
MIN_ERRORS = 5  # auto: a class shapes its own thresholds with >= MIN_ERRORS / budget fit items
LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1)  # budgets also stored, for decision.contamination_budget
FIT_FRACTION = 0.3
ADVICE_MAX_PHOTOS = 5_000  # a photo count above this is no advice: at these rates more photos do not decide


class ThresholdError(ValueError):
    pass


def upper_binomial(k: int, m: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p, having seen k of m."""
    if m == 0 or k >= m:
        return 1.0
    lo, hi = k / m, 1.0
    for _ in range(60):  # P(X <= k | m, p) falls as p rises: bisect for the p where it is alpha
        mid = (lo + hi) / 2
        tail = _binom_cdf(k, m, mid)
        lo, hi = (mid, hi) if tail > alpha else (lo, mid)
    return hi


def lower_binomial(k: int, m: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p, having seen k of m."""
    if m == 0 or k == 0:
        return 0.0
    return 1.0 - upper_binomial(m - k, m, alpha)


def _binom_cdf(k: int, m: int, p: float) -> float:
    # in log space: math.comb(m, i) * p**i overflows floats past m ~ 1000
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < m else 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lp + (m - i) * lq
             for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


# --- the bin's outcome under a rule --------------------------------------------------------------

def compartment_index(label_ids: Sequence[str], compartments: dict[str, int] | None) -> np.ndarray:
    comp = compartments or {lb: i for i, lb in enumerate(label_ids)}
    return np.array([comp[lb] for lb in label_ids])


def outcome(probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray, comp: np.ndarray,
            fallback: int | None) -> dict[str, Any]:
    """Shares of items (calibrated `probs`, true class indices) under per-class `thresholds`."""
    best = probs.argmax(1)
    sure = confident(probs[np.arange(len(probs)), best], thresholds[best])  # a threshold of 1: never
    want = comp[truth]
    fb = -1 if fallback is None else comp[fallback]
    routed = np.where(sure, comp[best], fb)
    n = len(truth)
    bad = sure & (routed != want)
    return {"n": n, "routed_right": float((routed == want).mean()), "contamination": float(bad.mean()),
            "contaminating": int(bad.sum()), "fallback": float((~sure).mean()),
            "fallback_wrong": float((~sure & (want != fb)).mean()), "confident": sure,
            "bad": bad, "routed": routed}


# --- calibration --------------------------------------------------------------------------------

def nll(probs: np.ndarray, truth: np.ndarray, temperature: float) -> float:
    p = calibrate(probs, temperature)[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(p, 1e-12, 1)).mean())


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (golden-section search on log T)."""
    a, b = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(60):
        if nll(probs, truth, math.exp(c)) < nll(probs, truth, math.exp(d)):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return round(math.exp((a + b) / 2), 4)


def ece(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the top probability (equal-width bins)."""
    conf, right = probs.max(1), probs.argmax(1) == truth
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[idx == b].mean() - right[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


# --- the family of thresholds, shaped on the fit part ---------------------------------------------

LAMBDAS = np.unique(np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 120)]))


def own_classes(probs: np.ndarray, family: str, budget: float) -> np.ndarray:
    """Which classes shape their own thresholds on these fit `probs` (the others share the pooled one)."""
    if family not in FAMILIES:
        raise ThresholdError(f"threshold family {family!r}; allowed: {', '.join(FAMILIES)}")
    k = probs.shape[1]
    if family != "auto":
        return np.full(k, family == "per-class")
    # A per-class rate shaped on m items moves in steps of 1/m: below ~MIN_ERRORS / budget items it
    # is set by one or two errors, and the certify part then pays for that noise in routing.
    taken = np.bincount(probs.argmax(1), minlength=k) if len(probs) else np.zeros(k, int)
    return taken >= math.ceil(MIN_ERRORS / budget)


def family_name(own: np.ndarray, label_ids: Sequence[str]) -> str:
    if own.all():
        return "per-class"
    if not own.any():
        return "global"
    return "per-class for " + ", ".join(lb for lb, o in zip(label_ids, own, strict=True) if o) + "; global for the rest"


def threshold_family(probs: np.ndarray, truth: np.ndarray, comp: np.ndarray,
                     per_class: bool | np.ndarray = True) -> np.ndarray:
    """(len(LAMBDAS) + 1, classes) thresholds; row 0 is "never confident", then t_c(lam) for each lam.

    t_c(lam): the lowest threshold at which, among the fit items whose top class is c and that reach
    it, the share in a wrong compartment is <= lam. Classes not in `per_class` (a bool for all, or
    one per class), and classes no fit item takes, use the pooled rule over all fit items.
    Every threshold only falls as lam grows (the sets it is the minimum of only grow); the rows
    between two lams are filled in linearly."""
    k = probs.shape[1]
    best, conf = probs.argmax(1), probs.max(1)
    wrong = comp[best] != comp[truth]

    def lowest(scores: np.ndarray, bad: np.ndarray) -> np.ndarray:
        order = np.argsort(-scores, kind="stable")
        s, w = scores[order], bad[order]
        rate = np.cumsum(w) / np.arange(1, len(s) + 1)
        # tied scores (int8 outputs saturate at 255/256) pass or fail together: a threshold can
        # only stop at the end of a tie, so the rate counts only there
        rate[:-1][s[1:] == s[:-1]] = np.inf
        # the threshold sits halfway to the next lower score, so no photo lies exactly on it (a
        # float/int8 difference of 1e-4 would otherwise decide that photo's side)
        below = np.append(s[1:], max(0.0, s[-1] - 1e-3)) if len(s) else s
        mid = (s + below) / 2
        out = np.full(len(LAMBDAS), NEVER)
        for i, lam in enumerate(LAMBDAS):
            ok = np.flatnonzero(rate <= lam + 1e-12)
            if len(ok):
                out[i] = mid[ok[-1]]
        return out

    own = np.broadcast_to(np.asarray(per_class, bool), (k,))
    pooled = lowest(conf, wrong) if len(conf) else np.full(len(LAMBDAS), NEVER)
    fam = np.empty((len(LAMBDAS), k))
    for c in range(k):
        mine = best == c
        fam[:, c] = lowest(conf[mine], wrong[mine]) if mine.any() and own[c] else pooled
    fam = np.vstack([np.full((1, k), NEVER), fam])
    fam = fam[np.r_[True, (np.diff(fam, axis=0) != 0).any(axis=1)]]  # drop repeated rows, keep the order
    # The steps between shaped rows can be large (a whole class's confident items at once): fill
    # them in, evenly in log(1 - t) where calibrated probabilities crowd near 1, so the certify
    # part can stop anywhere along the way.
    g = np.log1p(-np.minimum(fam, 1 - 1e-9))
    steps = [g[:1]]
    for i, (a, b) in enumerate(zip(g[:-1], g[1:], strict=True)):
        w = np.linspace(0, 1, (8 if i == 0 else 1) * INTERPOLATE + 1)[1:, None]
        steps.append(a + w * (b - a))
    out = -np.expm1(np.vstack(steps))
    out[0] = NEVER
    return out


INTERPOLATE = 24


# --- choosing on the certify part ------------------------------------------------------------------

def certify_bound(k: int, n: int, method: str, delta: float) -> float:
    """What the certify photos promise for a rule with k of n contaminating: crc's
    n/(n+1) * k/n + 1/(n+1) = (k+1)/(n+1), or ltt's Clopper-Pearson upper bound at delta."""
    return (k + 1) / (n + 1) if method == "crc" else upper_binomial(k, n, delta)


DECIMALS = 4  # a threshold's places in the manifest


def written_threshold(t: float) -> float:
    """A threshold as the manifest stores it: rounded *up* to DECIMALS places. Rounding to the nearest
    could lower it by 0.00005 and let through items the certify photos were not confident on (2 of 200
    synthetic draws then broke the budget on their own certify photos)."""
    return min(NEVER, math.ceil(t * 10 ** DECIMALS - 1e-9) / 10 ** DECIMALS)  # 1e-9: float fuzz on an exact one


@dataclass
class Choice:
    budget: float
    method: str
    delta: float
    temperature: float
    thresholds: dict[str, float]
    feasible: bool  # False: even "everything uncertain" cannot be certified with this many photos
    n: int
    n_fit: int
    n_certify: int
    bound: float  # crc: n/(n+1) R + 1/(n+1); ltt: the Clopper-Pearson upper bound at the chosen point
    certify: dict[str, float]  # routed right, contamination, fallback, fallback wrong on the certify part
    photos_needed: int  # labelled photos (fit + certify) for this budget to be certifiable at all
    curve: list[dict[str, float]] = field(default_factory=list)
    chosen_index: int = 0
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)
    family: str = "per-class"  # which classes shaped their own thresholds (see own_classes)
    fit_apart: bool = False  # fit photos given apart (--fit-on): every one of the n_certify certifies

    def too_few(self) -> str:
        """Why nothing can be certified, and how many photos would do it (only --validation's with --fit-on)."""
        give = (f"Give at least {self.photos_needed} labelled photos{' in --validation' if self.fit_apart else ''}, "
                "or a larger --contamination") if self.photos_needed <= ADVICE_MAX_PHOTOS else \
            f"It would take {self.photos_needed:,} labelled photos: choose a larger --contamination"
        if self.fit_apart:
            return (f"{self.n_certify} certify photos (--validation) are too few for a {100 * self.budget:g}% budget "
                    f"({self.method}); every item would be uncertain. {give}")
        return (f"{self.n} photos are too few for a {100 * self.budget:g}% budget ({self.method}); every item "
                f"would be uncertain. {give}")

    def guarantee(self) -> str:
        if self.method == "crc":
            return (f"conformal risk control: E[contamination] <= {self.budget:g} for items exchangeable with "
                    f"the {self.n_certify} certify photos")
        return (f"Learn-then-Test (fixed sequence, Clopper-Pearson): P(contamination <= {self.budget:g}) >= "
                f"{1 - self.delta:g} over the {self.n_certify} certify photos")

    def block(self) -> dict[str, Any]:
        """The manifest's `decision` entry for this budget."""
        return {"budget": self.budget, "method": self.method, "delta": self.delta, "family": self.family,
                "thresholds": {k: written_threshold(v) for k, v in self.thresholds.items()},
                "feasible": self.feasible, "n": self.n, "n_fit": self.n_fit, "n_certify": self.n_certify,
                "bound": round(self.bound, 5), "guarantee": self.guarantee(),
                **{k: round(v, 4) for k, v in self.certify.items()}}


def split(truth: np.ndarray, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fit/certify index split (the same photos and seed give the same split)."""
    rng = np.random.default_rng(seed)
    fit: list[int] = []
    for c in np.unique(truth):
        idx = np.flatnonzero(truth == c)
        rng.shuffle(idx)
        fit += idx[: int(round(fit_fraction * len(idx)))].tolist()
    mask = np.zeros(len(truth), bool)
    mask[fit] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def photos_needed(budget: float, method: str, delta: float, fit_fraction: float) -> int:
    """Fewest labelled photos with which `budget` can be certified at all (zero contamination seen)."""
    # crc: 1/(m+1) <= budget; ltt: (1 - budget)^m <= delta, the Clopper-Pearson bound on 0 of m
    m = math.ceil(1 / budget - 1) if method == "crc" else math.ceil(math.log(delta) / math.log1p(-budget))
    return math.ceil(m / (1 - fit_fraction))


def choose(probs: np.ndarray, truth: np.ndarray, label_ids: Sequence[str], budget: float, *,
           method: str = "crc", delta: float = 0.05, fallback: str | None = "khusus",
           compartments: dict[str, int] | None = None, fit_fraction: float = FIT_FRACTION,
           seed: int = 0, temperature: float | None = None, family: str = "auto",
           fit: tuple[np.ndarray, np.ndarray] | None = None) -> Choice:
    """Thresholds for `budget` from raw model probabilities on labelled photos (see the module doc).

    `fit` (probabilities, true labels): photos that shape the temperature and the family instead of a
    share of these, which then all certify. For photos that chose the model (a validation split that
    picked one run of several): they are optimistic about it, so they may shape but not certify."""
    if method not in METHODS:
        raise ThresholdError(f"method {method!r}; allowed: {', '.join(METHODS)}")
    if family not in FAMILIES:
        raise ThresholdError(f"threshold family {family!r}; allowed: {', '.join(FAMILIES)}")
    if not 0 < budget < 1:
        raise ThresholdError(f"contamination budget {budget!r} must be between 0 and 1 (e.g. 0.02)")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ThresholdError(f"temperature {temperature!r} must be a positive number")
    if not 0 < fit_fraction < 1:
        raise ThresholdError(f"fit fraction {fit_fraction!r} must be between 0 and 1")
    probs, truth = np.asarray(probs, np.float64), np.asarray(truth, int)
    for name, t_ in (("true labels", truth), ("fit true labels", None if fit is None else np.asarray(fit[1], int))):
        if t_ is not None and t_.size and (t_.min() < 0 or t_.max() >= len(label_ids)):
            raise ThresholdError(f"{name} must be class indices 0..{len(label_ids) - 1}, got {int(t_.min())}..{int(t_.max())}")
    if probs.ndim != 2 or probs.shape[1] != len(label_ids) or len(truth) != len(probs):
        raise ThresholdError(f"probabilities {probs.shape} do not match {len(label_ids)} labels and "
                             f"{len(truth)} true labels")
    if fallback is not None and fallback not in label_ids:
        raise ThresholdError(f"fallback {fallback!r} is not a label ({', '.join(label_ids)})")
    comp = compartment_index(label_ids, compartments)
    fb = None if fallback is None else list(label_ids).index(fallback)
    if fit is None:
        fit_idx, cert = split(truth, fit_fraction, seed)
    else:
        fp, ft = np.asarray(fit[0], np.float64), np.asarray(fit[1], int)
        if fp.ndim != 2 or fp.shape[1] != len(label_ids) or len(ft) != len(fp):
            raise ThresholdError(f"fit probabilities {fp.shape} do not match {len(label_ids)} labels and "
                                 f"{len(ft)} true labels")
        probs, truth = np.vstack([fp, probs]), np.concatenate([ft, truth])
        fit_idx, cert = np.arange(len(ft)), np.arange(len(ft), len(truth))
    if fit is not None and len(fit_idx) < len(label_ids):  # the total would not be the photos at fault
        raise ThresholdError(f"the fit photos (--fit-on) are {len(fit_idx)}, fewer than the {len(label_ids)} labels: "
                             "they cannot shape a temperature and thresholds; give more, or leave --fit-on out")
    if len(fit_idx) < len(label_ids) or len(cert) < 2:
        need = photos_needed(budget, method, delta, fit_fraction)
        raise ThresholdError(f"{len(truth)} labelled photos are too few to choose thresholds; " + (
            f"give at least {need}" if need <= ADVICE_MAX_PHOTOS else
            f"a {budget:g} budget would need {need:,}: choose a larger budget"))
    raw_cert = probs[cert]
    t = fit_temperature(probs[fit_idx], truth[fit_idx]) if temperature is None else temperature
    cal = calibrate(probs, t)
    own = own_classes(cal[fit_idx], family, budget)
    fam = threshold_family(cal[fit_idx], truth[fit_idx], comp, own)
    n = len(cert)
    curve, results = [], []
    for row in fam:
        o = outcome(cal[cert], truth[cert], row, comp, fb)
        results.append(o)
        curve.append({k: o[k] for k in ("routed_right", "contamination", "fallback", "fallback_wrong")})
    chosen = -1
    for i, o in enumerate(results):  # the family's risk only grows: stop at the first point that fails
        k = o["contaminating"]
        ok = certify_bound(k, n, method, delta) <= budget
        if not ok:
            break
        chosen = i
    feasible = chosen >= 0
    i = max(chosen, 0)
    # the thresholds as the manifest stores them (rounded up: never lower than the certified point), and
    # the certify figures and bound for exactly those, so the rule the bin runs is the one certified
    written = np.array([written_threshold(v) for v in fam[i]])
    o = outcome(cal[cert], truth[cert], written, comp, fb)
    k = o["contaminating"]
    bound = certify_bound(k, n, method, delta)
    thresholds = {lb: float(written[c]) for c, lb in enumerate(label_ids)}
    per_class = {}
    for c, lb in enumerate(label_ids):
        mine = truth[cert] == c
        into = o["confident"] & (o["routed"] == comp[c]) & (comp[truth[cert]] != comp[c])
        per_class[lb] = {"images": int(mine.sum()), "threshold": round(thresholds[lb], 4),
                         "routed_right": float((o["routed"][mine] == comp[c]).mean()) if mine.any() else None,
                         "confident_wrong": float(o["bad"][mine].mean()) if mine.any() else None,
                         "fallback": float((~o["confident"][mine]).mean()) if mine.any() else None,
                         "received_wrong": int(into.sum())}
    calib = {"temperature": t, "ece_before": round(ece(raw_cert, truth[cert]), 4),
             "ece_after": round(ece(cal[cert], truth[cert]), 4),
             "nll_before": round(nll(raw_cert, truth[cert], 1.0), 4), "nll_after": round(nll(raw_cert, truth[cert], t), 4)}
    top = cal[cert].max(1)
    certify = {"routed_right": o["routed_right"], "contamination": o["contamination"],
               "fallback_share": o["fallback"], "fallback_wrong": o["fallback_wrong"],
               # for the bin's drift watch (edge/decide/drift.py): what these photos looked like
               "mean_confidence": float(top.mean()), "confidence_sd": float(top.std(ddof=1)),
               "top1_error": float((cal[cert].argmax(1) != truth[cert]).mean())}
    return Choice(budget=budget, method=method, delta=delta, temperature=t, thresholds=thresholds,
                  feasible=feasible, n=len(truth), n_fit=len(fit_idx), n_certify=n, bound=float(bound),
                  certify=certify,
                  # photos given apart to fit: all of these certify, so only they count
                  photos_needed=photos_needed(budget, method, delta, 0.0 if fit is not None else fit_fraction),
                  curve=curve, chosen_index=i, per_class=per_class, calibration=calib,
                  family=family_name(own, label_ids), fit_apart=fit is not None)


def decision_block(probs: np.ndarray, truth: np.ndarray, label_ids: Sequence[str], budget: float,
                   **kw: Any) -> tuple[dict[str, Any], Choice]:
    """The manifest's `decision` block: the chosen budget, plus a ladder of other budgets the
    config may pick (`decision.contamination_budget`), all under one temperature and split."""
    main = choose(probs, truth, label_ids, budget, **kw)
    kw["temperature"] = main.temperature
    ladder = [choose(probs, truth, label_ids, b, **kw).block() for b in LADDER if abs(b - budget) > 1e-12]
    block = {**main.block(), "temperature": main.temperature, "fallback": kw.get("fallback", "khusus"),
             "calibration": main.calibration, "ladder": ladder}
    return block, main


def report(choice: Choice) -> dict[str, Any]:
    """Everything for the JSON report: the chosen point, the curve, the per-class table."""
    return {"budget": choice.budget, "method": choice.method, "guarantee": choice.guarantee(),
            "feasible": choice.feasible, "n": choice.n, "n_fit": choice.n_fit, "n_certify": choice.n_certify,
            "bound": choice.bound, "photos_needed": choice.photos_needed, "calibration": choice.calibration,
            "thresholds": choice.thresholds, "certify": choice.certify, "per_class": choice.per_class,
            "curve": choice.curve, "chosen_index": choice.chosen_index,
            **({"fallback_warning": w} if (w := fallback_warning(choice)) else {})}


FALLBACK_WARN = 0.5  # above this share of items to the fallback, the rule is said to be mostly "uncertain"
def fallback_warning(choice: Choice) -> str | None:
    """A WARNING when the certified rule sends more than half the certify photos to the fallback, with
    what would route more: the labelled photos with which the same rates would certify the first point
    of the family that sends at most half to the fallback, and the budget these photos certify it at."""
    fb = choice.certify.get("fallback_share", 0.0)
    if not choice.feasible or fb <= FALLBACK_WARN:
        return None
    n = choice.n_certify
    j = next((i for i, p in enumerate(choice.curve) if p["fallback"] <= FALLBACK_WARN), None)
    head = (f"WARNING: at a {100 * choice.budget:g}% contamination budget the certified rule sends "
            f"{100 * fb:.1f}% of the {n} certify photos to the fallback: most items would go to the fallback's "
            "compartment. Next: ")
    if j is None:
        return head + "1) a better model: even with every item confident, more than half would be uncertain"
    ks = [round(p["contamination"] * n) for p in choice.curve[:j + 1]]
    budget = max(certify_bound(k, n, choice.method, choice.delta) for k in ks)  # the family stops at the first failure
    rate = max(ks) / n  # the contamination seen on the way to that point
    total = None
    if rate < choice.budget:
        m = n
        while m <= ADVICE_MAX_PHOTOS and certify_bound(round(rate * m), m, choice.method, choice.delta) > choice.budget:
            m = max(m + 1, int(m * 1.05))
        # with --fit-on only certify photos are needed; else the fit share comes on top of them
        per = 1.0 if choice.fit_apart else choice.n / max(1, n)
        total = math.ceil(m * per) if m <= ADVICE_MAX_PHOTOS else None
    if total:
        where = f"in --validation (now {n})" if choice.fit_apart else f"(now {choice.n})"
        more = (f"1) about {total:,} labelled photos {where} would certify, at the rates seen here, a rule "
                f"sending at most {100 * FALLBACK_WARN:.0f}% to the fallback")
    elif rate >= choice.budget:
        more = (f"1) more labelled photos will not do it at this budget: such a rule contaminates {100 * rate:.1f}% "
                "of these photos, above the budget")
    else:
        more = (f"1) more labelled photos will hardly do it at this budget: at the {100 * rate:.1f}% contamination "
                f"such a rule has here it would take over {ADVICE_MAX_PHOTOS:,}")
    up = math.ceil(1000 * budget) / 1000
    return head + f"{more}; 2) or a larger budget: --contamination {up:g} certifies such a rule on these photos " \
                  f"({100 * choice.curve[j]['fallback']:.1f}% to the fallback, {100 * choice.curve[j]['routed_right']:.1f}% " \
                  "routed right)"


def format_choice(choice: Choice) -> str:
    c, cal = choice.certify, choice.calibration
    lines = [f"decision rule: budget {100 * choice.budget:g}% contamination, {choice.guarantee()}",
             f"  temperature {choice.temperature:g} (ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, "
             f"fit on {choice.n_fit} photos); thresholds: {choice.family}",
             f"  on {choice.n_certify} certify photos: routed right {100 * c['routed_right']:.1f}%, contamination "
             f"{100 * c['contamination']:.1f}%, fallback {100 * c['fallback_share']:.1f}% (not its compartment "
             f"{100 * c['fallback_wrong']:.1f}%), bound {100 * choice.bound:.2f}%"]
    if cal.get("ece_after", 0) > cal.get("ece_before", 0):
        # the budget still holds (certified after calibration); what suffers is routing
        lines.append(f"  NOTE: the temperature fitted on {choice.n_fit} fit photos made calibration worse on the "
                     f"certify photos (ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}); the budget still "
                     "holds, fewer items may be routed: more fit photos (--fit-on DIR) shape it better")
    warning = fallback_warning(choice)
    if warning:
        lines.append(f"  {warning}")
    if not choice.feasible:
        lines.append(f"  NOT CERTIFIABLE: {choice.too_few()}")
    lines.append(f"  {'class':<10}{'n':>5}{'thresh':>8}{'right':>8}{'wrong':>8}{'fallbk':>8}{'recv':>6}")
    for lb, r in choice.per_class.items():
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"
        lines.append(f"  {lb:<10}{r['images']:>5}{r['threshold']:>8.3f}{pct(r['routed_right']):>8}"
                     f"{pct(r['confident_wrong']):>8}{pct(r['fallback']):>8}{r['received_wrong']:>6}")
    return "\n".join(lines)


def plot_curve(choice: Choice, path: Path) -> Path:
    """Capture (routed right) against contamination along the family, the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [100 * p["contamination"] for p in choice.curve]
    ys = [100 * p["routed_right"] for p in choice.curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(xs, ys, "-", color="0.4", lw=1.2, label="thresholds along the family (one parameter)")
    ax.axvline(100 * choice.budget, color="tab:red", ls="--", lw=1, label=f"budget {100 * choice.budget:g}%")
    i = choice.chosen_index
    ax.plot([xs[i]], [ys[i]], "o", color="tab:green", ms=8,
            label=f"chosen: {ys[i]:.1f}% right, {xs[i]:.1f}% contamination")
    ax.set_xlabel(f"contamination (% of items confidently in a wrong compartment), n = {choice.n_certify}")
    ax.set_ylabel("routed right (% of items)")
    ax.set_title(f"{choice.method}: bound {100 * choice.bound:.2f}%, temperature {choice.temperature:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
