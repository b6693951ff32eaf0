"""Verification metrics checked against sklearn and brute-force loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

import verification_metrics as vm

SEEDS = range(6)


def random_pairs(seed: int, n: int = 300, with_weights: bool = False):
    """Scores rounded to one decimal, so many genuine/impostor ties; optional 0..3 weights."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
    weights = rng.integers(0, 4, n).astype(float) if with_weights else None
    return scores, labels, weights


def brute_force_points(scores, labels):
    """(far, frr, threshold) for every candidate threshold, by an explicit loop."""
    points = []
    for threshold in [np.inf, *sorted(set(scores.tolist()), reverse=True)]:
        accepted = [s >= threshold for s in scores]
        genuine_accepted = sum(a for a, l in zip(accepted, labels) if l == 1)
        impostor_accepted = sum(a for a, l in zip(accepted, labels) if l == 0)
        far = impostor_accepted / sum(labels == 0)
        frr = 1 - genuine_accepted / sum(labels == 1)
        points.append((far, frr, threshold))
    return points


def people_pairs(n_people: int, seed: int, genuine_per_person: int = 3,
                 impostors_per_person: int = 6):
    """Pairs with a per-person score offset, so pairs of one person are correlated."""
    rng = np.random.default_rng(seed)
    person_effect = rng.normal(0, 0.5, n_people)
    a = np.r_[np.repeat(np.arange(n_people), genuine_per_person),
              np.repeat(np.arange(n_people), impostors_per_person)]
    b = a.copy()
    n_genuine = n_people * genuine_per_person
    shift = rng.integers(1, n_people, len(a) - n_genuine)
    b[n_genuine:] = (a[n_genuine:] + shift) % n_people  # always a different person
    labels = (a == b).astype(int)
    scores = rng.normal(labels * 1.5 + person_effect[a] * labels, 1.0)
    return scores, labels, a, b


# ---------------------------------------------------------------- ROC and AUC

@pytest.mark.parametrize("seed", SEEDS)
def test_roc_points_match_sklearn(seed):
    scores, labels, _ = random_pairs(seed)
    far, tar, thresholds = vm.roc_points(scores, labels)
    sk_far, sk_tar, sk_thresholds = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_far)
    np.testing.assert_allclose(tar, sk_tar)
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    assert thresholds[0] == np.inf and far[0] == tar[0] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_roc_matches_sklearn_and_duplicated_rows(seed):
    scores, labels, weights = random_pairs(seed, with_weights=True)
    far, tar, thresholds = vm.roc_points(scores, labels, weights)
    sk_far, sk_tar, sk_thresholds = roc_curve(labels, scores, sample_weight=weights,
                                              drop_intermediate=False)
    np.testing.assert_allclose(far, sk_far)
    np.testing.assert_allclose(tar, sk_tar)
    np.testing.assert_array_equal(thresholds, sk_thresholds)
    repeats = weights.astype(int)
    dup = vm.roc_points(np.repeat(scores, repeats), np.repeat(labels, repeats))
    for mine, duplicated in zip((far, tar, thresholds), dup):
        np.testing.assert_allclose(mine, duplicated)


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed):
    scores, labels, weights = random_pairs(seed, with_weights=True)
    assert vm.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert vm.roc_auc(scores, labels, weights) == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=weights))


def test_auc_counts_ties_half():
    assert vm.roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert vm.roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)


# ---------------------------------------------------------------- EER

def test_eer_hand_built_exact_point():
    # Thresholds 0.9, 0.8, 0.7 reject 3, 2, 1 genuine; 0.6 accepts 1 of 4 impostors:
    # FAR = FRR = 1/4 exactly at 0.6.
    scores = [0.9, 0.8, 0.7, 0.4, 0.6, 0.5, 0.3, 0.2]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert vm.equal_error_rate(scores, labels) == pytest.approx((0.25, 0.6))


def test_eer_hand_built_interpolated():
    # At 0.8: FAR 0, FRR 1/3. At 0.6: FAR 1/2, FRR 1/3. FRR stays 1/3 on the segment, so
    # the crossing is FAR = 1/3, two thirds of the way from 0.8 to 0.6.
    scores = [0.9, 0.8, 0.4, 0.6, 0.3]
    labels = [1, 1, 1, 0, 0]
    eer, threshold = vm.equal_error_rate(scores, labels)
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.8 + 2 / 3 * (0.6 - 0.8))


