"""Data index, identity splits, twin-aware triplets, loaders and verification pairs."""

import json
from itertools import combinations

import cv2
import numpy as np
import pytest
import torch

import triplet_dataset as td
import verification_pairs as vp
from cutout import PART_NAMES


@pytest.fixture(scope="module")
def index(synthetic_data):
    return td.FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                                 synthetic_data["twin_pairs_path"])


def test_index_reads_images_people_and_twins(index):
    assert len(index.persons) == 9 and len(index.images) == 36
    assert index.siblings_of["f0a"] == ("f0b",) and index.siblings_of["f0b"] == ("f0a",)
    assert "solo" not in index.siblings_of
    for record in index.images:
        assert all(path.is_file() for path in record.part_paths) and record.tensor_path.is_file()
        assert record.tensor_path.parent == record.part_paths[0].parent
    assert sorted(index.families())[0] == ("f0a", "f0b") and ("solo",) in index.families()
    ids = index.family_ids_of_images(np.arange(len(index.images)))
    assert [ids[n] for n in index.images_of["f0a"] + index.images_of["f0b"]] == ["f0a+f0b"] * 8
    assert set(ids[index.images_of["solo"]]) == {"solo"} and len(set(ids)) == len(index.families())


def test_twin_pairs_file_is_validated(tmp_path):
    cases = {'{"a": 1}': "list", '[["a"]]': "two or more different", '[["a", "a"]]': "two or more different",
             '[["a", "b", "a"]]': "two or more different", '[["a", "b"], ["b", "c"]]': "more than one twin pair"}
    for text, message in cases.items():
        (tmp_path / "pairs.json").write_text(text)
        with pytest.raises(td.DataIndexError, match=message):
            td.load_twin_pairs(tmp_path / "pairs.json")
    with pytest.raises(td.DataIndexError, match="not found"):
        td.load_twin_pairs(tmp_path / "missing.json")


def test_twins_listed_without_images_are_reported(synthetic_data, tmp_path):
    pairs = json.loads(synthetic_data["twin_pairs_path"].read_text()) + [["solo", "ghost"]]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    loaded = td.FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                                   tmp_path / "pairs.json")
    assert loaded.unmatched_twins == ["ghost"] and "solo" not in loaded.siblings_of


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_twins_together_and_is_seeded(index, seed):
    split = td.split_families(index.families(), 0.6, 0.2, seed)
    assert td.split_families(index.families(), 0.6, 0.2, seed) == split
    assert sorted(sum(split.values(), [])) == index.persons
    for name, people in split.items():
        assert len(people) >= 2
        for person in people:
            assert set(index.siblings_of.get(person, ())) <= set(people), (name, person)


def test_saved_split_is_reused_and_checked(index, tmp_path):
    path = tmp_path / "split.json"
    first = td.load_or_make_split(path, index, 0.6, 0.2, seed=1)
    again = td.load_or_make_split(path, index, 0.6, 0.2, seed=999)  # the saved one wins
    assert again == first
    saved = json.loads(path.read_text())
    saved["train"].remove(saved["train"][0])
    path.write_text(json.dumps(saved))
    with pytest.raises(td.DataIndexError, match="new --output-dir"):
        td.load_or_make_split(path, index, 0.6, 0.2, seed=1)


def check_triplets(index, triplets, persons):
    person = index.person_of_image
    for a, p, n, twin in zip(triplets.anchor, triplets.positive, triplets.negative, triplets.twin_negative):
        assert a != p and person[a] == person[p] and person[a] != person[n]
        assert index.persons[person[n]] in persons
        assert twin == (index.persons[person[n]] in index.siblings_of.get(index.persons[person[a]], ()))


def test_twin_strategy_uses_the_twin_when_there_is_one(index):
    people = index.persons
    triplets = td.draw_triplets(index, people, "twin", 0.0, np.random.default_rng(0))
    check_triplets(index, triplets, people)
    assert len(triplets) == 36
    has_twin = np.array([index.persons[index.person_of_image[a]] in index.siblings_of for a in triplets.anchor])
    assert triplets.twin_negative[has_twin].all() and not triplets.twin_negative[~has_twin].any()


def test_random_and_mixed_strategies(index):
    people = index.persons
    random = td.draw_triplets(index, people, "random", 0.5, np.random.default_rng(0))
    check_triplets(index, random, people)
    ratios = [td.draw_triplets(index, people, "mixed", 0.75, np.random.default_rng(s)).twin_negative.mean()
              for s in range(40)]
    twin_anchor_share = 32 / 36
    expected = twin_anchor_share * (0.75 + 0.25 / 7)  # twin chosen, or drawn at random among 7 others
    assert abs(np.mean(ratios) - expected) < 0.05


