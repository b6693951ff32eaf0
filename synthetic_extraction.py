"""A dataset in the extractor's output format, made without photos or MediaPipe.

Used by the tests and the training benchmark. Twins share their face (so AdaFace alone
cannot tell them apart) and their part textures, and differ by a small dark mark in each
part, as the simulated twins of the demo do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import face_parts_extractor as extractor
from cutout import PART_NAMES
from face_images import FaceInputs


def write_synthetic_extraction(folder: Path, families: int = 4, images_per_person: int = 4, crop: int = 32,
                               seed: int = 0, regions: tuple[str, ...] = PART_NAMES) -> dict[str, Path]:
    """Write `families` twin pairs plus one person without a twin into `folder`, one crop per
    region of `regions`; returns the three dataset paths keyed like the training config."""
    rng = np.random.default_rng(seed)
    people, twin_pairs = [], []
    for family in range(families):
        pair = (f"f{family}a", f"f{family}b")
        twin_pairs.append(list(pair))
        people += [(pair[0], family), (pair[1], family)]
    people.append(("solo", families))
    family_faces = rng.integers(40, 215, (families + 1, 112, 112, 3)).astype(np.uint8)
    family_parts = rng.integers(60, 200, (families + 1, len(regions), crop, crop, 3)).astype(np.uint8)
    parts_index, tensor_index = {}, {}
    for person, family in people:
        dot = rng.integers(4, crop - 8, size=(len(regions), 2))
        for image in range(images_per_person):
            noise = lambda shape: rng.normal(0, 12, shape)
            parts = {}
            for k, part in enumerate(regions):
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
            parts_index.setdefault(person, {})[key] = {p: f"{person}/{key}/{p}.bmp" for p in regions}
            tensor_index.setdefault(person, []).append(f"{person}/{key}/{extractor.ADAFACE_INPUT_FILE}")
    paths = {"face_parts_dataset_path": folder / extractor.PARTS_INDEX,
             "tensor_dataset_path": folder / extractor.TENSOR_INDEX, "twin_pairs_path": folder / "twin_pairs.json"}
    paths["face_parts_dataset_path"].write_text(json.dumps(parts_index))
    paths["tensor_dataset_path"].write_text(json.dumps(tensor_index))
    paths["twin_pairs_path"].write_text(json.dumps(twin_pairs))
    return paths
