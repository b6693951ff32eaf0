"""Virtual twins: persistent synthetic marks, a sibling identity of their own, drawn with the family batch."""

import numpy as np
import pytest

import family_batches as fb
import triplet_dataset as td
import virtual_twins as vt


@pytest.fixture(scope="module")
def index(synthetic_data):
    return td.FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                                 synthetic_data["twin_pairs_path"])


def grey_crops(regions=5, side=64, value=128):
    return np.full((regions, side, side, 3), value, dtype=np.uint8)


def test_marks_are_a_function_of_the_generator():
    first = vt.draw_marks(np.random.default_rng(3), 5)
    assert first == vt.draw_marks(np.random.default_rng(3), 5)
    assert first != vt.draw_marks(np.random.default_rng(4), 5)
    assert 1 <= len(first) <= 3 and all(0 <= mark.region < 5 for mark in first)


@pytest.mark.parametrize("change", vt.CHANGES)
def test_a_mark_changes_its_own_spot_and_nothing_far_from_it(change):
    mark = vt.Mark(region=2, centre=(0.3, 0.6), size=0.05, aspect=1.0, angle=0.0, dots=1, spread=0.05,
                   change=change, colour=(180.0, 60.0, 50.0), strength=0.6, seed=0)
    crops = grey_crops()
    painted = vt.paint_marks(crops, (mark,))
    assert painted.dtype == np.uint8 and painted.shape == crops.shape
    assert np.array_equal(np.delete(painted, 2, axis=0), np.delete(crops, 2, axis=0))  # other regions untouched
    centre = painted[2, int(0.6 * 64), int(0.3 * 64)].astype(int)
    assert np.abs(centre - 128).max() > 30                        # the spot itself changed
    assert np.array_equal(painted[2, 60:, 50:], crops[2, 60:, 50:])  # far away: unchanged
    darker = centre.mean() < 128
    assert darker == (change == "darker" or change == "tint" and np.mean(mark.colour) < 128)


def test_the_same_marks_land_on_the_same_place_of_every_crop():
    for mark in vt.draw_marks(np.random.default_rng(0), 5, max_marks=3):
        a, b = grey_crops(value=100), grey_crops(value=160)
        change_a = np.abs(vt.paint_marks(a, (mark,)).astype(int) - a).sum(-1)[mark.region]
        change_b = np.abs(vt.paint_marks(b, (mark,)).astype(int) - b).sum(-1)[mark.region]
        assert change_a.max() > 10 and change_b.max() > 10
        spot_a, spot_b = change_a > change_a.max() / 2, change_b > change_b.max() / 2
        assert (spot_a & spot_b).sum() / (spot_a | spot_b).sum() > 0.8  # the same spot, up to rounding


def test_a_mark_on_a_missing_region_is_refused():
    mark = vt.draw_marks(np.random.default_rng(0), 9)[0]
    with pytest.raises(ValueError, match="regions"):
        vt.paint_marks(grey_crops(regions=1), (vt.Mark(**{**mark.__dict__, "region": 4}),))


def test_without_virtual_twins_the_draw_is_unchanged(index):
    plain = fb.epoch_family_batches(index, index.persons, 2, 2, 0, 1)
    with_twins = fb.epoch_family_batches(index, index.persons, 2, 2, 0, 1, virtual_twins=1.0)
    assert plain.virtual is None
    for batch, bigger, twins in zip(plain.batches, with_twins.batches, with_twins.virtual):
        assert bigger[twins < 0].tolist() == batch.tolist()  # the real images are the same draw


def test_every_family_gets_a_virtual_twin_with_its_own_identity(index):
    batches = fb.epoch_family_batches(index, index.persons, 2, 3, 0, 0, virtual_twins=1.0)
    again = fb.epoch_family_batches(index, index.persons, 2, 3, 0, 0, virtual_twins=1.0)
    assert batches.virtual_marks == again.virtual_marks
    for step, (batch, twins) in enumerate(zip(batches.batches, batches.virtual)):
        families = {int(batches.family[i]) for i in batch[twins < 0]}
        assert len(set(twins[twins >= 0].tolist())) == len(families)  # one virtual twin per family
        for slot in np.flatnonzero(twins >= 0):
            identity, family, marks = batches.labels(step, int(slot))
            source = index.person_of_image[batch[slot]]
            assert identity >= len(batches.identity) and identity != source and marks
            assert family == batches.family[batch[slot]] and family in families  # a sibling in its source's family
        counts = np.unique(twins[twins >= 0], return_counts=True)[1]
        assert set(counts.tolist()) == {3}  # K images each


def test_processes_draw_the_same_virtual_twins(index):
    ranks = [fb.epoch_family_batches(index, index.persons, 1, 2, 0, 0, rank, 2, virtual_twins=0.5) for rank in (0, 1)]
    assert ranks[0].virtual_marks == ranks[1].virtual_marks


def test_a_virtual_twin_item_is_its_source_image_with_the_marks(index, synthetic_data):
    import torch

    batches = fb.epoch_family_batches(index, index.persons, 2, 2, 0, 0, virtual_twins=1.0)
    cache = torch.zeros(len(index.images), 1, 512)
    dataset = fb.FamilyBatchDataset(index, batches, cache, augment=False, seed=0, epoch=0)
    slot = int(np.flatnonzero(batches.virtual[0] >= 0)[0])
    item = dataset[(0, slot)]
    image = int(batches.batches[0][slot])
    expected = vt.paint_marks(index.crops_rgb(image), batches.labels(0, slot)[2])
    assert np.array_equal(item["parts"].permute(0, 2, 3, 1).numpy(), expected)
    assert int(item["identity"]) == batches.labels(0, slot)[0]
    assert not np.array_equal(expected, index.crops_rgb(image))