@pytest.mark.parametrize("seed", SEEDS)
def test_eer_matches_brute_force(seed):
    scores, labels, _ = random_pairs(seed, n=150)
    eer, threshold = vm.equal_error_rate(scores, labels)
    points = brute_force_points(scores, labels)
    # Whatever the interpolation, the EER lies between the best lower and upper bounds.
    lower = max(min(far, frr) for far, frr, _ in points)
    upper = min(max(far, frr) for far, frr, _ in points)
    assert lower - 1e-12 <= eer <= upper + 1e-12
    # And it is exactly where the straight segment between the bracketing points crosses.
    for (far0, frr0, t0), (far1, frr1, t1) in zip(points, points[1:]):
        if far0 < frr0 and far1 >= frr1:
            fraction = (frr0 - far0) / ((frr0 - far0) - (frr1 - far1))
            assert eer == pytest.approx(far0 + fraction * (far1 - far0))
            assert eer == pytest.approx(frr0 + fraction * (frr1 - frr0))
            expected_threshold = t1 if np.isinf(t0) else t0 + fraction * (t1 - t0)
            assert threshold == pytest.approx(expected_threshold)
            break
    else:
        pytest.fail("no FAR/FRR crossing found by the loop")


def test_eer_perfect_separation_is_zero():
    eer, threshold = vm.equal_error_rate([0.9, 0.8, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0])
    assert eer == 0.0
    assert 0.2 < threshold <= 0.7


def test_eer_identical_distributions_is_half():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    eer, _ = vm.equal_error_rate(rng.normal(size=20_000), labels)
    assert eer == pytest.approx(0.5, abs=0.02)


def test_eer_weighted_equals_duplicated_rows():
    scores, labels, weights = random_pairs(3, with_weights=True)
    repeats = weights.astype(int)
    assert vm.equal_error_rate(scores, labels, weights) == pytest.approx(
        vm.equal_error_rate(np.repeat(scores, repeats), np.repeat(labels, repeats)))


# ---------------------------------------------------------------- TAR@FAR

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("far_target", [0.3, 0.1, 0.02, 0.001])
def test_tar_at_far_matches_brute_force(seed, far_target):
    scores, labels, _ = random_pairs(seed, n=200)
    result = vm.tar_at_far(scores, labels, far_target)
    best = max((1 - frr, far) for far, frr, _ in brute_force_points(scores, labels)
               if far <= far_target)
    assert result.tar == pytest.approx(best[0])
    assert result.far_achieved <= far_target
    # The threshold really delivers the reported operating point.
    accepted = scores >= result.threshold
    assert np.mean(accepted[labels == 1]) == pytest.approx(result.tar)
    assert np.mean(accepted[labels == 0]) == pytest.approx(result.far_achieved)
    assert result.n_impostors == int(np.sum(labels == 0))


def test_tar_at_far_nothing_accepted_gives_infinite_threshold():
    result = vm.tar_at_far([0.1, 0.9, 0.5], [1, 0, 0], 0.1)
    assert result.tar == 0.0 and result.threshold == np.inf and result.far_achieved == 0.0


@pytest.mark.parametrize("n_impostors, far_target, reliable", [
    (999, 1e-3, False), (1000, 1e-3, True), (9, 1e-1, False), (10, 1e-1, True),
    (99, 1e-2, False), (100, 1e-2, True)])
def test_tar_at_far_reliable_flag(n_impostors, far_target, reliable):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50, int), np.zeros(n_impostors, int)]
    result = vm.tar_at_far(rng.normal(labels, 1.0), labels, far_target)
    assert result.reliable is reliable
    assert result.n_impostors == n_impostors


# ---------------------------------------------------------------- accuracy, thresholds

