"""Verification pairs of a set of images, and their metrics by impostor kind.

Three kinds of pairs: genuine (two images of one person), twin impostor (a person and
their twin, or any sibling of a larger group such as triplets), general impostor (any two
other people). Twin and general impostors are
reported apart: a model can be excellent on the second and at chance on the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

import numpy as np

import verification_metrics as vm

GENUINE, TWIN, GENERAL = 0, 1, 2
KIND_NAMES = {GENUINE: "genuine", TWIN: "twin", GENERAL: "general"}
KIND_COLOURS = {GENUINE: "tab:green", TWIN: "tab:red", GENERAL: "tab:blue"}  # the same in every plot
FAR_TARGETS = (1e-1, 1e-2, 1e-3)


@dataclass(frozen=True)
class Pairs:
    first: np.ndarray   # positions into the image list given to `verification_pairs`
    second: np.ndarray
    kind: np.ndarray    # GENUINE, TWIN or GENERAL
    general_total: int  # general-impostor pairs that exist (more than `kind == GENERAL` when sampled)

    def __len__(self) -> int:
        return len(self.first)


def _upper_pairs(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs within `a` (i < j), or all of `a` × `b`."""
    if b is None:
        i, j = np.triu_indices(len(a), k=1)
        return a[i], a[j]
    return np.repeat(a, len(b)), np.tile(b, len(a))


def verification_pairs(person: np.ndarray, siblings_of: Mapping[int, Collection[int]], max_general: int,
                       rng: np.random.Generator) -> Pairs:
    """Every genuine and twin pair, and all general pairs or a seeded sample of `max_general`.

    `person[i]` is the identity number of image `i`; `siblings_of` maps an identity number
    to those of its twins (one, or several for triplets and larger groups).
    """
    person = np.asarray(person)
    siblings = {int(p): {int(s) for s in group} for p, group in siblings_of.items()}
    is_sibling = lambda a, b: int(b) in siblings.get(int(a), ())
    groups = {p: np.flatnonzero(person == p) for p in np.unique(person)}
    firsts, seconds, kinds = [], [], []
    for p, members in groups.items():
        f, s = _upper_pairs(members)
        firsts.append(f), seconds.append(s), kinds.append(np.full(len(f), GENUINE))
        for twin in sorted(siblings.get(int(p), ())):
            if twin in groups and p < twin:
                f, s = _upper_pairs(members, groups[twin])
                firsts.append(f), seconds.append(s), kinds.append(np.full(len(f), TWIN))
    sizes = np.array([len(m) for m in groups.values()], dtype=np.int64)
    n_twin = sum(len(k) for k in kinds if len(k) and k[0] == TWIN)
    general_total = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2 - n_twin)
    if general_total <= max_general:
        for i in range(len(person)):  # all of them: person-block by person-block
            later = np.arange(i + 1, len(person))
            related = [int(person[i]), *siblings.get(int(person[i]), ())]
            keep = later[~np.isin(person[later], related)]
            firsts.append(np.full(len(keep), i)), seconds.append(keep), kinds.append(np.full(len(keep), GENERAL))
    else:
        chosen: set[tuple[int, int]] = set()
        while len(chosen) < max_general:
            i, j = rng.integers(len(person), size=(2, 2 * (max_general - len(chosen)) + 16))
            for a, b in zip(np.minimum(i, j), np.maximum(i, j)):
                if person[a] != person[b] and not is_sibling(person[a], person[b]) and len(chosen) < max_general:
                    chosen.add((int(a), int(b)))
        sampled = np.array(sorted(chosen), dtype=np.int64)
        firsts.append(sampled[:, 0]), seconds.append(sampled[:, 1]), kinds.append(np.full(len(sampled), GENERAL))
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return Pairs(cat(firsts), cat(seconds), cat(kinds), general_total)


def cosine_scores(embeddings: np.ndarray, pairs: Pairs) -> np.ndarray:
    """Cosine similarity of each pair (embeddings are unit length, so a dot product)."""
    return np.einsum("ij,ij->i", embeddings[pairs.first], embeddings[pairs.second])


