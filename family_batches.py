"""Family batches: each training batch holds whole families with K images per identity.

A family is a twin pair, or a person without a twin. With both twins in the batch, the
twin is there for every anchor to be compared with, and online mining (`mining.py`) finds
the hardest positive and negative among all the batch's images, each encoded once.

The draw is a pure function of `(seed, epoch)`. An epoch has `rounds` rounds; in each,
every family appears once, in a fresh order, and each identity contributes the next K
images of its own shuffled cycle, so over the rounds an identity's photos are all used.
With several processes, each step's families are dealt out so that no two processes
share a family (the last families of a round that do not fill a step wait for the next).

`virtual_twins` (a share of the step's families) adds to a family a virtual twin of one of
its members (`virtual_twins.py`): K of the member's images with the same synthetic marks
painted on, a sibling of its own identity that only those marks tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from triplet_dataset import DataIndexError, FaceDataIndex, part_crops_sample
from virtual_twins import Mark, draw_marks, paint_marks

_STREAM_FAMILIES, _STREAM_AUGMENT, _STREAM_VIRTUAL = 11, 12, 13


@dataclass(frozen=True)
class FamilyBatches:
    batches: list[np.ndarray]   # image numbers of each of this process's batches
    identity: np.ndarray        # person number of every image of `index` (labels for mining)
    family: np.ndarray          # family number of every image of `index` (twins share one)
    # Per batch and slot: the virtual twin the image is painted for (an index into
    # `virtual_marks`), or -1 for the image as it is. None: no virtual twins at all.
    virtual: list[np.ndarray] | None = None
    virtual_marks: tuple[tuple[Mark, ...], ...] = ()
    virtual_family: tuple[int, ...] = ()   # the family each virtual twin joins

    def __len__(self) -> int:
        return len(self.batches)

    def labels(self, step: int, slot: int) -> tuple[int, int, tuple[Mark, ...]]:
        """`(identity, family, marks)` of one batch position: a virtual twin is an identity of
        its own (numbered after the real ones) in its source's family."""
        image = int(self.batches[step][slot])
        twin = -1 if self.virtual is None else int(self.virtual[step][slot])
        if twin < 0:
            return int(self.identity[image]), int(self.family[image]), ()
        return len(self.identity) + twin, self.virtual_family[twin], self.virtual_marks[twin]


