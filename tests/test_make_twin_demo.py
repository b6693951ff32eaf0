"""The twin simulator on real photos: determinism, pair format, local traits that move with the face."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import cutout
import make_twin_demo as twins
import part_traits
from face_images import read_image

SMALL = {"obama": ["obama.jpg", "obama4_crop.jpg"], "grace_hopper": ["grace_hopper.jpg"],
         "messi": ["messi5.jpg"]}
# Faces big enough that a landmark jitter of a pixel or two is small against the marks.
PHOTOS = ["obama/obama.jpg", "grace_hopper/grace_hopper.jpg", "cage/cage.jpg", "bieber/bieber_small.jpg"]


def build(photos: Path, output: Path, model: Path, **kwargs) -> twins.TwinDatasetSummary:
    kwargs.setdefault("images_per_identity", 2)
    return twins.build_twin_dataset(photos, output, landmarker_model=model, progress=False, **kwargs)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def load_traits(record: dict) -> list[part_traits.Trait]:
    return [part_traits.Trait.from_json(t) for t in record["traits"]]


def squares_mask(shape: tuple[int, ...], landmarks: np.ndarray, margin_px: int = 2) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    for corners in cutout.part_squares(landmarks).values():
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return cv2.dilate(mask, np.ones((2 * margin_px + 1,) * 2, np.uint8)).astype(bool)


def face_box_area(landmarks: np.ndarray) -> float:
    return float(np.ptp(landmarks[:, 0]) * np.ptp(landmarks[:, 1]))


@pytest.fixture(scope="module")
def faces(shared_faces, landmarker_model):
    """`{photo name: (rgb, landmarks)}` for PHOTOS, detected once."""
    from face_images import FaceLandmarkDetector

    with FaceLandmarkDetector(landmarker_model) as detector:
        return {name: (rgb, detector.detect_largest(rgb).astype(np.float64))
                for name in PHOTOS for rgb in [read_image(shared_faces / name)]}


def test_same_seed_gives_identical_files_and_another_seed_differs(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama4_crop.jpg"], "grace_hopper": ["grace_hopper.jpg"]})
    first = folder_bytes(build(photos, tmp_path / "one", landmarker_model).output_dir)
    again = folder_bytes(build(photos, tmp_path / "two", landmarker_model).output_dir)
    other = folder_bytes(build(photos, tmp_path / "three", landmarker_model, seed=1).output_dir)
    assert len(first) == 4 * 2 + 3 and first == again
    assert sorted(other) == sorted(first)
    images = [name for name in first if name.endswith(".jpg")]
    assert all(other[name] != first[name] for name in images)
    assert other[twins.TRAITS] != first[twins.TRAITS]


def test_pairs_formats_and_skipped_person(copy_photos, landmarker_model, detector, tmp_path, capsys):
    photos = copy_photos(SMALL)
    summary = build(photos, tmp_path / "out", landmarker_model, images_per_identity=3,
                    settings=twins.PRESETS["legacy"])
    assert "skipped person messi" in capsys.readouterr().out
    assert summary.skipped_people == ("messi",) and summary.skipped_photos == ("messi/messi5.jpg",)
    assert (summary.people, summary.pairs, summary.identities, summary.images) == (3, 2, 4, 12)

    dataset = json.loads(summary.jpg_dataset.read_text())
    pairs = json.loads(summary.twin_pairs.read_text())
    records = json.loads(summary.traits.read_text())["identities"]
    assert pairs == [["grace_hopper_a", "grace_hopper_b"], ["obama_a", "obama_b"]]
    members = [identity for pair in pairs for identity in pair]
    assert sorted(members) == sorted(dataset) == sorted(records)  # each identity in exactly one pair
    for a, b in pairs:
        assert records[a]["person"] == records[b]["person"] == a.removesuffix("_a")
        assert records[a]["twin"] == b and records[b]["twin"] == a
        assert records[a]["sources"] == records[b]["sources"]  # built from the same photos
        traits_a, traits_b = set(load_traits(records[a])), set(load_traits(records[b]))
        low, high = part_traits.OWN_TRAITS
        assert low <= len(traits_a) <= high + 1 and low <= len(traits_b) <= high + 1  # + one shared at most
        assert len(traits_a ^ traits_b) >= 2 * low
        assert all(t.uv is None or 0 < min(t.uv) <= max(t.uv) < 1 for t in traits_a | traits_b)
    assert set(records["obama_a"]["sources"]) == {"obama/obama.jpg", "obama/obama4_crop.jpg"}
    for identity, paths in dataset.items():
        assert len(paths) == 3
        for path in paths:
            assert not Path(path).is_absolute()
            rgb = read_image(summary.jpg_dataset.parent / path)  # relative to the JSON's folder
            detector.detect_largest(rgb, path)  # still a findable face after the variation


def test_every_trait_kind_changes_only_pixels_in_its_part_square(faces):
    rgb, landmarks = faces["obama/obama.jpg"]
    for index, kind in enumerate(part_traits.TRAIT_KINDS):
        for trial in range(4):
            trait = part_traits.sample_trait(np.random.default_rng([index, trial]), kind)
            changed = np.abs(part_traits.render_traits(rgb, landmarks, [trait]).astype(int) - rgb).max(-1) > 0
            square = np.zeros(rgb.shape[:2], np.uint8)
            cv2.fillPoly(square, [np.round(cutout.part_squares(landmarks)[trait.part]).astype(np.int32)], 1)
            square = cv2.dilate(square, np.ones((5, 5), np.uint8)).astype(bool)
            assert changed.any(), trait
            assert not (changed & ~square).any(), trait


@pytest.mark.parametrize("name", PHOTOS)
def test_twins_differ_only_in_small_areas_inside_the_part_squares(faces, name):
    rgb, landmarks = faces[name]
    inside = squares_mask(rgb.shape, landmarks)
    for seed in range(8):
        traits_a, traits_b = twins.twin_traits(seed, name)
        difference = np.abs(part_traits.render_traits(rgb, landmarks, traits_a).astype(int)
                            - part_traits.render_traits(rgb, landmarks, traits_b)).max(-1)
        assert (difference > 0).any()
        assert not (difference[~inside] > 0).any()
        # Visible change (more than a few grey levels) covers a small part of the face.
        assert (difference > 8).sum() < 0.05 * face_box_area(landmarks), (seed, traits_a, traits_b)


def rotate(rgb: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated about its centre on a canvas large enough to keep every corner."""
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    side = int(np.ceil(np.hypot(width, height)))
    matrix[:, 2] += (side - width) / 2, (side - height) / 2
    return cv2.warpAffine(rgb, matrix, (side, side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE), matrix


def mark_centroid(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    weight = np.abs(after.astype(float) - before).sum(-1)
    ys, xs = np.nonzero(weight)
    return np.array([np.average(xs, weights=weight[ys, xs]), np.average(ys, weights=weight[ys, xs])])


@pytest.mark.parametrize("name", ["obama/obama.jpg", "grace_hopper/grace_hopper.jpg"])
def test_marks_move_with_the_face(faces, detector, name):
    rgb, landmarks = faces[name]
    rotated, matrix = rotate(rgb, 15.0)
    rotated_landmarks = detector.detect_largest(rotated).astype(np.float64)  # found afresh
    for part in cutout.PART_NAMES:
        box = part_traits.SKIN_BOXES[part][0]
        mole = part_traits.Trait("mole", part, ((box[0] + box[1]) / 2, (box[2] + box[3]) / 2), 0.025, 0.5, 0.0, 1)
        centroid = mark_centroid(rgb, part_traits.render_traits(rgb, landmarks, [mole]))
        moved = mark_centroid(rotated, part_traits.render_traits(rotated, rotated_landmarks, [mole]))
        # Within a few pixels: about what the landmarker itself wobbles between the two copies.
        assert np.linalg.norm(matrix @ [*centroid, 1] - moved) < 4.0, part
        assert np.linalg.norm(centroid - moved) > 20  # the rotation really moved it


def test_cli_refuses_a_foreign_output_folder_and_replaces_its_own(copy_photos, landmarker_model, tmp_path,
                                                                  capsys):
    photos = copy_photos({"grace_hopper": ["grace_hopper.jpg"]})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    args = ["--photo-root", str(photos), "--images-per-identity", "1", "--no-progress",
            "--landmarker-model", str(landmarker_model), "--output-dir"]
    assert twins.main([*args, str(foreign)]) == 1
    assert (foreign / "keep.txt").read_text() == "not ours"

    output = tmp_path / "twins"
    assert twins.main([*args, str(output)]) == 0
    assert "1 people → 1 twin pairs, 2 identities, 2 images" in capsys.readouterr().out
    (output / "stale.txt").write_text("from an older run")
    assert twins.main([*args, str(output)]) == 0
    assert not (output / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "photos", "twins"]  # no temporaries