# A pair the recogniser's gate rejects scores this much lower: below −1, hence below every
# pair it lets through (cosine similarities are ≥ −1) and below any threshold in [−1, 1].
GATED_OFFSET = 2.0


def recogniser_gate(global_scores: np.ndarray, kind: np.ndarray, genuine_reject: float) -> float | None:
    """The recogniser's similarity below which a pair is taken for two different people.

    It sits at the highest similarity the recogniser gives any (validation) general impostor,
    a pair of unrelated people, so every such pair below it is one the recogniser alone tells
    apart; but never above the `genuine_reject` quantile of the genuine pairs' similarities,
    so the gate turns away at most that share of them even where the recogniser confuses
    unrelated people. Twins look alike to the recogniser and pass; the twin model decides
    them. None: no gate (`genuine_reject` 0, or no genuine or no general-impostor pairs).
    """
    scores, kind = np.asarray(global_scores), np.asarray(kind)
    genuine, general = scores[kind == GENUINE], scores[kind == GENERAL]
    if genuine_reject <= 0 or len(genuine) == 0 or len(general) == 0:
        return None
    return float(min(general.max(), np.quantile(genuine, genuine_reject, method="lower")))


def gated_scores(scores: np.ndarray, global_scores: np.ndarray, gate: float | None) -> np.ndarray:
    """The twin model's scores, less `GATED_OFFSET` where the recogniser's similarity is below `gate`."""
    if gate is None:
        return np.asarray(scores)
    return np.where(np.asarray(global_scores) >= gate, scores, np.asarray(scores) - GATED_OFFSET)


# The recogniser weights a validation chooses among, and the margin (in twin EER) by which the
# twin model must beat the recogniser alone there before the decision leans on it at all; and
# how sure the validation families must be of that (resamples of the families, and the share of
# them in which the twin model must be no worse than the recogniser).
RECOGNISER_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
RECOGNISER_WEIGHT_TOLERANCE = 0.02
RECOGNISER_WEIGHT_RESAMPLES = 200
RECOGNISER_WEIGHT_CONFIDENCE = 0.95


def fused_scores(scores: np.ndarray, global_scores: np.ndarray, weight: float) -> np.ndarray:
    """`(1 − weight) · twin model + weight · recogniser`, both cosine similarities."""
    return (1.0 - weight) * np.asarray(scores) + weight * np.asarray(global_scores)


def gain_low(candidate: np.ndarray, baseline: np.ndarray, labels: np.ndarray,
             families: np.ndarray, seed: int = 0) -> float | None:
    """The lower end of what `candidate` scores gain over `baseline` scores in twin EER
    (baseline's − candidate's) across resamples of the families: the value that
    `RECOGNISER_WEIGHT_CONFIDENCE` of the resamples reach. None with too few families.

    `candidate`, `baseline`: each pair's (gated) score by the two (e.g. the twin model and the
    recogniser); `labels`: 1 genuine, 0 twin; `families`: each pair's family (a genuine or twin
    pair lies within one). A family's pairs move together, as in the evaluation's intervals
    (`verification_metrics.bootstrap_ci`).
    """
    def gain(_, labels_, weights):  # the resample is in the weights; the scores are the two below
        return (vm.equal_error_rate(baseline, labels_, weights)[0]
                - vm.equal_error_rate(candidate, labels_, weights)[0])

    try:
        interval = vm.bootstrap_ci(gain, candidate, labels, families, families,
                                   n_resamples=RECOGNISER_WEIGHT_RESAMPLES,
                                   confidence=2 * RECOGNISER_WEIGHT_CONFIDENCE - 1, seed=seed)
    except ValueError:  # every resample without genuine or twin pairs
        return None
    return interval.low