def test_epoch_triplets_depend_on_seed_and_epoch_only(index):
    draw = lambda seed, epoch: td.epoch_triplets(index, index.persons, "mixed", 0.5, 10, seed, epoch)
    assert all(np.array_equal(a, b) for a, b in zip(vars(draw(0, 3)).values(), vars(draw(0, 3)).values()))
    assert not np.array_equal(draw(0, 3).negative, draw(0, 4).negative)
    assert not np.array_equal(draw(0, 3).negative, draw(1, 3).negative)


def test_curriculum_switches_from_random_to_twin(index):
    assert td.curriculum_stage("curriculum", 1, 2) == 1 and td.curriculum_stage("curriculum", 2, 2) == 2
    assert td.curriculum_stage("mixed", 50, 2) == 1
    late = td.epoch_triplets(index, index.persons, "curriculum", 0.5, 2, 0, 2)
    assert late.twin_negative.mean() == pytest.approx(32 / 36)


def test_triplet_items_are_rgb_uint8_and_deterministic(index):
    triplets = td.draw_triplets(index, index.persons, "mixed", 0.5, np.random.default_rng(0))
    cache = torch.randn(len(index.images), 3, 512)
    plain = td.TripletDataset(index, triplets, cache, augment=False, seed=0, epoch=0)[5]
    assert plain["anchor_parts"].shape == (5, 3, 32, 32) and plain["anchor_parts"].dtype == torch.uint8
    record = index.images[triplets.anchor[5]]
    bgr = cv2.imread(str(record.part_paths[PART_NAMES.index("mouth")]))
    assert torch.equal(plain["anchor_parts"][PART_NAMES.index("mouth")], torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(plain["anchor_global"], cache[triplets.anchor[5], 0])

    augmented = td.TripletDataset(index, triplets, cache, augment=True, seed=0, epoch=0)
    one, two = augmented[5], augmented[5]
    assert torch.equal(one["anchor_parts"], two["anchor_parts"])
    assert not torch.equal(one["anchor_parts"], plain["anchor_parts"])
    other_epoch = td.TripletDataset(index, triplets, cache, augment=True, seed=0, epoch=1)[5]
    assert not torch.equal(one["anchor_parts"], other_epoch["anchor_parts"])


def test_triplets_augmented_on_the_device_are_a_function_of_seed_epoch_and_sample(index):
    """Plain crops and each crop's parameters, from the sample's own generator; the training
    step augments two loaders' batches of one (seed, epoch) alike."""
    import device_augment as da
    import train_twin_verification as train

    triplets = td.draw_triplets(index, index.persons, "mixed", 0.5, np.random.default_rng(0))
    cache = torch.randn(len(index.images), 3, 512)
    loader = lambda: torch.utils.data.DataLoader(
        td.TripletDataset(index, triplets, cache, augment=True, seed=0, epoch=0, augment_on_device=True), batch_size=4)
    first, again = next(iter(loader())), next(iter(loader()))
    plain = td.TripletDataset(index, triplets, cache, augment=False, seed=0, epoch=0)[2]
    assert torch.equal(first["negative_parts"][2], plain["negative_parts"])
    rng = td.sample_rng(0, 0, 2, 2)  # sample 2, the negative
    assert np.array_equal(first["negative_augment_params"][2].numpy(), da.draw_parameters(rng, 5))
    assert torch.equal(first["negative_global"][2], cache[triplets.negative[2], int(rng.integers(3))])
    augmented = train.step_parts(first, "triplets", torch.device("cpu"))
    assert augmented.shape == (12, 5, 3, 32, 32)  # anchors, positives, negatives
    assert torch.equal(augmented, train.step_parts(again, "triplets", torch.device("cpu")))
    negatives = da.augment_batch(first["negative_parts"].flatten(0, 1), first["negative_augment_params"].flatten(0, 1))
    assert torch.equal(augmented[8:], negatives.view(4, 5, 3, 32, 32))
    assert not torch.equal(augmented[:4], first["anchor_parts"])


def test_face_views_start_with_the_extracted_tensor(index):
    views = td.FaceViewDataset(index, augmented_views=2, seed=0)[3]
    assert views.shape == (3, 3, 112, 112)
    assert torch.equal(views[0], td.read_adaface_tensor(index.images[3].tensor_path))
    assert not torch.equal(views[1], views[0]) and not torch.equal(views[1], views[2])
    assert views.min() >= -1 and views.max() <= 1


def test_tensor_round_trip_to_bgr_is_exact(index):
    from net import adaface_input_tensor

    tensor = td.read_adaface_tensor(index.images[0].tensor_path)
    assert torch.equal(adaface_input_tensor(td.adaface_tensor_to_bgr(tensor)), tensor)


def test_missing_crop_is_named(index, tmp_path):
    record = index.images[0]
    broken = td.ImageRecord(record.person, record.key, (tmp_path / "gone.bmp",) + record.part_paths[1:],
                            record.tensor_path)
    with pytest.raises(td.DataIndexError, match="gone.bmp"):
        td.read_record_crops_rgb(broken)


def brute_force_kinds(person, siblings_of):
    kinds = {}
    for i, j in combinations(range(len(person)), 2):
        if person[i] == person[j]:
            kinds[(i, j)] = vp.GENUINE
        elif person[j] in siblings_of.get(person[i], ()):
            kinds[(i, j)] = vp.TWIN
        else:
            kinds[(i, j)] = vp.GENERAL
    return kinds


def test_verification_pairs_match_a_brute_force_loop():
    person = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 6, 6, 7])
    siblings_of = {0: [1], 1: [0], 3: [4], 4: [3], 5: [6, 7], 6: [5, 7], 7: [5, 6]}  # 5, 6, 7: triplets
    pairs = vp.verification_pairs(person, siblings_of, max_general=10_000, rng=np.random.default_rng(0))
    found = {(int(a), int(b)): int(k) for a, b, k in zip(pairs.first, pairs.second, pairs.kind)}
    assert found == brute_force_kinds(person, siblings_of)
    assert pairs.general_total == sum(k == vp.GENERAL for k in found.values())