@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_and_max_accuracy_threshold_match_loop(seed):
    scores, labels, _ = random_pairs(seed, n=120)
    accuracies = {}
    for threshold in [np.inf, *set(scores.tolist())]:
        correct = [(s >= threshold) == (l == 1) for s, l in zip(scores, labels)]
        accuracies[threshold] = sum(correct) / len(scores)
        assert vm.accuracy_at_threshold(scores, labels, threshold) == pytest.approx(
            accuracies[threshold])
    chosen = vm.select_threshold(scores, labels, rule="max_accuracy")
    assert np.isfinite(chosen)
    assert vm.accuracy_at_threshold(scores, labels, chosen) == pytest.approx(
        max(accuracies.values()))


def test_select_threshold_eer_and_unknown_rule():
    scores, labels, _ = random_pairs(1)
    assert vm.select_threshold(scores, labels) == vm.equal_error_rate(scores, labels)[1]
    with pytest.raises(ValueError, match="rule"):
        vm.select_threshold(scores, labels, rule="median")


def test_verification_report_is_plain_json():
    scores, labels, _ = random_pairs(2)
    report = vm.verification_report(scores, labels, threshold=0.5)
    restored = json.loads(json.dumps(report, allow_nan=False))
    assert set(restored["tar_at_far"]) == {"1e-01", "1e-02", "1e-03"}
    assert restored["n_genuine"] + restored["n_impostor"] == len(scores)
    assert restored["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert restored["eer"] == pytest.approx(vm.equal_error_rate(scores, labels)[0])
    assert restored["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == labels))
    assert restored["tar_at_far"]["1e-03"]["reliable"] is False
    assert restored["tar_at_far"]["1e-01"]["reliable"] is True
    assert "accuracy" not in vm.verification_report(scores, labels)


@pytest.mark.parametrize("scores, labels, weights, message", [
    ([0.1, 0.2], [1], None, "equal length"),
    ([0.1, np.nan], [1, 0], None, "NaN or inf"),
    ([0.1, 0.2], [1, 2], None, "0 .impostor. or 1"),
    ([0.1, 0.2], [1, 1], None, "at least one genuine and one impostor"),
    ([0.1, 0.2], [1, 0], [1.0, -1.0], "non-negative"),
    ([0.1, 0.2], [1, 0], [1.0], "weights must have shape"),
    ([0.1, 0.2], [1, 0], [1.0, 0.0], "at least one genuine and one impostor"),
])
def test_invalid_inputs_raise_value_error(scores, labels, weights, message):
    for metric in (vm.roc_points, vm.roc_auc, vm.equal_error_rate):
        with pytest.raises(ValueError, match=message):
            metric(scores, labels, weights)


def test_invalid_far_target_raises():
    with pytest.raises(ValueError, match="far_target"):
        vm.tar_at_far([0.1, 0.2], [1, 0], 0.0)


# ---------------------------------------------------------------- bootstrap

def test_pair_multiplicities_match_materialised_population():
    counts = np.array([2, 0, 1, 3])
    a = np.array([0, 0, 1, 2, 3, 0, 3])
    b = np.array([0, 2, 1, 3, 3, 3, 2])
    expected = []
    for person_a, person_b in zip(a, b):
        if person_a == person_b:  # one genuine pair per copy of the person
            expected.append(sum(1 for _ in range(counts[person_a])))
        else:  # one impostor pair per (copy of a, copy of b)
            expected.append(sum(1 for _ in range(counts[person_a])
                                for _ in range(counts[person_b])))
    np.testing.assert_array_equal(vm._pair_multiplicities(counts, a, b), expected)


def test_bootstrap_is_deterministic_and_contains_estimate():
    scores, labels, a, b = people_pairs(60, seed=0)
    first = vm.bootstrap_ci(vm.roc_auc, scores, labels, a, b, n_resamples=300, seed=7)
    again = vm.bootstrap_ci(vm.roc_auc, scores, labels, a, b, n_resamples=300, seed=7)
    other = vm.bootstrap_ci(vm.roc_auc, scores, labels, a, b, n_resamples=300, seed=8)
    assert first == again
    assert first != other
    assert first.estimate == pytest.approx(roc_auc_score(labels, scores))
    assert first.low < first.estimate < first.high
    assert first.n_used + first.n_skipped == 300


def test_bootstrap_narrows_with_more_people():
    def eer(scores, labels, weights):
        return vm.equal_error_rate(scores, labels, weights)[0]

    widths = []
    for n_people in (20, 320):
        scores, labels, a, b = people_pairs(n_people, seed=1)
        interval = vm.bootstrap_ci(eer, scores, labels, a, b, n_resamples=200, seed=0)
        widths.append(interval.high - interval.low)
    assert widths[1] < 0.5 * widths[0]


def test_bootstrap_skips_and_counts_resamples_without_both_classes():
    # Only person "x" has genuine pairs, so resamples that miss "x" have none.
    scores = [0.9, 0.8, 0.3, 0.2, 0.4]
    labels = [1, 1, 0, 0, 0]
    a = ["x", "x", "x", "y", "y"]
    b = ["x", "x", "y", "z", "z"]
    interval = vm.bootstrap_ci(vm.roc_auc, scores, labels, a, b, n_resamples=200, seed=0)
    assert interval.n_skipped > 0
    assert interval.n_used + interval.n_skipped == 200


def test_bootstrap_rejects_bad_person_columns():
    with pytest.raises(ValueError, match="one entry per pair"):
        vm.bootstrap_ci(vm.roc_auc, [0.9, 0.1], [1, 0], ["x"], ["x", "y"])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("far_target", [0.001, 0.01, 0.1, 0.25, 0.5])
def test_threshold_at_far_is_the_lowest_that_keeps_far_within_target(seed, far_target):
    rng = np.random.default_rng(seed)
    impostors = np.round(rng.normal(0, 1, 60 + 17 * seed), 1)  # rounding makes ties
    threshold = vm.threshold_at_far(impostors, far_target)
    far = lambda t: sum(s >= t for s in impostors) / len(impostors)
    assert far(threshold) <= far_target
    lower = [t for t in [*impostors, *np.nextafter(impostors, np.inf)] if t < threshold]
    assert all(far(t) > far_target for t in lower)  # every lower cut accepts too many


def test_a_twin_threshold_keeps_twins_out_where_an_eer_threshold_over_all_impostors_does_not():
    """General impostors outnumber twins: the EER over all impostors sits among the twins."""
    import verification_pairs as vp

    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.8, 0.05, 400), rng.normal(0.7, 0.05, 300), rng.normal(0.0, 0.1, 30_000)]
    kind = np.r_[np.full(400, vp.GENUINE), np.full(300, vp.TWIN), np.full(30_000, vp.GENERAL)]
    twin_far = lambda t: (scores[kind == vp.TWIN] >= t).mean()
    eer_threshold = vm.select_threshold(scores, (kind == vp.GENUINE).astype(int), rule="eer")
    assert twin_far(eer_threshold) > 0.5
    threshold, rule = vp.twin_far_threshold(scores, kind, 1e-2)
    assert twin_far(threshold) <= 1e-2 and rule == "twin FAR <= 0.01 on 300 validation twin-impostor pairs"
    no_twins = np.r_[0:400, 700:len(scores)]
    threshold, rule = vp.twin_far_threshold(scores[no_twins], kind[no_twins], 1e-2)
    assert rule.startswith("general FAR <= 0.01") and "no twin pairs" in rule