def choose_recogniser_weight(scores: np.ndarray, global_scores: np.ndarray, kind: np.ndarray,
                             gate: float | None, families: np.ndarray | None = None) -> tuple[float, dict[float, float]]:
    """The recogniser's weight in the decision score, chosen on these (validation) pairs; and the
    fused, gated twin EER of each weight of `RECOGNISER_WEIGHTS`.

    1 (the recogniser alone) unless the twin model alone beats it by more than
    `RECOGNISER_WEIGHT_TOLERANCE`, and, given each pair's family (`families`), does not do
    worse than it in more than 1 − `RECOGNISER_WEIGHT_CONFIDENCE` of the resamples of the
    families (`gain_low`); then the smallest weight whose twin EER is within that
    margin of the lowest. Why: training keeps the epoch that did best on these very pairs, so
    the twin model's EER here is an optimistic estimate, the frozen recogniser's is not; and a
    validation set holds few families, so a gain that one or two of them make can vanish on the
    next. A twin model that learnt its training twins but nothing that carries to new families
    would otherwise score below the recogniser it is built on, wherever the recogniser tells
    some twins apart. 0 (and no EERs) without genuine or twin pairs.
    """
    kind = np.asarray(kind)
    selected = (kind == GENUINE) | (kind == TWIN)
    if not (kind == GENUINE).any() or not (kind == TWIN).any():
        return 0.0, {}
    labels = (kind[selected] == GENUINE).astype(np.int64)
    eers = {}
    for weight in RECOGNISER_WEIGHTS:
        fused = gated_scores(fused_scores(scores, global_scores, weight), global_scores, gate)
        eers[float(weight)] = vm.equal_error_rate(fused[selected], labels)[0]
    if eers[1.0] <= eers[0.0] + RECOGNISER_WEIGHT_TOLERANCE:
        return 1.0, eers
    if families is not None:
        alone = lambda values: gated_scores(values, global_scores, gate)[selected]  # the twin model's, the recogniser's
        low = gain_low(alone(scores), alone(global_scores), labels, np.asarray(families)[selected])
        if low is not None and low < 0:
            return 1.0, eers
    lowest = min(eers.values())
    return next(w for w, eer in eers.items() if eer <= lowest + RECOGNISER_WEIGHT_TOLERANCE), eers


