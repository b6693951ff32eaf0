"""Packed crops: identical pixels to the files, identical batches, atomic writes, stale packs refused."""

import json
import os

import numpy as np
import pytest
import torch

from packed_crops import pack_extraction, packed_folder_of
from synthetic_extraction import write_synthetic_extraction
from triplet_dataset import (DataIndexError, FaceDataIndex, ImageDataset, TripletDataset, draw_triplets,
                             read_record_crops_rgb)


def _load(data) -> FaceDataIndex:
    return FaceDataIndex.load(data["face_parts_dataset_path"], data["tensor_dataset_path"], data["twin_pairs_path"])


@pytest.fixture
def data(tmp_path):
    return write_synthetic_extraction(tmp_path / "data", families=3, images_per_person=3, crop=32)


def test_packed_rows_equal_the_image_files_byte_for_byte(data):
    files_index = _load(data)
    pack_extraction(data["face_parts_dataset_path"])
    packed_index = _load(data)
    assert files_index.packed is None and packed_index.packed is not None
    for number, record in enumerate(packed_index.images):
        packed = packed_index.crops_rgb(number)
        assert packed.dtype == np.uint8 and packed.shape == (5, 32, 32, 3)
        assert np.array_equal(packed, read_record_crops_rgb(record))


def test_packed_and_file_loading_give_identical_batches(data):
    files_index = _load(data)
    pack_extraction(data["face_parts_dataset_path"])
    packed_index = _load(data)
    triplets = draw_triplets(files_index, files_index.persons, "mixed", 0.5, np.random.default_rng(0))
    cache = torch.randn(len(files_index.images), 2, 512)
    for augment in (False, True):
        plain = TripletDataset(files_index, triplets, cache, augment, seed=3, epoch=1)
        fast = TripletDataset(packed_index, triplets, cache, augment, seed=3, epoch=1)
        for item in range(len(triplets)):
            a, b = plain[item], fast[item]
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a)
    numbers = np.arange(len(files_index.images))
    assert all(torch.equal(x["parts"], y["parts"])
               for x, y in zip(ImageDataset(files_index, numbers), ImageDataset(packed_index, numbers)))


def test_a_failed_pack_leaves_no_finished_folder(data, monkeypatch):
    import packed_crops

    calls = {"n": 0}
    real = packed_crops.read_crop_file_rgb

    def failing(path):
        calls["n"] += 1
        if calls["n"] > 7:
            raise OSError("disk full")
        return real(path)

    monkeypatch.setattr(packed_crops, "read_crop_file_rgb", failing)
    with pytest.raises(OSError, match="disk full"):
        pack_extraction(data["face_parts_dataset_path"])
    folder = packed_folder_of(data["face_parts_dataset_path"])
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".packed")]
    assert _load(data).packed is None  # training falls back to the files, which are complete


def test_a_stale_pack_is_refused_with_the_fix(data):
    pack_extraction(data["face_parts_dataset_path"])
    index_path = data["face_parts_dataset_path"]
    parts = json.loads(index_path.read_text())
    parts.pop(sorted(parts)[0])  # the extraction changed after packing
    index_path.write_text(json.dumps(parts))
    with pytest.raises(DataIndexError, match="older .*--pack"):
        _load(data)


def test_packed_arrays_are_opened_lazily_in_each_process(data):
    import pickle

    pack_extraction(data["face_parts_dataset_path"])
    index = _load(data)
    index.crops_rgb(0)  # opens the maps here
    copy = pickle.loads(pickle.dumps(index.packed))
    assert copy._arrays is None and len(pickle.dumps(index.packed)) < 10_000
    assert np.array_equal(copy.crops_rgb(0), index.packed.crops_rgb(0))


def test_extraction_flag_packs_and_renews(tmp_path, monkeypatch):
    import face_parts_extractor as extractor

    # The extraction itself is tested elsewhere; here only what --pack adds after it.
    data = write_synthetic_extraction(tmp_path / "data", families=2, images_per_person=2, crop=32)
    output = data["face_parts_dataset_path"].parent
    monkeypatch.setattr(extractor, "run_jobs", lambda *args, **kwargs: iter(()))
    monkeypatch.setattr(extractor, "build_indexes",
                        lambda jobs, out, suffix, regions: (json.loads(data["face_parts_dataset_path"].read_text()),
                                                   json.loads(data["tensor_dataset_path"].read_text())))
    landmarker = tmp_path / "model.task"
    landmarker.write_bytes(b"x")
    extractor.extract_dataset({}, tmp_path, output, landmarker_model=landmarker, contact_sheet_images=0,
                              progress=False, pack=True)
    assert _load(data).packed is not None
    stamp = os.stat(packed_folder_of(data["face_parts_dataset_path"]) / "index.json").st_mtime_ns
    extractor.extract_dataset({}, tmp_path, output, landmarker_model=landmarker, contact_sheet_images=0,
                              progress=False)
    # Unchanged index: the pack is current and left alone.
    assert os.stat(packed_folder_of(data["face_parts_dataset_path"]) / "index.json").st_mtime_ns == stamp


def test_unreadable_packed_index_is_a_clear_error(data):
    pack_extraction(data["face_parts_dataset_path"])
    (packed_folder_of(data["face_parts_dataset_path"]) / "index.json").write_text("{")
    with pytest.raises(DataIndexError, match="unreadable packed index"):
        _load(data)