def test_general_pairs_are_sampled_when_too_many():
    person = np.repeat(np.arange(30), 3)
    siblings_of = {0: [1], 1: [0]}
    pairs = vp.verification_pairs(person, siblings_of, max_general=500, rng=np.random.default_rng(0))
    reference = brute_force_kinds(person, siblings_of)
    general = [(a, b) for a, b, k in zip(pairs.first, pairs.second, pairs.kind) if k == vp.GENERAL]
    assert len(general) == len(set(general)) == 500
    assert all(reference[(int(a), int(b))] == vp.GENERAL for a, b in general)
    assert pairs.general_total == sum(k == vp.GENERAL for k in reference.values())
    assert (pairs.kind == vp.TWIN).sum() == 9 and (pairs.kind == vp.GENUINE).sum() == 90


def test_sibling_groups_stay_together_and_any_sibling_is_a_twin_negative(synthetic_data, tmp_path):
    """A group of three (`[[a, b, c]]` in the twin-pairs file) is one family: never split, and each
    member's twin negatives and twin-impostor pairs come from both of the others."""
    pairs = [p for p in json.loads(synthetic_data["twin_pairs_path"].read_text())
             if "f0a" not in p and "f1a" not in p]
    pairs.append(["f0a", "f0b", "f1a"])
    (tmp_path / "groups.json").write_text(json.dumps(pairs))
    index = td.FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                                  tmp_path / "groups.json")
    assert index.siblings_of["f0a"] == ("f0b", "f1a") and index.siblings_of["f1a"] == ("f0a", "f0b")
    assert "f1b" not in index.siblings_of  # left without a sibling
    assert ("f0a", "f0b", "f1a") in index.families() and ("f1b",) in index.families()
    for seed in range(8):
        split = td.split_families(index.families(), 0.6, 0.2, seed)
        holding = [name for name, people in split.items() if {"f0a", "f0b", "f1a"} & set(people)]
        assert len(holding) == 1 and {"f0a", "f0b", "f1a"} <= set(split[holding[0]])
    negatives = {}
    for seed in range(10):
        triplets = td.draw_triplets(index, index.persons, "twin", 0.0, np.random.default_rng(seed))
        check_triplets(index, triplets, index.persons)
        for a, n in zip(triplets.anchor, triplets.negative):
            anchor = index.persons[index.person_of_image[a]]
            negatives.setdefault(anchor, set()).add(index.persons[index.person_of_image[n]])
    assert negatives["f0a"] == {"f0b", "f1a"} and negatives["f1a"] == {"f0a", "f0b"}
    number = {p: k for k, p in enumerate(index.persons)}
    siblings = {number[p]: [number[s] for s in group] for p, group in index.siblings_of.items()}
    found = vp.verification_pairs(index.person_of_image, siblings, 10_000, np.random.default_rng(0))
    twin_people = {frozenset((index.persons[index.person_of_image[a]], index.persons[index.person_of_image[b]]))
                   for a, b in zip(found.first[found.kind == vp.TWIN], found.second[found.kind == vp.TWIN])}
    assert {frozenset(("f0a", "f0b")), frozenset(("f0a", "f1a")), frozenset(("f0b", "f1a"))} <= twin_people