@pytest.mark.parametrize("seed", range(3))
def test_the_recogniser_gate_is_the_genuine_quantile_and_turns_away_only_below_it(seed):
    import verification_pairs as vp

    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, 300)
    recogniser, twin_model = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    genuine = np.sort(recogniser[kind == vp.GENUINE])
    gate = vp.recogniser_gate(recogniser, kind, 0.05)  # unrelated people look alike here: the genuine cap sets it
    assert gate == genuine[int(np.floor(0.05 * (len(genuine) - 1)))] < recogniser[kind == vp.GENERAL].max()
    assert np.mean(genuine < gate) <= 0.05
    separated = np.where(kind == vp.GENERAL, recogniser / 4 - 0.5, np.abs(recogniser) / 2 + 0.5)  # a gap at 0
    assert vp.recogniser_gate(separated, kind, 0.05) == separated[kind == vp.GENERAL].max()
    gated = vp.gated_scores(twin_model, recogniser, gate)
    for i in range(300):  # the loop it stands for
        assert gated[i] == (twin_model[i] if recogniser[i] >= gate else twin_model[i] - vp.GATED_OFFSET)
    assert gated[recogniser < gate].max() < -1 <= gated[recogniser >= gate].min()
    assert vp.recogniser_gate(recogniser, kind, 0.0) is None
    assert vp.recogniser_gate(recogniser, np.full(300, vp.TWIN), 0.05) is None  # no genuine pairs
    assert vp.recogniser_gate(recogniser, np.where(kind == vp.GENERAL, vp.TWIN, kind), 0.05) is None  # no general
    assert vp.gated_scores(twin_model, recogniser, None) is twin_model