def family_labels(index: FaceDataIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per image: its identity number and its family number (twins share a family)."""
    family_of_person = {}
    for number, family in enumerate(index.families()):
        for person in family:
            family_of_person[person] = number
    family = np.array([family_of_person[index.persons[p]] for p in index.person_of_image], dtype=np.int64)
    return index.person_of_image.copy(), family


def rounds_per_epoch(index: FaceDataIndex, persons: list[str], images_per_identity: int) -> int:
    """Enough rounds that an identity of typical size shows each of its images about once."""
    sizes = [len(index.images_of[p]) for p in persons if p in index.images_of]
    return max(1, int(round(float(np.median(sizes)) / images_per_identity))) if sizes else 1


def epoch_family_batches(index: FaceDataIndex, persons: list[str], families_per_batch: int,
                         images_per_identity: int, seed: int, epoch: int, rank: int = 0,
                         world_size: int = 1, virtual_twins: float = 0.0) -> FamilyBatches:
    """This process's family batches of one epoch (a function of seed and epoch only).

    A batch holds `families_per_batch` families, or every family a process can have when
    the training set has fewer. `virtual_twins`: the share of families (drawn per family
    and step) that get a virtual twin of one of their members."""
    members = set(persons)
    families = [tuple(p for p in family if p in members) for family in index.families()]
    families = [family for family in families if family]
    families_per_batch = min(families_per_batch, len(families) // world_size)  # a small dataset: all it has
    if families_per_batch < 1:
        raise DataIndexError(f"{len(families)} training families cannot give each of {world_size} processes "
                             "a family of its own; use fewer processes")
    per_step = families_per_batch * world_size
    rng = np.random.default_rng([seed, _STREAM_FAMILIES, epoch])
    cycles = {p: rng.permutation(index.images_of[p]) for family in families for p in family}
    used = {p: 0 for p in cycles}

    def next_images(person: str) -> list[int]:
        cycle, start = cycles[person], used[person]
        used[person] += images_per_identity
        return [int(cycle[(start + k) % len(cycle)]) for k in range(images_per_identity)]

    identity, family = family_labels(index)
    virtual_rng = np.random.default_rng([seed, _STREAM_VIRTUAL, epoch])
    marks: list[tuple[Mark, ...]] = []
    joins: list[int] = []

    def draw_family(members: tuple[str, ...]) -> tuple[list[int], list[int]]:
        """One family's images in a batch, and per image its virtual twin (or -1)."""
        images = [i for person in members for i in next_images(person)]
        twins = [-1] * len(images)
        if virtual_twins > 0 and virtual_rng.random() < virtual_twins:
            source = members[int(virtual_rng.integers(len(members)))]
            chosen = virtual_rng.choice(index.images_of[source], size=images_per_identity,
                                        replace=len(index.images_of[source]) < images_per_identity)
            marks.append(draw_marks(virtual_rng, len(index.regions)))
            joins.append(int(family[index.images_of[source][0]]))
            images += [int(i) for i in chosen]
            twins += [len(marks) - 1] * images_per_identity
        return images, twins

    batches, virtual = [], []
    for _ in range(rounds_per_epoch(index, persons, images_per_identity)):
        order = rng.permutation(len(families))
        for step in range(len(order) // per_step):
            step_families = order[step * per_step:(step + 1) * per_step]
            # every process draws every family's images (and virtual twins), so the draws stay
            # identical on all ranks
            drawn = [draw_family(families[f]) for f in step_families]
            mine = drawn[rank * families_per_batch:(rank + 1) * families_per_batch]
            batches.append(np.array([i for images, _ in mine for i in images], dtype=np.int64))
            virtual.append(np.array([t for _, twins in mine for t in twins], dtype=np.int64))
    if virtual_twins <= 0:
        return FamilyBatches(batches, identity, family)
    return FamilyBatches(batches, identity, family, virtual, tuple(marks), tuple(joins))


class FamilyBatchDataset(Dataset):
    """Item `(step, slot)` → one image's uint8 parts, cached global embedding and labels.

    Used with `batch_sampler=family_batch_positions(...)`, so each loader batch is one
    family batch and every image in it is loaded (and later encoded) once.
    `augment_on_device`: see `triplet_dataset.part_crops_sample`.
    """

    def __init__(self, index: FaceDataIndex, batches: FamilyBatches, global_embeddings: torch.Tensor,
                 augment: bool, seed: int, epoch: int, augment_strength: float = 1.0,
                 augment_on_device: bool = False):
        self.index, self.batches, self.global_embeddings = index, batches, global_embeddings
        self.augment, self.seed, self.epoch, self.augment_strength = augment, seed, epoch, augment_strength
        self.augment_on_device = augment_on_device

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches.batches)

    def __getitem__(self, position: tuple[int, int]) -> dict[str, torch.Tensor]:
        step, slot = position
        image = int(self.batches.batches[step][slot])
        identity, family, marks = self.batches.labels(step, slot)
        rng = np.random.default_rng([self.seed, _STREAM_AUGMENT, self.epoch, step, slot]) if self.augment else None
        view = int(rng.integers(self.global_embeddings.shape[1])) if rng is not None else 0
        crops = self.index.crops_rgb(image)
        if marks:  # painted before augmenting (here or on the device), so the marks move with the face
            crops = paint_marks(crops, marks)
        return {**part_crops_sample(crops, rng, self.augment_strength, self.augment_on_device),
                "global": self.global_embeddings[image, view],
                "identity": torch.tensor(identity), "family": torch.tensor(family)}


def family_batch_positions(batches: FamilyBatches) -> list[list[tuple[int, int]]]:
    """A DataLoader `batch_sampler`: the (step, slot) positions of each batch."""
    return [[(step, slot) for slot in range(len(batch))] for step, batch in enumerate(batches.batches)]
