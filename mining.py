"""Online triplet mining over one batch's embeddings (batch-hard and batch-all).

A batch holds whole families (a twin pair, or a person without a twin) with several
images per identity. Masks, for an anchor `a` and another image `b` of the batch:

- positive: same identity, `b ≠ a` (an image is never its own positive);
- negative: a different identity (the anchor's twin included: it is the negative that matters);
- twin: a negative of the anchor's own family.

Distances are Euclidean between unit-length embeddings (range 0..2), in float32, so the
triplet hinge has the same meaning as the pre-drawn triplets' `--triplet-margin`.

Nothing here reads a value back to the host: masks weight sums instead of selecting rows,
and the statistics stay 0-dim tensors on the embeddings' device, so a training step never
waits for the GPU; the loop reads them when it logs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

LOSSES = ("triplet", "batch_hard", "batch_hard_soft", "batch_all")


class MiningResult(NamedTuple):
    loss: torch.Tensor                      # scalar, differentiable
    active_fraction: torch.Tensor           # share of the counted triplets with a non-zero hinge
    hardest_negative_is_twin: torch.Tensor  # share of anchors with a twin in the batch whose nearest
                                            # negative is it; NaN when no anchor has one
    triplets: torch.Tensor                  # triplets the loss counted (anchors for batch_hard)


def pair_masks(identity: torch.Tensor, family: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`B×B` bool masks (positive, negative, twin) from per-image identity and family labels."""
    same_identity = identity[:, None] == identity[None, :]
    self_pair = torch.eye(len(identity), dtype=torch.bool, device=identity.device)
    negative = ~same_identity
    return same_identity & ~self_pair, negative, negative & (family[:, None] == family[None, :])


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """`B×B` Euclidean distances in float32, with a gradient that stays finite at zero."""
    embeddings = embeddings.float()
    squared = (embeddings[:, None, :] - embeddings[None, :, :]).pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt()


def hardest_negative_is_twin(distances: torch.Tensor, negative: torch.Tensor, twin: torch.Tensor) -> torch.Tensor:
    """Among anchors whose twin is in the batch: how often the nearest negative is a twin image
    (0/0, NaN, when no anchor has its twin there)."""
    has_twin = twin.any(1)
    nearest = distances.detach().masked_fill(~negative, float("inf")).argmin(1)
    hits = twin[torch.arange(len(nearest), device=nearest.device), nearest] & has_twin
    return hits.sum() / has_twin.sum()


def batch_hard_loss(distances: torch.Tensor, identity: torch.Tensor, family: torch.Tensor,
                    margin: float | None) -> MiningResult:
    """Mean over anchors of `max(0, d(a, hardest positive) − d(a, hardest negative) + margin)`,
    or with `margin=None` the soft margin `log(1 + exp(d(a, p) − d(a, n)))`, which never stops
    pulling and so does not let every embedding fall onto one point (where a hinge's hardest
    pairs are all at distance ~0 and the loss sits at the margin).

    Anchors without a positive or without a negative in the batch are left out (their gap
    is −∞, which both losses take to 0; they are not counted).
    """
    positive, negative, twin = pair_masks(identity, family)
    hardest_positive = distances.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).amin(1)
    usable = positive.any(1) & negative.any(1)
    gap = hardest_positive - hardest_negative
    per_anchor = torch.nn.functional.softplus(gap) if margin is None else torch.relu(gap + margin)
    count = usable.sum()
    loss = per_anchor.where(usable, 0.0).sum() / count.clamp(min=1)
    # soft margin: "active" = the hardest negative is not yet farther than the hardest positive
    active = ((gap >= 0) if margin is None else (per_anchor > 0)) & usable
    return MiningResult(loss, active.sum() / count.clamp(min=1), hardest_negative_is_twin(distances, negative, twin),
                        count)


def batch_all_loss(distances: torch.Tensor, identity: torch.Tensor, family: torch.Tensor,
                   margin: float) -> MiningResult:
    """Mean over the valid triplets (a, p, n) whose hinge `d(a,p) − d(a,n) + margin` is positive."""
    positive, negative, twin = pair_masks(identity, family)
    valid = positive[:, :, None] & negative[:, None, :]
    hinge = torch.relu(distances[:, :, None] - distances[:, None, :] + margin) * valid
    active_count, valid_count = (hinge > 0).sum(), valid.sum()
    loss = hinge.sum() / active_count.clamp(min=1)
    return MiningResult(loss, active_count / valid_count.clamp(min=1),
                        hardest_negative_is_twin(distances, negative, twin), valid_count)


def mined_loss(name: str, embeddings: torch.Tensor, identity: torch.Tensor, family: torch.Tensor,
               margin: float) -> MiningResult:
    """`batch_hard`, `batch_hard_soft` or `batch_all` over a batch's unit-length embeddings."""
    distances = pairwise_distances(embeddings)
    if name == "batch_hard":
        return batch_hard_loss(distances, identity, family, margin)
    if name == "batch_hard_soft":
        return batch_hard_loss(distances, identity, family, None)
    if name == "batch_all":
        return batch_all_loss(distances, identity, family, margin)
    raise ValueError(f"unknown mining loss {name!r}; choose batch_hard, batch_hard_soft or batch_all")


def global_similarity_loss(embeddings: torch.Tensor, global_embeddings: torch.Tensor,
                           family: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the cosine similarities of the twin model's embeddings
    and those of the frozen global recogniser's, over the batch's pairs from different families.

    Twins and genuine pairs are left to the mining loss. Pairs of unrelated people keep the
    recogniser's geometry, so what it knows of identities never seen in training (the general
    impostors) is not traded away for the training set's twins. Zero when the batch holds a
    single family."""
    mask = family[:, None] != family[None, :]
    model = torch.nn.functional.normalize(embeddings.float(), dim=1)
    recogniser = torch.nn.functional.normalize(global_embeddings.float(), dim=1)
    squared = (model @ model.T - recogniser @ recogniser.T) ** 2
    return squared.where(mask, 0.0).sum() / mask.sum().clamp(min=1)