def test_the_gate_leaves_the_twin_eer_and_takes_general_impostors_to_the_recogniser():
    """Twins look alike to the recogniser and pass its gate; unrelated people do not."""
    import verification_pairs as vp

    rng = np.random.default_rng(0)
    kind = np.repeat([vp.GENUINE, vp.TWIN, vp.GENERAL], 200)
    recogniser = np.r_[rng.uniform(0.5, 1, 200), rng.uniform(0.5, 1, 200), rng.uniform(-0.3, 0.3, 200)]
    twin_model = np.r_[rng.uniform(0.2, 1, 200), rng.uniform(-0.2, 0.6, 200), rng.uniform(0.1, 0.9, 200)]
    before = vp.metrics_by_impostor_kind(twin_model, kind)
    gate = vp.recogniser_gate(recogniser, kind, 0.01)
    after = vp.metrics_by_impostor_kind(vp.gated_scores(twin_model, recogniser, gate), kind)
    assert gate == recogniser[kind == vp.GENERAL].max()
    assert after["twin"]["eer"] == before["twin"]["eer"]  # no genuine pair is turned away
    assert before["general"]["eer"] > 0.1 and after["general"]["eer"] <= 0.01


def _twin_eer_reference(scores, kind):
    """Plain-loop EER of genuine against twin pairs: the error where the two rates cross, over every
    threshold at a score (no interpolation, so a coarse but independent check)."""
    import verification_pairs as vp

    genuine = [s for s, k in zip(scores, kind) if k == vp.GENUINE]
    twins = [s for s, k in zip(scores, kind) if k == vp.TWIN]
    best = None
    for threshold in sorted(set(genuine) | set(twins)):
        frr = sum(s < threshold for s in genuine) / len(genuine)
        far = sum(s >= threshold for s in twins) / len(twins)
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


@pytest.mark.parametrize("seed", range(3))
def test_the_recogniser_weight_trusts_the_twin_model_only_where_it_clearly_beats_the_recogniser(seed):
    """The recogniser alone unless the twin model alone beats it on these pairs by more than the
    margin; then the smallest weight within the margin of the best mix."""
    import verification_pairs as vp

    rng = np.random.default_rng(seed)
    kind = np.repeat([vp.GENUINE, vp.TWIN, vp.GENERAL], [300, 300, 100])
    genuine = (kind == vp.GENUINE).astype(float)
    unrelated = rng.uniform(-0.3, 0.2, 100)
    signal = lambda strength: np.r_[0.6 + strength * genuine[:600] + rng.normal(0, 0.1, 600), unrelated]
    knows, guesses, learnt, hints = signal(0.3), signal(0.0), signal(0.17), signal(0.13)
    gate = vp.recogniser_gate(knows, kind, 0.01)
    tolerance = vp.RECOGNISER_WEIGHT_TOLERANCE

    weight, eers = vp.choose_recogniser_weight(guesses, knows, kind, gate)  # the twin model learnt nothing
    assert sorted(eers) == list(vp.RECOGNISER_WEIGHTS) and weight == 1.0 and eers[0.0] > 0.4 > 0.1 > eers[1.0]
    for w in (0.0, 0.5, 1.0):  # each weight's EER is that of its fused, gated scores
        fused = [(1 - w) * t + w * r - (vp.GATED_OFFSET if r < gate else 0) for t, r in zip(guesses, knows)]
        assert eers[w] == pytest.approx(_twin_eer_reference(fused, kind), abs=0.01)
    assert vp.choose_recogniser_weight(knows, guesses, kind, None)[0] == 0.0  # the recogniser knows nothing
    # both know something: the twin model more, and a mix does better still
    weight, eers = vp.choose_recogniser_weight(learnt, hints, kind, None)
    best = min(eers.values())
    assert eers[1.0] > eers[0.0] + tolerance and eers[0.0] > best + tolerance and 0 < weight < 1
    assert eers[weight] <= best + tolerance and all(eers[w] > best + tolerance for w in eers if w < weight)
    # a near tie goes to the recogniser: the twin model's validation EER is the optimistic one
    slightly = np.where(kind == vp.GENERAL, knows, knows + rng.normal(0, 0.005, 700))
    assert vp.choose_recogniser_weight(slightly, knows, kind, None)[0] == 1.0

    scores, chosen = vp.decision_scores(guesses, knows, kind, gate, None)
    assert chosen == 1.0
    np.testing.assert_allclose(scores, vp.gated_scores(knows, knows, gate))
    # a weight given is used as it is; without genuine or twin pairs there is nothing to choose by
    np.testing.assert_allclose(vp.decision_scores(guesses, knows, kind, None, 0.25)[0], 0.75 * guesses + 0.25 * knows)
    assert vp.choose_recogniser_weight(guesses, knows, np.full(700, vp.GENUINE), gate) == (0.0, {})
    assert vp.choose_recogniser_weight(guesses, knows, np.where(kind == vp.TWIN, vp.GENERAL, kind), gate) == (0.0, {})


