"""Face verification metrics as pure NumPy functions on pair scores.

Conventions
- A score is a similarity: higher means "more likely the same person".
- Labels are 1 for a genuine pair (same person) and 0 for an impostor pair.
- A pair is accepted as "same person" when `score >= threshold`.
- FAR = accepted impostor weight / impostor weight; TAR = accepted genuine weight /
  genuine weight; FRR = 1 - TAR.
- Optional `weights` are per-pair multiplicities (default all ones): a pair of weight 2
  counts exactly like the same pair listed twice, and zero-weight pairs are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

EER_RULE, MAX_ACCURACY_RULE = "eer", "max_accuracy"
THRESHOLD_RULES = (EER_RULE, MAX_ACCURACY_RULE)
# TAR@FAR is flagged unreliable unless the impostor pairs allow at least this many false
# accepts at the target FAR (n_impostors * far_target >= 1): below that the FAR cannot be
# measured at all, only bounded by the one impostor with the highest score.
MIN_FALSE_ACCEPTS_FOR_RELIABLE = 1.0
_RELIABLE_SLACK = 1e-9  # 1e-3 * 1000 must count as 1 despite rounding

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _validate(scores, labels, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check inputs; return float scores, bool labels, float weights without zero-weight rows."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(f"scores and labels must be 1-D of equal length; got shapes "
                         f"{scores.shape} and {labels.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; remove or fix those pairs first")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"labels must be 0 (impostor) or 1 (genuine); got values "
                         f"{np.unique(labels)[:10]}")
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != scores.shape:
        raise ValueError(f"weights must have shape {scores.shape}; got {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("weights must be finite and non-negative")
    keep = weights > 0
    scores, labels, weights = scores[keep], labels[keep].astype(bool), weights[keep]
    if not labels.any() or labels.all():
        raise ValueError(f"need at least one genuine and one impostor pair with positive "
                         f"weight; got {int(labels.sum())} genuine and "
                         f"{int((~labels).sum())} impostor")
    return scores, labels, weights


def _roc(scores: np.ndarray, labels: np.ndarray,
         weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """ROC of validated arrays: `(far, tar, thresholds, genuine_weight, impostor_weight)`."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels, weights = scores[order], labels[order], weights[order]
    # Ties share one threshold, so keep only the last row of each run of equal scores.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    true_accepts = np.cumsum(weights * labels)[last_of_run]
    false_accepts = np.cumsum(weights * ~labels)[last_of_run]
    genuine_weight, impostor_weight = true_accepts[-1], false_accepts[-1]
    far = np.r_[0.0, false_accepts / impostor_weight]
    tar = np.r_[0.0, true_accepts / genuine_weight]
    return far, tar, np.r_[np.inf, scores[last_of_run]], genuine_weight, impostor_weight


def _as_count(total_weight: float) -> float:
    """A weight sum as an int when it is whole (always, when unweighted)."""
    total_weight = float(total_weight)
    return int(total_weight) if total_weight.is_integer() else total_weight


