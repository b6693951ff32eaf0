"""A dataset in the extractor's output format, made without photos or MediaPipe.

Used by the tests and the training benchmark. Twins share their face (so AdaFace alone
cannot tell them apart), their part textures and their skin, and differ by a small dark mark
in each part and one on the skin face's cheek, as the simulated twins of the demo do. Every
photo has the same face-shaped landmark layout (`synthetic_landmarks`).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

import face_parts_extractor as extractor
import mark_comparison as mc
from cutout import FACE_OVAL, PART_NAMES
from face_images import FaceInputs


def _ellipse(indices, centre, radii) -> dict[int, tuple[float, float]]:
    angles = -np.pi / 2 + 2 * np.pi * np.arange(len(indices)) / len(indices)
    return {i: (centre[0] + radii[0] * np.cos(a), centre[1] + radii[1] * np.sin(a)) for i, a in zip(indices, angles)}


def synthetic_landmarks() -> np.ndarray:
    """A face-shaped layout of the 478 landmarks (float32, x, y in pixels of a 320×400 photo; z 0):
    the face oval, the eyes' and lips' outlines and the iris centres where MediaPipe puts them
    on an upright face, every other point spread inside the face."""
    rng = np.random.default_rng(12345)
    points = np.zeros((478, 3), np.float32)
    theta, radius = rng.uniform(0, 2 * np.pi, 478), np.sqrt(rng.uniform(0, 1, 478)) * 0.85
    points[:, 0], points[:, 1] = 160 + 110 * radius * np.cos(theta), 200 + 140 * radius * np.sin(theta)
    placed = {**_ellipse(FACE_OVAL, (160, 200), (120, 150)),
              **_ellipse(mc.LEFT_EYE_OUTLINE, (115, 160), (22, 9)), **_ellipse(mc.RIGHT_EYE_OUTLINE, (205, 160), (22, 9)),
              **_ellipse(mc.LIPS_OUTLINE, (160, 275), (38, 14)), 468: (115, 160), 473: (205, 160)}
    for index, (x, y) in placed.items():
        points[index, :2] = x, y
    return points


def synthetic_skin_face(base: np.ndarray, mark_xy: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A skin face (`mark_comparison.SKIN_FACE_PX`², BGR): the family's `base` skin with noise and
    the identity's dark mark at `mark_xy`."""
    face = base.astype(np.float64) + rng.normal(0, 3, base.shape)
    cv2.circle(face, mark_xy, 3, (70, 70, 90), -1)
    return np.clip(face, 0, 255).astype(np.uint8)


def synthetic_skin(rng: np.random.Generator) -> np.ndarray:
    """A family's smooth skin texture at `mark_comparison.SKIN_FACE_PX`² (BGR)."""
    side = mc.SKIN_FACE_PX
    noise = cv2.GaussianBlur(rng.normal(0, 1, (side, side, 1)).astype(np.float32), (0, 0), 2.0)
    return np.clip(np.array([150, 160, 190]) + 60 * noise[:, :, None].reshape(side, side, 1), 0, 255).astype(np.uint8)


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
    family_skins = [synthetic_skin(rng) for _ in range(families + 1)]
    landmarks = synthetic_landmarks()
    cheek = mc.landmarks_in_skin_face(landmarks)[[mc.LEFT_EYE_OUTLINE[0], mc.LIPS_OUTLINE[0]]].mean(0)
    parts_index, tensor_index = {}, {}
    for person, family in people:
        dot = rng.integers(4, crop - 8, size=(len(regions), 2))
        skin_mark = tuple(int(v) for v in np.round(cheek + rng.integers(-12, 13, size=2)))
        for image in range(images_per_person):
            noise = lambda shape: rng.normal(0, 12, shape)
            parts = {}
            for k, part in enumerate(regions):
                crop_rgb = np.clip(family_parts[family, k] + noise((crop, crop, 3)), 0, 255).astype(np.uint8)
                y, x = dot[k] + rng.integers(-1, 2, size=2)
                crop_rgb[y:y + 4, x:x + 4] = 20  # the identity's own mark
                parts[part] = crop_rgb
            face = np.clip(family_faces[family] + noise((112, 112, 3)), 0, 255).astype(np.uint8)
            inputs = FaceInputs(parts, face, landmarks,
                                synthetic_skin_face(family_skins[family], skin_mark, rng))
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