def test_the_recogniser_weight_needs_the_twin_models_gain_in_most_resamples_of_the_families():
    """A gain that one validation family makes, against the others, does not hand the decision to
    the twin model; a gain that every family shows does. The resampled gain's lower end is that
    of a plain loop over family resamples, each family's pairs repeated as often as it is drawn."""
    import verification_pairs as vp

    rng = np.random.default_rng(0)
    families = np.repeat(np.arange(4), 150)
    kind = np.tile(np.repeat([vp.GENUINE, vp.TWIN], 75), 4)
    genuine = (kind == vp.GENUINE).astype(float)
    recogniser = 0.6 + 0.08 * genuine + rng.normal(0, 0.1, 600)
    everywhere = 0.6 + 0.3 * genuine + rng.normal(0, 0.1, 600)  # tells every family's twins apart
    # tells three families apart perfectly, and the fourth backwards
    one_against = np.where(families == 3, 0.6 - 0.3 * genuine, 0.6 + 0.3 * genuine) + rng.normal(0, 0.1, 600)
    eer = lambda s, weights=None: vm.equal_error_rate(s, genuine, weights)[0]
    assert eer(recogniser) > eer(one_against) + vp.RECOGNISER_WEIGHT_TOLERANCE  # better, pooled

    assert vp.choose_recogniser_weight(one_against, recogniser, kind, None)[0] < 1.0  # without families: pooled rule
    assert vp.choose_recogniser_weight(one_against, recogniser, kind, None, families)[0] == 1.0
    assert vp.choose_recogniser_weight(everywhere, recogniser, kind, None, families)[0] < 1.0
    assert vp.decision_scores(one_against, recogniser, kind, None, None, families)[1] == 1.0

    low = vp.gain_low(one_against, recogniser, genuine.astype(int), families)
    draws = np.random.default_rng(0)
    gains = []
    for _ in range(vp.RECOGNISER_WEIGHT_RESAMPLES):
        counts = np.bincount(draws.integers(0, 4, 4), minlength=4)
        rows = np.concatenate([np.tile(np.flatnonzero(families == f), counts[f]) for f in range(4)])
        gains.append(vm.equal_error_rate(recogniser[rows], genuine[rows])[0]
                     - vm.equal_error_rate(one_against[rows], genuine[rows])[0])
    assert low == pytest.approx(np.quantile(gains, 1 - vp.RECOGNISER_WEIGHT_CONFIDENCE)) and low < 0
    assert vp.gain_low(everywhere, recogniser, genuine.astype(int), families) > 0
    assert vp.gain_low(everywhere, recogniser, genuine.astype(int), np.zeros(600)) == pytest.approx(
        eer(recogniser) - eer(everywhere))  # one family: every resample is the whole set
