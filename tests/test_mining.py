"""Online mining: masks, batch-hard and batch-all against plain loops, and no host reads."""

import math

import pytest
import torch

import mining


def loop_batch_hard(d, identity, family, margin, soft=False):
    losses, gaps, twin_hits, with_twin = [], [], 0, 0
    n = len(identity)
    for a in range(n):
        positives = [d[a][p] for p in range(n) if p != a and identity[p] == identity[a]]
        negatives = [(d[a][k], k) for k in range(n) if identity[k] != identity[a]]
        if any(family[k] == family[a] for _, k in negatives):
            with_twin += 1
            nearest = min(negatives)[1]
            twin_hits += family[nearest] == family[a]
        if positives and negatives:
            gap = max(positives) - min(negatives)[0]
            losses.append(math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin))
            gaps.append(gap)
    active = [g >= 0 for g in gaps] if soft else [l > 0 for l in losses]
    return sum(losses) / len(losses), sum(active) / len(losses), twin_hits / with_twin


def loop_batch_all(d, identity, margin):
    losses, valid = [], 0
    n = len(identity)
    for a in range(n):
        for p in range(n):
            if p == a or identity[p] != identity[a]:
                continue
            for k in range(n):
                if identity[k] != identity[a]:
                    valid += 1
                    losses.append(max(0.0, d[a][p] - d[a][k] + margin))
    active = [l for l in losses if l > 0]
    return sum(active) / max(1, len(active)), len(active) / valid


def test_masks_follow_identity_and_family():
    identity = torch.tensor([0, 0, 1, 1, 2])
    family = torch.tensor([0, 0, 0, 0, 1])  # 0 and 1 are twins; 2 has no twin
    positive, negative, twin = mining.pair_masks(identity, family)
    assert positive.tolist()[0] == [False, True, False, False, False]  # never its own positive
    assert not positive.diagonal().any()
    assert negative.tolist()[0] == [False, False, True, True, True]   # the twin is a negative
    assert twin.tolist()[0] == [False, False, True, True, False]
    assert twin.tolist()[4] == [False] * 5


def test_batch_hard_on_a_hand_built_matrix():
    identity, family = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0])
    d = torch.tensor([[0.0, 0.5, 0.3, 0.9],
                      [0.5, 0.0, 0.8, 0.7],
                      [0.3, 0.8, 0.0, 0.2],
                      [0.9, 0.7, 0.2, 0.0]])
    result = mining.batch_hard_loss(d, identity, family, margin=0.1)
    # anchors: 0.5-0.3+0.1, 0.5-0.7+0.1 → 0, 0.2-0.3+0.1 → 0, 0.2-0.7+0.1 → 0
    assert result.loss.item() == pytest.approx(0.3 / 4)
    assert result.active_fraction == pytest.approx(0.25)
    assert result.hardest_negative_is_twin == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_and_batch_all_equal_a_loop_on_random_batches(seed):
    generator = torch.Generator().manual_seed(seed)
    identity = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # 4 has a single image: no positive
    family = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    embeddings = torch.nn.functional.normalize(torch.randn(len(identity), 6, generator=generator), dim=1)
    d = mining.pairwise_distances(embeddings)
    rows, ids, fams = d.tolist(), identity.tolist(), family.tolist()
    hard = mining.batch_hard_loss(d, identity, family, margin=0.5)
    expected_loss, expected_active, expected_twin = loop_batch_hard(rows, ids, fams, 0.5)
    assert hard.loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert hard.active_fraction == pytest.approx(expected_active)
    assert hard.hardest_negative_is_twin == pytest.approx(expected_twin)
    assert hard.triplets == 11
    soft = mining.mined_loss("batch_hard_soft", embeddings, identity, family, margin=0.5)
    expected_loss, expected_active, _ = loop_batch_hard(rows, ids, fams, None, soft=True)
    assert soft.loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert soft.active_fraction == pytest.approx(expected_active)
    every = mining.batch_all_loss(d, identity, family, margin=0.5)
    expected_loss, expected_active = loop_batch_all(rows, ids, 0.5)
    assert every.loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert every.active_fraction == pytest.approx(expected_active)


def test_distances_are_euclidean_and_have_finite_gradients_at_zero():
    embeddings = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    embeddings = torch.cat([embeddings, embeddings[:1]]).requires_grad_(True)  # a duplicate: distance 0
    d = mining.pairwise_distances(embeddings)
    assert d[1, 2].item() == pytest.approx(torch.dist(embeddings[1], embeddings[2]).item(), abs=1e-6)
    result = mining.mined_loss("batch_hard", embeddings, torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 0, 0, 0, 0]), 1.0)
    result.loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_twin_share_is_undefined_without_twins_and_unknown_loss_is_refused():
    d = mining.pairwise_distances(torch.eye(4))
    result = mining.batch_hard_loss(d, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 0.2)
    assert math.isnan(result.hardest_negative_is_twin)
    with pytest.raises(ValueError, match="batch_hard"):
        mining.mined_loss("hardest", torch.eye(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 0.2)


def test_global_similarity_loss_compares_only_pairs_of_different_families():
    torch.manual_seed(0)
    global_embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    family = torch.tensor([0, 0, 1, 1, 2, 2])
    # The recogniser's own embeddings: every similarity matches.
    assert float(mining.global_similarity_loss(global_embeddings, global_embeddings, family)) == 0.0
    # Changing pairs within a family (twins, genuine pairs) costs nothing; across families it does.
    twins_apart = global_embeddings.clone()
    twins_apart[1] = -global_embeddings[0]
    assert float(mining.global_similarity_loss(twins_apart, global_embeddings, family)) > 0  # row 1 vs others moved
    within = torch.stack([global_embeddings[0], global_embeddings[0]])
    assert float(mining.global_similarity_loss(within, global_embeddings[:2], torch.tensor([0, 0]))) == 0.0
    # The plain-loop reference over off-family pairs.
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    pairs = [(i, j) for i in range(6) for j in range(6) if family[i] != family[j]]
    expected = sum((float(embeddings[i] @ embeddings[j]) - float(global_embeddings[i] @ global_embeddings[j])) ** 2
                   for i, j in pairs) / len(pairs)
    assert abs(float(mining.global_similarity_loss(embeddings, global_embeddings, family)) - expected) < 1e-6


def test_global_similarity_loss_reaches_the_model_only():
    global_embeddings = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    embeddings = torch.randn(4, 8, requires_grad=True)
    mining.global_similarity_loss(embeddings, global_embeddings, torch.tensor([0, 1, 2, 3])).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["batch_hard", "batch_hard_soft", "batch_all"])
def test_mining_runs_on_a_meta_device_without_host_synchronisation(name):
    """Every op exists for tensors on another device (here `meta`, standing in for CUDA): nothing
    reads a value back to the host, so a training step never waits for the GPU."""
    embeddings = torch.empty((8, 6), device="meta", requires_grad=True)
    identity, family = (torch.empty(8, dtype=torch.int64, device="meta") for _ in range(2))
    result = mining.mined_loss(name, embeddings, identity, family, 0.5)
    for value in result:
        assert value.device.type == "meta" and value.dim() == 0
    distillation = mining.global_similarity_loss(embeddings, torch.empty((8, 6), device="meta"), family)
    assert distillation.device.type == "meta" and distillation.dim() == 0