def roc_points(scores, labels, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC `(far, tar, thresholds)`, one point per distinct score, thresholds descending.

    The first point is (0, 0) at threshold +inf, as `sklearn.metrics.roc_curve(...,
    drop_intermediate=False)`.
    """
    return _roc(*_validate(scores, labels, weights))[:3]


def roc_auc(scores, labels, weights=None) -> float:
    """Area under the ROC (trapezoids, so tied genuine/impostor scores count half)."""
    far, tar, _ = roc_points(scores, labels, weights)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def equal_error_rate(scores, labels, weights=None) -> tuple[float, float]:
    """EER and its threshold, where FAR = FRR on the ROC joined by straight segments.

    Let i be the first ROC point with FAR >= FRR. If equal there, that point is the EER.
    Otherwise FAR and FRR are interpolated linearly between points i-1 and i to where they
    meet; the threshold is interpolated between theirs by the same fraction (when point
    i-1 is the +inf start, the threshold of point i is returned).
    """
    far, tar, thresholds = roc_points(scores, labels, weights)
    gap = far - (1.0 - tar)  # non-decreasing from -1 at +inf to +1 at the lowest score
    i = int(np.argmax(gap >= 0))  # >= 1, since gap[0] = -1
    fraction = -gap[i - 1] / (gap[i] - gap[i - 1])  # exactly 1 when gap[i] == 0
    eer = far[i - 1] + fraction * (far[i] - far[i - 1])
    if np.isinf(thresholds[i - 1]):
        return float(eer), float(thresholds[i])
    return float(eer), float(thresholds[i - 1] + fraction * (thresholds[i] - thresholds[i - 1]))


def tar_at_far(scores, labels, far_target: float, weights=None) -> TarAtFar:
    """Highest TAR whose FAR is <= `far_target`.

    The impostor scores fix the cut: the threshold is the lowest observed score that
    still keeps FAR <= target (+inf when even the top score would break it).
    """
    if not 0 < far_target <= 1:
        raise ValueError(f"far_target must be in (0, 1]; got {far_target}")
    far, tar, thresholds, _, n_impostors = _roc(*_validate(scores, labels, weights))
    i = int(np.flatnonzero(far <= far_target)[-1])
    reliable = n_impostors * far_target >= MIN_FALSE_ACCEPTS_FOR_RELIABLE - _RELIABLE_SLACK
    return TarAtFar(float(tar[i]), float(thresholds[i]), float(far[i]), bool(reliable),
                    _as_count(n_impostors))


def threshold_at_far(impostor_scores, far_target: float) -> float:
    """The lowest threshold at which at most `far_target` of these impostors are accepted.

    With `n` impostors, `floor(far_target·n)` of them may score at or above it; it sits just
    above the next one. When `far_target·n < 1` that means just above the highest impostor.
    """
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    if scores.ndim != 1 or len(scores) == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("need a 1-D array of finite impostor scores, at least one")
    if not 0 < far_target < 1:
        raise ValueError(f"far_target must be in (0, 1); got {far_target}")
    allowed = int(np.floor(far_target * len(scores) + _RELIABLE_SLACK))
    return float(np.nextafter(scores[allowed], np.inf))


def accuracy_at_threshold(scores, labels, threshold: float, weights=None) -> float:
    """Weighted fraction of pairs decided correctly by `score >= threshold`."""
    scores, labels, weights = _validate(scores, labels, weights)
    correct = (scores >= threshold) == labels
    return float(np.sum(weights * correct) / np.sum(weights))


def select_threshold(scores, labels, rule: str = EER_RULE, weights=None) -> float:
    """Threshold picked on validation pairs, to be applied unchanged to test pairs.

    rule "eer": the EER threshold. rule "max_accuracy": the best-accuracy cut, placed
    midway between the last accepted score and the next lower one (any value between
    gives the same validation accuracy; the midpoint leaves margin on both sides).
    """
    if rule == EER_RULE:
        return equal_error_rate(scores, labels, weights)[1]
    if rule != MAX_ACCURACY_RULE:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}; got {rule!r}")
    far, tar, thresholds, genuine, impostor = _roc(*_validate(scores, labels, weights))
    accuracy = (tar * genuine + (1 - far) * impostor) / (genuine + impostor)
    i = int(np.argmax(accuracy))  # ties go to the strictest threshold
    if i == len(thresholds) - 1:
        return float(thresholds[i])
    if i == 0:  # rejecting everything wins: cut just above the top score
        return float(np.nextafter(thresholds[1], np.inf))
    return float((thresholds[i] + thresholds[i + 1]) / 2)


def _json_float(value: float) -> Optional[float]:
    """A float for JSON, with +-inf and NaN as None."""
    return float(value) if np.isfinite(value) else None


def verification_report(scores, labels, threshold: Optional[float] = None,
                        far_targets: Sequence[float] = (1e-1, 1e-2, 1e-3),
                        weights=None) -> dict:
    """Plain JSON-serialisable summary: counts, AUC, EER, TAR@FAR and accuracy at `threshold`."""
    valid_scores, valid_labels, valid_weights = _validate(scores, labels, weights)
    eer, eer_threshold = equal_error_rate(scores, labels, weights)
    report = {
        "n_genuine": _as_count(valid_weights[valid_labels].sum()),
        "n_impostor": _as_count(valid_weights[~valid_labels].sum()),
        "auc": roc_auc(scores, labels, weights),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tar_at_far": {},
    }
    for far_target in far_targets:
        point = tar_at_far(scores, labels, far_target, weights)
        report["tar_at_far"][f"{far_target:.0e}"] = {
            "tar": point.tar, "threshold": _json_float(point.threshold),
            "far_achieved": point.far_achieved, "reliable": point.reliable}
    if threshold is not None:
        accepted = valid_scores >= threshold
        report["threshold"] = float(threshold)
        report["accuracy"] = accuracy_at_threshold(scores, labels, threshold, weights)
        report["far_at_threshold"] = float(valid_weights[accepted & ~valid_labels].sum()
                                           / valid_weights[~valid_labels].sum())
        report["tar_at_threshold"] = float(valid_weights[accepted & valid_labels].sum()
                                           / valid_weights[valid_labels].sum())
    return report


def _pair_multiplicities(person_counts: np.ndarray, a_index: np.ndarray,
                         b_index: np.ndarray) -> np.ndarray:
    """How often each pair appears once people are drawn `person_counts` times each.

    A pair of two different people appears once per (copy of a, copy of b): c_a * c_b.
    A pair within one person (a genuine pair) appears once per copy of that person: c_a,
    never c_a**2, because two copies of one person are not a new genuine pair.
    """
    count_a, count_b = person_counts[a_index], person_counts[b_index]
    return np.where(a_index == b_index, count_a, count_a * count_b).astype(np.float64)


def bootstrap_ci(metric_fn: MetricFn, scores, labels, person_a, person_b,
                 n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> BootstrapInterval:
    """Percentile confidence interval of `metric_fn(scores, labels, weights)` by resampling people.

    Each resample draws as many people as there are, with replacement, and weights every
    pair by how often it appears in the resampled population (`_pair_multiplicities`), so
    a person's pairs move together. Resamples left without genuine or impostor pairs are
    skipped and counted. To resample twin families instead, pass the family id as both
    `person_a` and `person_b`.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    _validate(scores, labels)
    person_a, person_b = np.asarray(person_a), np.asarray(person_b)
    if person_a.shape != scores.shape or person_b.shape != scores.shape:
        raise ValueError(f"person_a and person_b need one entry per pair ({len(scores)}); "
                         f"got shapes {person_a.shape} and {person_b.shape}")
    people, inverse = np.unique(np.concatenate([person_a, person_b]), return_inverse=True)
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < confidence < 1; got "
                         f"{n_resamples}, {confidence}")
    a_index, b_index = inverse[:len(scores)], inverse[len(scores):]
    rng = np.random.default_rng(seed)
    genuine = labels == 1
    values = []
    for _ in range(n_resamples):
        counts = np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people))
        weights = _pair_multiplicities(counts, a_index, b_index)
        if not weights[genuine].any() or not weights[~genuine].any():
            continue
        values.append(metric_fn(scores, labels, weights))
    if not values:
        raise ValueError(f"all {n_resamples} resamples lacked genuine or impostor pairs; "
                         "the data needs more people")
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    estimate = metric_fn(scores, labels, np.ones(len(scores)))
    return BootstrapInterval(float(low), float(high), float(estimate), len(values),
                             n_resamples - len(values))


@dataclass(frozen=True)
class TarAtFar:
    """One TAR@FAR operating point; `reliable` is False when too few impostors to measure it."""

    tar: float
    threshold: float
    far_achieved: float
    reliable: bool
    n_impostors: float  # sum of impostor weights: the plain count when unweighted


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval around the full-data `estimate`."""

    low: float
    high: float
    estimate: float
    n_used: int
    n_skipped: int  # resamples without a genuine or an impostor pair
