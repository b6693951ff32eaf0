"""Shared fixtures: the sample photos, the landmarker bundle, small copies of datasets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FACES = Path(os.environ.get("TWIN_SAMPLE_FACES", REPO.parent / "shared" / "faces"))
LANDMARKER = REPO / "pretrained" / "face_landmarker.task"


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The folder of real sample photos (one sub-folder per person), read-only."""
    if not (SHARED_FACES / "obama").is_dir():
        pytest.skip(f"sample photos not found at {SHARED_FACES} (set TWIN_SAMPLE_FACES to their folder)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def landmarker_model() -> Path:
    if not LANDMARKER.is_file():
        pytest.skip(f"{LANDMARKER} missing: run `make setup` (or `python fetch_landmarker.py`)")
    return LANDMARKER


@pytest.fixture(scope="session")
def detector(landmarker_model):
    from face_images import FaceLandmarkDetector

    with FaceLandmarkDetector(landmarker_model) as instance:
        yield instance


@pytest.fixture
def copy_photos(shared_faces, tmp_path):
    """Copy chosen sample photos (`{person: [file names]}`) into a fresh `tmp/photos/person/`."""

    def copy(selection: dict[str, list[str]], folder: str = "photos") -> Path:
        destination = tmp_path / folder
        for person, names in selection.items():
            (destination / person).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(shared_faces / person / name, destination / person / name)
        return destination

    return copy


def write_adaface_checkpoint(path: Path, arch: str = "ir_18", seed: int = 0) -> Path:
    """A file in the official AdaFace layout (Lightning `state_dict` with `model.` keys and a
    margin head) holding random weights."""
    import torch

    from net import build_adaface

    torch.manual_seed(seed)
    backbone = build_adaface(arch)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return path


@pytest.fixture(scope="session")
def adaface_file(tmp_path_factory) -> Path:
    """A small (IR-18) AdaFace-format checkpoint with random weights."""
    return write_adaface_checkpoint(tmp_path_factory.mktemp("adaface") / "adaface_ir18_random.ckpt")


def write_synthetic_extraction(folder: Path, families: int = 4, images_per_person: int = 4, crop: int = 32,
                               seed: int = 0) -> dict[str, Path]:
    """An extractor-format dataset without photos or MediaPipe: `families` twin pairs plus one
    person without a twin. Twins share their face (so AdaFace cannot tell them apart) and
    their part textures, and differ by a small dark dot in the parts, as simulated twins do."""
    import json

    import numpy as np

    import face_parts_extractor as extractor
    from cutout import PART_NAMES
    from face_images import FaceInputs

    rng = np.random.default_rng(seed)
    people, twin_pairs = [], []
    for family in range(families):
        pair = (f"f{family}a", f"f{family}b")
        twin_pairs.append(list(pair))
        people.append((pair[0], family, 0))
        people.append((pair[1], family, 1))
    people.append(("solo", families, 0))
    family_faces = rng.integers(40, 215, (families + 1, 112, 112, 3)).astype(np.uint8)
    family_parts = rng.integers(60, 200, (families + 1, len(PART_NAMES), crop, crop, 3)).astype(np.uint8)
    parts_index, tensor_index = {}, {}
    for person, family, twin in people:
        dot = rng.integers(4, crop - 8, size=(len(PART_NAMES), 2))
        for image in range(images_per_person):
            noise = lambda shape: rng.normal(0, 12, shape)
            parts = {}
            for k, part in enumerate(PART_NAMES):
                crop_rgb = np.clip(family_parts[family, k] + noise((crop, crop, 3)), 0, 255).astype(np.uint8)
                y, x = dot[k] + rng.integers(-1, 2, size=2)
                crop_rgb[y:y + 4, x:x + 4] = 20  # the identity's own mark
                parts[part] = crop_rgb
            face = np.clip(family_faces[family] + noise((112, 112, 3)), 0, 255).astype(np.uint8)
            inputs = FaceInputs(parts, face, np.zeros((478, 3), np.float32))
            key = f"{person}_{image}"
            image_dir = folder / person / key
            image_dir.mkdir(parents=True)
            extractor.write_face_outputs(image_dir, inputs, "bmp")
            parts_index.setdefault(person, {})[key] = {p: f"{person}/{key}/{p}.bmp" for p in PART_NAMES}
            tensor_index.setdefault(person, []).append(f"{person}/{key}/{extractor.ADAFACE_INPUT_FILE}")
    paths = {"face_parts_dataset_path": folder / extractor.PARTS_INDEX,
             "tensor_dataset_path": folder / extractor.TENSOR_INDEX, "twin_pairs_path": folder / "twin_pairs.json"}
    paths["face_parts_dataset_path"].write_text(json.dumps(parts_index))
    paths["tensor_dataset_path"].write_text(json.dumps(tensor_index))
    paths["twin_pairs_path"].write_text(json.dumps(twin_pairs))
    return paths


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_extraction(tmp_path_factory.mktemp("synthetic_extraction"))


def tiny_train_config(data: dict[str, Path], output_dir: Path, **overrides):
    """A training config that runs in seconds on a CPU."""
    from train_config import TrainConfig

    values = dict(adaface_checkpoint="none", adaface_arch="ir_18", part_backbone="tiny", part_weights="none",
                  face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16, batch_size=4, num_epochs=2,
                  learning_rate=3e-3, train_split=0.6, test_split=0.2, num_workers=0, progress=False,
                  face_augment_views=1, warmup_epochs=0.5, log_every_steps=1, output_dir=str(output_dir),
                  **{k: str(v) for k, v in data.items()})
    values.update(overrides)
    return TrainConfig(**values)
