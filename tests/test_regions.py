"""Face regions as data: the five original squares never change, the added ones cover the rest of the face."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import cutout
import region_coverage
from face_images import IMAGE_SUFFIXES, NoFaceError, read_image

REFERENCE = Path(__file__).parent / "data" / "five_part_crops_reference.json"
# Mean share of face-oval pixels covered on the sample photos (as the README states them).
DOCUMENTED_COVERAGE = {"five": 0.596, "extended": 0.954, "all": 0.973}


@pytest.fixture(scope="module")
def sample_faces(shared_faces, landmarker_model):
    """`{"person/file": (rgb, landmarks)}` of every sample photo with a face, detected once."""
    from face_images import FaceLandmarkDetector

    faces = {}
    with FaceLandmarkDetector(landmarker_model) as detector:
        for person in sorted(p for p in shared_faces.iterdir() if p.is_dir()):
            for photo in sorted(person.iterdir()):
                if photo.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rgb = read_image(photo)
                try:
                    faces[f"{person.name}/{photo.name}"] = (rgb, detector.detect_largest(rgb).astype(np.float64))
                except NoFaceError:
                    continue
    return faces


def test_five_original_squares_are_unchanged_pixel_for_pixel(sample_faces):
    reference = json.loads(REFERENCE.read_text())
    size = reference["crop_size_px"]
    assert sorted(sample_faces) == sorted(reference["crops"])
    for name, (rgb, landmarks) in sample_faces.items():
        for crops in (cutout.cut_parts(rgb, landmarks, size),  # the default region list
                      cutout.cut_parts(rgb, landmarks, size, cutout.REGION_NAMES)):  # and inside the full table
            hashes = {part: hashlib.sha256(crops[part].tobytes()).hexdigest()[:16] for part in cutout.PART_NAMES}
            assert hashes == reference["crops"][name], name
    assert cutout.PART_NAMES == ("left_eye", "right_eye", "nose", "mouth", "chin")
    assert cutout.REGION_SETS["five"] == cutout.PART_NAMES


def test_added_regions_are_upright_and_inside_the_image_for_frontal_faces(sample_faces):
    checked = 0
    for name, (rgb, landmarks) in sample_faces.items():
        down = cutout.face_down_axis(landmarks)
        squares = cutout.part_squares(landmarks, cutout.REGION_NAMES)
        for region in cutout.ADDED_REGION_NAMES:
            corners = squares[region]
            square_down = (corners[3] - corners[0]) / np.linalg.norm(corners[3] - corners[0])
            assert square_down @ down > np.cos(np.deg2rad(15)), (name, region)  # within 15° of the face's down
        # Frontal and framed with room around the face (as a portrait is): every square is inside the photo.
        oval = landmarks[list(cutout.FACE_OVAL), :2]
        low, high = oval.min(0), oval.max(0)
        margin = 0.4 * (high - low).max()
        if np.all(low - margin >= 0) and np.all(high + margin <= rgb.shape[1::-1]):
            checked += 1
            for region, corners in squares.items():
                assert corners.min() >= 0 and np.all(corners.max(0) <= rgb.shape[1::-1]), (name, region)
    assert checked >= 10


def test_coverage_share_is_as_documented(sample_faces):
    for set_name, documented in DOCUMENTED_COVERAGE.items():
        shares = [cutout.coverage_share(landmarks, rgb.shape, cutout.REGION_SETS[set_name])
                  for rgb, landmarks in sample_faces.values()]
        assert np.mean(shares) == pytest.approx(documented, abs=0.005), set_name
    assert DOCUMENTED_COVERAGE["extended"] > 0.95 > 0.6 > DOCUMENTED_COVERAGE["five"]


def test_coverage_share_counts_oval_pixels_inside_squares():
    landmarks = np.zeros((478, 2))
    angles = np.linspace(0, 2 * np.pi, len(cutout.FACE_OVAL), endpoint=False)
    landmarks[list(cutout.FACE_OVAL)] = np.stack([100 + 40 * np.sin(angles), 100 - 40 * np.cos(angles)], 1)
    assert cutout.coverage_share(landmarks, (200, 200), ()) == 0.0  # forehead top 10 and chin 152 are on it
    # One square through the centre, 80 wide: covers the whole disc of radius 40 (a polygon of 36 sides).
    landmarks[35], landmarks[168] = (60, 100), (140, 100)
    assert cutout.coverage_share(landmarks, (200, 200), ("left_eye",)) == pytest.approx(1.0)
    landmarks[35], landmarks[168] = (100, 100), (140, 100)  # the square x 100..140, y 80..120
    share = cutout.coverage_share(landmarks, (200, 200), ("left_eye",))
    y = np.linspace(-20, 20, 20001)  # the disc's area with x ≥ 0 and |y| ≤ 20, over all of it
    expected = np.trapezoid(np.sqrt(40 ** 2 - y ** 2), y) / (np.pi * 40 ** 2)
    assert share == pytest.approx(expected, abs=0.02)


def test_regions_containing_uses_the_square_frame():
    square = cutout.square_from_side_midpoints(np.array([0.0, 10.0]), np.array([20.0, 10.0]), np.array([0.0, 1.0]))
    squares = {"a": square, "b": square + 15}
    assert cutout.regions_containing(np.array([5.0, 5.0]), squares) == ["a"]
    assert cutout.regions_containing(np.array([18.0, 18.0]), squares) == ["a", "b"]
    assert cutout.regions_containing(np.array([-1.0, 5.0]), squares) == []


def test_parse_regions_sets_names_and_errors():
    assert cutout.parse_regions("five") == cutout.PART_NAMES
    assert len(cutout.parse_regions("extended")) == 8 and len(cutout.parse_regions("all")) == 9
    assert cutout.parse_regions("nose, forehead") == ("nose", "forehead")
    assert cutout.parse_regions(["jaw"]) == ("jaw",)
    with pytest.raises(ValueError, match="unknown regions.*ear"):
        cutout.parse_regions("nose,ear")
    with pytest.raises(ValueError, match="twice"):
        cutout.parse_regions("nose,nose")


def test_coverage_cli_prints_the_share_and_draws_the_regions(shared_faces, landmarker_model, tmp_path, capsys):
    photo = shared_faces / "obama" / "obama.jpg"
    status = region_coverage.main([str(photo), "--regions", "extended", "--draw-dir", str(tmp_path),
                                   "--landmarker-model", str(landmarker_model)])
    printed = capsys.readouterr().out
    assert status == 0 and "mean face-oval coverage of 8 regions" in printed
    share = float(printed.strip().splitlines()[0].split("%")[0])
    assert 90 < share <= 100
    drawing = read_image(tmp_path / "obama.png")
    assert drawing.shape == read_image(photo).shape and not np.array_equal(drawing, read_image(photo))
    with pytest.raises(SystemExit) as exited:  # a usage error, like every script's (exit 2)
        region_coverage.main([str(photo), "--regions", "ear"])
    assert exited.value.code == 2
    assert "unknown regions" in capsys.readouterr().err
