"""Attribution metrics whose thresholds are fixed before the held-out split is seen.

With a dozen shadow models per class, a threshold chosen on the very models it is
scored on reports the best case, not what an auditor will see on the next suspect:
the gap is largest exactly at the low false-positive rates that matter for an
accusation. So every threshold here (the decision threshold and the thresholds at
10% and 1% FPR) is computed on a calibration split and only then applied, unchanged,
to a held-out split, on which alone the metrics are measured.

Convention: a higher score means "more likely infringing" (label 1), and the decision
is `score > threshold`. Pure functions of numbers; argument errors are programming
errors (ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from auditor.config import FrozenModel

# floor(fpr * n) must not lose a whole negative to rounding (0.29 * 100 = 28.999999999999996).
_COUNT_EPS = 1e-9


def _labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of 0/1 labels, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold 0/1 labels, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        bad = sorted({float(v) for v in array[(array != 0) & (array != 1)]})[:3]
        raise ValueError(f"{name} must hold only 0 (innocent) and 1 (infringing), found {bad}")
    return array.astype(np.int64)


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of numbers ({exc})") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of scores, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, found NaN or infinity")
    return array


def _split(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(labels, f"{name}_labels")
    s = _scores(scores, f"{name}_scores")
    if len(y) != len(s):
        raise ValueError(
            f"{name}_labels and {name}_scores must have the same length, got {len(y)} and {len(s)}"
        )
    if len(y) == 0:
        raise ValueError(f"the {name} split is empty; expected at least one labelled score")
    return y, s


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (the AUC is then undefined, not 0.5)."""
    y, s = _labels(labels, "labels"), _scores(scores, "scores")
    if len(y) != len(s):
        raise ValueError(f"labels and scores must have the same length, got {len(y)} and {len(s)}")
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, s))


def threshold_at_fpr(negative_scores: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The smallest t with share(negatives > t) <= fpr, for decisions `score > t`.

    At most floor(fpr * n) negatives may lie above t, so t is the (floor(fpr * n) + 1)-th
    largest negative. With few negatives this is conservative on purpose: 3 negatives
    cannot show a 10% FPR, so t is their maximum (an empirical FPR of 0), never an
    interpolation that would promise a rate the data cannot support.
    """
    negatives = _scores(negative_scores, "negative_scores")
    if len(negatives) == 0:
        raise ValueError("negative_scores is empty; expected at least one innocent score")
    rate = float(fpr)
    if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
        raise ValueError(f"fpr must be a rate in [0, 1), got {fpr!r}")
    allowed = math.floor(rate * len(negatives) + _COUNT_EPS)
    descending = np.sort(negatives)[::-1]
    return float(descending[allowed])


def balanced_accuracy_threshold(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """The threshold maximising balanced accuracy, as a midpoint between adjacent scores.

    Balanced rather than plain accuracy so that an unequal number of infringing and
    innocent shadow models does not tilt the threshold toward the larger class. A
    midpoint keeps the margin on both sides; among equally good midpoints the middle one
    is taken, so the choice does not favour either error.
    """
    y, s = _split(labels, scores, "calibration")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "choosing a decision threshold needs both classes in the calibration split;"
            f" got {n_pos} infringing and {n_neg} innocent (pass decision_threshold instead)"
        )
    distinct = np.unique(s)
    if len(distinct) == 1:
        return float(distinct[0])
    candidates = (distinct[:-1] + distinct[1:]) / 2.0
    above = s[None, :] > candidates[:, None]
    tpr = (above & (y == 1)).sum(axis=1) / n_pos
    tnr = (~above & (y == 0)).sum(axis=1) / n_neg
    balanced = (tpr + tnr) / 2.0
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    return float(candidates[best[(len(best) - 1) // 2]])


class AttributionMetrics(FrozenModel):
    """Held-out metrics; every threshold in here was fixed on the calibration split.

    Rates that are undefined on the held-out split (a TPR without infringing models, an
    AUC with one class) are NaN rather than a made-up number.
    """

    accuracy: float
    auc: float
    tpr_at_10_fpr: float
    tpr_at_1_fpr: float
    fpr_at_10_threshold: float  # the FPR the 10%-FPR threshold actually reaches on held-out negatives
    n_positive: int
    n_negative: int
    decision_threshold: float
    threshold_10_fpr: float
    threshold_1_fpr: float


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else math.nan


def evaluate(
    calibration_labels: Sequence[int] | np.ndarray,
    calibration_scores: Sequence[float] | np.ndarray,
    test_labels: Sequence[int] | np.ndarray,
    test_scores: Sequence[float] | np.ndarray,
    decision_threshold: float | None = None,
) -> AttributionMetrics:
    """Fix thresholds on the calibration split, then measure on the held-out split only.

    Thresholds are never tuned on the held-out split: the decision threshold is
    `decision_threshold` when given (e.g. 0.5 for a probability) or else the calibration
    threshold that maximises balanced accuracy, and the 10%/1% FPR thresholds come from
    the calibration negatives alone. The held-out labels and scores are used only to
    count outcomes at those fixed thresholds, so the numbers estimate what the same
    thresholds will do on unseen suspects.
    """
    cal_y, cal_s = _split(calibration_labels, calibration_scores, "calibration")
    test_y, test_s = _split(test_labels, test_scores, "test")
    cal_negatives = cal_s[cal_y == 0]
    if len(cal_negatives) == 0:
        raise ValueError(
            "the calibration split has no innocent (label 0) models; at least one is needed to fix FPR thresholds"
        )
    if decision_threshold is None:
        threshold = balanced_accuracy_threshold(cal_y, cal_s)
    else:
        threshold = float(decision_threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"decision_threshold must be a finite number, got {decision_threshold!r}")
    t10 = threshold_at_fpr(cal_negatives, 0.10)
    t1 = threshold_at_fpr(cal_negatives, 0.01)

    positives, negatives = test_s[test_y == 1], test_s[test_y == 0]
    return AttributionMetrics(
        accuracy=float(np.mean((test_s > threshold).astype(np.int64) == test_y)),
        auc=roc_auc(test_y, test_s),
        tpr_at_10_fpr=_rate(positives > t10),
        tpr_at_1_fpr=_rate(positives > t1),
        fpr_at_10_threshold=_rate(negatives > t10),
        n_positive=len(positives),
        n_negative=len(negatives),
        decision_threshold=threshold,
        threshold_10_fpr=t10,
        threshold_1_fpr=t1,
    )