def decision_scores(scores: np.ndarray, global_scores: np.ndarray, kind: np.ndarray, gate: float | None,
                    weight: float | None, families: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """A twin model's decision scores: fused with the recogniser's at `weight` (None: the weight
    these pairs choose, `choose_recogniser_weight`, with each pair's family where given), then
    behind the recogniser's gate; and the weight."""
    return decision_with_marks(scores, global_scores, None, kind, gate, weight, 0.0, families)[:2]


def mixed_with_marks(scores: np.ndarray, marks: np.ndarray, mark_weight: float) -> np.ndarray:
    """`(1 − mark_weight) · scores + mark_weight · marks` (marks: `mark_comparison.mark_similarities`)."""
    return (1.0 - mark_weight) * np.asarray(scores) + mark_weight * np.asarray(marks)


def choose_mark_weight(scores: np.ndarray, marks: np.ndarray, global_scores: np.ndarray, kind: np.ndarray,
                       gate: float | None) -> tuple[float, dict[float, float]]:
    """The mark comparison's weight in the decision, chosen on these (validation) pairs; and the
    gated twin EER of each weight of `RECOGNISER_WEIGHTS`.

    `scores`: the decision without marks (the twin model fused with the recogniser, not yet
    gated); `marks`: each pair's mark similarity. 0 (no marks) unless some weight beats it by
    more than `RECOGNISER_WEIGHT_TOLERANCE` in twin EER; then the smallest weight within that
    margin of the lowest EER. Unlike the recogniser's weight, no resamples of the families must
    uphold the gain: that test guards against the twin model's optimistic validation EER
    (training kept the epoch that did best on these very pairs), and the mark comparison learns
    nothing and was chosen on nothing here. 0 (and no EERs) without genuine or twin pairs.
    """
    kind = np.asarray(kind)
    selected = (kind == GENUINE) | (kind == TWIN)
    if not (kind == GENUINE).any() or not (kind == TWIN).any():
        return 0.0, {}
    labels = (kind[selected] == GENUINE).astype(np.int64)
    decided = lambda weight: gated_scores(mixed_with_marks(scores, marks, weight), global_scores, gate)[selected]
    eers = {float(weight): vm.equal_error_rate(decided(weight), labels)[0] for weight in RECOGNISER_WEIGHTS}
    lowest = min(eers.values())
    if eers[0.0] <= lowest + RECOGNISER_WEIGHT_TOLERANCE:
        return 0.0, eers
    return next(w for w, eer in eers.items() if eer <= lowest + RECOGNISER_WEIGHT_TOLERANCE), eers


def decision_with_marks(scores: np.ndarray, global_scores: np.ndarray, marks: np.ndarray | None,
                        kind: np.ndarray, gate: float | None, weight: float | None, mark_weight: float | None,
                        families: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """The decision scores: the twin model fused with the recogniser at `weight`, mixed with the
    mark similarities at `mark_weight` (None: each chosen on these pairs, the recogniser's first),
    then behind the recogniser's gate; and the two weights. No `marks`: no mark weight (0)."""
    if weight is None:
        weight = choose_recogniser_weight(scores, global_scores, kind, gate, families)[0]
    fused = fused_scores(scores, global_scores, weight)
    if marks is None:
        mark_weight = 0.0
    elif mark_weight is None:
        mark_weight = choose_mark_weight(fused, marks, global_scores, kind, gate)[0]
    if mark_weight:
        fused = mixed_with_marks(fused, marks, mark_weight)
    return gated_scores(fused, global_scores, gate), float(weight), float(mark_weight)


def impostor_selections(kind: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the pairs each report compares: genuine with twin, with general, with all impostors."""
    genuine = kind == GENUINE
    return {"twin": genuine | (kind == TWIN), "general": genuine | (kind == GENERAL),
            "all": np.ones(len(kind), dtype=bool)}


def metrics_by_impostor_kind(scores: np.ndarray, kind: np.ndarray,
                             threshold: float | None = None) -> dict[str, dict | None]:
    """`verification_report` for genuine vs twin, vs general, and vs both impostor kinds.

    A kind with no pairs (or no genuine pairs at all) gives None.
    """
    genuine = kind == GENUINE
    report = {}
    for name, selected in impostor_selections(kind).items():
        labels = genuine[selected].astype(np.int64)
        if labels.sum() == 0 or labels.sum() == len(labels):
            report[name] = None
            continue
        report[name] = vm.verification_report(scores[selected], labels, threshold=threshold,
                                              far_targets=FAR_TARGETS)
    return report


def roc_by_impostor_kind(scores: np.ndarray, kind: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`(FAR, TAR)` curves of genuine pairs against each impostor kind that has pairs."""
    genuine = kind == GENUINE
    curves = {}
    for impostor in (TWIN, GENERAL):
        selected = genuine | (kind == impostor)
        if genuine.any() and (kind == impostor).any():
            far, tar, _ = vm.roc_points(scores[selected], genuine[selected].astype(int))
            curves[impostor] = (far, tar)
    return curves


def twin_far_threshold(scores: np.ndarray, kind: np.ndarray, target_far: float) -> tuple[float, str]:
    """The decision threshold for the twin case, and the rule that chose it, in words.

    The threshold accepts at most `target_far` of the twin impostors: general impostors far
    outnumber twins, so a threshold balanced over all impostors would let twins through far
    more often than the twin EER suggests. Without twin pairs, general impostors set it.
    """
    impostors, name = (TWIN, "twin") if (kind == TWIN).any() else (GENERAL, "general")
    impostor_scores = scores[kind == impostors]
    if len(impostor_scores) == 0:
        raise ValueError("no impostor pairs to choose a threshold on")
    threshold = vm.threshold_at_far(impostor_scores, target_far)
    rule = f"{name} FAR <= {target_far:g} on {len(impostor_scores)} validation {name}-impostor pairs"
    if len(impostor_scores) * target_far < 1:
        rule += f" (too few to measure {target_far:g}: above every one of them)"
    if name == "general":
        rule += " (the validation identities have no twin pairs)"
    return threshold, rule
