"""Family batches: deterministic for (seed, epoch), both twins with K images, no family shared by two processes."""

import numpy as np
import pytest
import torch

import family_batches as fb
import triplet_dataset as td


@pytest.fixture(scope="module")
def index(synthetic_data):
    return td.FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                                 synthetic_data["twin_pairs_path"])


def draw(index, seed=0, epoch=0, rank=0, world_size=1, families=2, k=2):
    return fb.epoch_family_batches(index, index.persons, families, k, seed, epoch, rank, world_size)


def test_the_draw_depends_on_seed_and_epoch_only(index):
    same = [b.tolist() for b in draw(index, 0, 3).batches]
    assert same == [b.tolist() for b in draw(index, 0, 3).batches]
    assert same != [b.tolist() for b in draw(index, 0, 4).batches]
    assert same != [b.tolist() for b in draw(index, 1, 3).batches]


def test_each_batch_holds_whole_families_with_k_images_per_identity(index):
    batches = draw(index, families=2, k=3)
    assert len(batches) == fb.rounds_per_epoch(index, index.persons, 3) * (5 // 2)
    for batch in batches.batches:
        persons = [index.images[i].person for i in batch]
        counts = {p: persons.count(p) for p in persons}
        assert set(counts.values()) == {3}
        for person in counts:
            assert all(twin in counts for twin in index.siblings_of.get(person, ()))  # the twin comes along
        assert len(batches.batches) and len({batches.family[i] for i in batch}) == 2
        assert all(batches.identity[i] == index.persons.index(index.images[i].person) for i in batch)


def test_images_of_an_identity_are_cycled_through(index):
    batches = fb.epoch_family_batches(index, index.persons, 1, 2, 0, 0)  # 4 images each, 2 rounds
    shown = [i for batch in batches.batches for i in batch if index.images[i].person == "f0a"]
    assert sorted(shown) == sorted(index.images_of["f0a"])


def test_processes_get_different_families(index):
    per_rank = [draw(index, 0, 2, rank, 2, families=2) for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    for step in range(len(per_rank[0])):
        families = [{per_rank[r].family[i] for i in per_rank[r].batches[step]} for r in range(2)]
        assert families[0] and families[1] and not families[0] & families[1]
    with pytest.raises(td.DataIndexError, match="fewer processes"):
        draw(index, world_size=6, families=2)
    assert all(len({draw(index, families=9).family[i] for i in b}) == 5 for b in draw(index, families=9).batches)


def test_dataset_items_are_deterministic_and_labelled(index):
    batches = draw(index)
    cache = torch.randn(len(index.images), 2, 512)
    dataset = fb.FamilyBatchDataset(index, batches, cache, augment=True, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=fb.family_batch_positions(batches))
    first = next(iter(loader))
    again = next(iter(loader))
    assert first["parts"].shape == (len(batches.batches[0]), 5, 3, 32, 32) and first["parts"].dtype == torch.uint8
    assert torch.equal(first["parts"], again["parts"])
    assert first["identity"].tolist() == batches.identity[batches.batches[0]].tolist()
    plain = fb.FamilyBatchDataset(index, batches, cache, augment=False, seed=0, epoch=0)[(0, 0)]
    assert torch.equal(plain["global"], cache[batches.batches[0][0], 0])
    assert not torch.equal(plain["parts"], dataset[(0, 0)]["parts"])


def _loader(index, batches, cache, **settings):
    dataset = fb.FamilyBatchDataset(index, batches, cache, seed=0, epoch=0, **settings)
    return torch.utils.data.DataLoader(dataset, batch_sampler=fb.family_batch_positions(batches))


def test_augmentation_on_the_device_is_a_function_of_seed_epoch_and_sample(index):
    """Two loaders of one (seed, epoch) send the same parameters, so the step augments the same
    crops alike; the crops themselves come plain, painted with any virtual twin's marks first."""
    import device_augment as da
    import train_twin_verification as train

    batches = fb.epoch_family_batches(index, index.persons, 2, 2, 0, 0, virtual_twins=1.0)
    cache = torch.randn(len(index.images), 2, 512)
    first, again = (next(iter(_loader(index, batches, cache, augment=True, augment_on_device=True)))
                    for _ in range(2))
    plain = next(iter(_loader(index, batches, cache, augment=False)))
    assert first["augment_params"].shape == (len(batches.batches[0]), 5, len(da.PARAMETERS))
    assert torch.equal(first["augment_params"], again["augment_params"])
    assert torch.equal(first["parts"], plain["parts"]) and "augment_params" not in plain
    augmented = train.step_parts(first, "families", torch.device("cpu"))
    assert augmented.shape == plain["parts"].shape and augmented.dtype == torch.uint8
    assert torch.equal(augmented, train.step_parts(again, "families", torch.device("cpu")))
    assert not torch.equal(augmented, plain["parts"])
    # each crop's parameters come from its sample's own generator, after the draw of its global view
    rng = np.random.default_rng([0, fb._STREAM_AUGMENT, 0, 0, 1])
    assert torch.equal(first["global"][1], cache[batches.batches[0][1], int(rng.integers(2))])
    assert np.array_equal(first["augment_params"][1].numpy(), da.draw_parameters(rng, 5))
    other_epoch = fb.FamilyBatchDataset(index, batches, cache, True, seed=0, epoch=1, augment_on_device=True)
    assert not torch.equal(other_epoch[(0, 1)]["augment_params"], first["augment_params"][1])
