"""The default (hard, varied) twin simulator: settings, determinism, and marks where traits.json says."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import cutout
import make_twin_demo as twins
import skin_marks
from face_images import read_image

PHOTOS = ["obama/obama.jpg", "grace_hopper/grace_hopper.jpg"]
TWO_PEOPLE = {"obama": ["obama4_crop.jpg"], "grace_hopper": ["grace_hopper.jpg"]}
# sha256 over the images (sorted by path) that the original simulator wrote for TWO_PEOPLE, seed 0,
# 2 images per identity, before presets existed: the legacy preset must reproduce them.
LEGACY_IMAGES_SHA256 = "f383a18e401c3dee3e3cdce495a197004a990319d80fd0e69108b7c25a39e0a0"


@pytest.fixture(scope="module")
def faces(shared_faces, landmarker_model):
    from face_images import FaceLandmarkDetector

    with FaceLandmarkDetector(landmarker_model) as detector:
        return {name: (rgb, detector.detect_largest(rgb).astype(np.float64))
                for name in PHOTOS for rgb in [read_image(shared_faces / name)]}


def build(photos: Path, output: Path, model: Path, **kwargs) -> twins.TwinDatasetSummary:
    return twins.build_twin_dataset(photos, output, images_per_identity=2, landmarker_model=model, progress=False,
                                    **kwargs)


def images_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((folder / "images").rglob("*.jpg")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def changed_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """`(N, 2)` x, y of pixels that changed by more than one grey level."""
    return np.argwhere(np.abs(after.astype(int) - before).max(-1) > 1)[:, ::-1].astype(np.float64)


def test_default_settings_draw_one_to_three_marks_anywhere():
    settings = twins.PRESETS["default"]
    assert settings.own_marks == (1, 3) and settings.placement == "anywhere" and settings.marks == "anywhere"
    assert set(settings.kinds) == set(skin_marks.MARK_KINDS) and len(skin_marks.MARK_KINDS) == 12
    legacy = twins.PRESETS["legacy"]
    assert legacy.own_marks == (4, 6) and legacy.placement == "parts" and legacy.marks == "legacy"
    with pytest.raises(ValueError, match="own_marks"):
        replace(settings, own_marks=(0, 2))
    with pytest.raises(ValueError, match="unknown mark kinds"):
        replace(settings, kinds=("mole_on_nose",))


def test_legacy_preset_reproduces_the_original_images(copy_photos, landmarker_model, tmp_path):
    summary = build(copy_photos(TWO_PEOPLE), tmp_path / "legacy", landmarker_model, settings=twins.PRESETS["legacy"])
    assert images_sha256(summary.output_dir) == LEGACY_IMAGES_SHA256
    for record in json.loads(summary.traits.read_text())["identities"].values():
        assert 4 <= len(record["traits"]) <= 7
        assert all(mark["group"] == "five" for mark in record["traits"])  # all inside the five parts


def test_default_simulator_is_deterministic_and_records_where_every_mark_is(copy_photos, landmarker_model,
                                                                             tmp_path):
    photos = copy_photos(TWO_PEOPLE)
    first, again = build(photos, tmp_path / "one", landmarker_model), build(photos, tmp_path / "two", landmarker_model)
    assert images_sha256(first.output_dir) == images_sha256(again.output_dir)
    assert first.traits.read_bytes() == again.traits.read_bytes()
    assert images_sha256(first.output_dir) != LEGACY_IMAGES_SHA256
    data = json.loads(first.traits.read_text())
    assert data["settings"]["own_marks"] == [1, 3]
    for identity, record in data["identities"].items():
        own = [m for m in record["traits"] if not m["shared"]]
        assert 1 <= len(own) <= 3 and len(record["traits"]) - len(own) <= 1
        for mark in record["traits"]:
            assert set(mark["regions"]) <= set(cutout.REGION_NAMES)
            in_five = any(r in cutout.PART_NAMES for r in mark["regions"])
            assert mark["group"] == ("five" if in_five else "added" if mark["regions"] else "outside")
            skin_marks.Mark.from_json(mark)  # the record holds the whole mark


def test_one_mark_twins_are_common():
    settings = twins.PRESETS["default"]
    landmarks, shape = synthetic_landmarks()
    counts = []
    for person in ("p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"):
        marks_a, marks_b = twins.twin_marks(0, person, landmarks, shape, settings)
        counts += [len([m for m in marks_a if m not in marks_b]), len([m for m in marks_b if m not in marks_a])]
    assert min(counts) == 1 and max(counts) <= 3 and counts.count(1) >= 3


def synthetic_landmarks() -> tuple[np.ndarray, tuple[int, int, int]]:
    """Random landmarks inside a face oval, with eyes, brows, lips and nostrils shrunk to dots:
    enough for drawing marks (clear skin exists), not for looks."""
    rng = np.random.default_rng(0)
    landmarks = np.column_stack([rng.uniform(60, 340, 478), rng.uniform(40, 360, 478)])
    angles = np.linspace(0, 2 * np.pi, len(cutout.FACE_OVAL), endpoint=False)
    landmarks[list(cutout.FACE_OVAL)] = np.column_stack([200 + 150 * np.sin(angles), 200 - 180 * np.cos(angles)])
    for feature in (*skin_marks.EYES.values(), *skin_marks.BROWS.values(), skin_marks.LIPS, skin_marks.NOSTRILS):
        landmarks[list(feature)] = landmarks[feature[0]] + rng.uniform(-3, 3, (len(feature), 2))
    return landmarks, (400, 400, 3)


@pytest.mark.parametrize("kind", skin_marks.MARK_KINDS)
def test_each_mark_kind_changes_pixels_where_its_record_says(faces, kind):
    rgb, landmarks = faces["obama/obama.jpg"]
    height = skin_marks.face_height(landmarks)
    skin = np.argwhere(skin_marks.clear_skin_mask(landmarks, rgb.shape))[:, ::-1].astype(np.float64)
    for trial in range(3):
        mark = skin_marks.sample_mark(np.random.default_rng([trial, 5]), (kind,), skin, landmarks)
        # Full contrast for the check: the weakest marks are meant to be hard to see.
        mark = replace(mark, strength=float(np.sign(mark.strength)) * max(abs(mark.strength), 0.5)
                       if kind not in skin_marks.SHAPE_MARKS else mark.strength)
        changed = changed_pixels(rgb, skin_marks.render_marks(rgb, landmarks, [mark]))
        assert len(changed) > 0, (kind, trial)
        centre = skin_marks.mark_centre(mark, landmarks)
        reach = {"scar": 0.6 * mark.size * height, "iris_sector": 0.03 * height}.get(kind, mark.size * height)
        if kind in skin_marks.BROW_MARKS:
            brow = landmarks[list(skin_marks.BROWS[mark.side]), :2]
            reach = np.linalg.norm(brow - centre, axis=1).max()
        distance = np.linalg.norm(changed - centre, axis=1)
        assert distance.max() <= reach + 0.02 * height + 3, (kind, trial, distance.max(), reach)
        if kind in skin_marks.POINT_MARKS:
            spread = 0.75 if kind == "freckle_cluster" else 0.5  # a few random dots need not balance
            assert np.linalg.norm(changed.mean(0) - centre) < max(spread * reach, 3), (kind, trial)
            assert skin_marks.clear_skin_mask(landmarks, rgb.shape)[tuple(np.round(centre[::-1]).astype(int))]


def test_marks_follow_the_face_across_photos(faces):
    """A mark anchored on one photo's mesh lands on the same spot of the face in another photo."""
    rgb, landmarks = faces["obama/obama.jpg"]
    skin = np.argwhere(skin_marks.clear_skin_mask(landmarks, rgb.shape))[:, ::-1].astype(np.float64)
    mark = skin_marks.sample_mark(np.random.default_rng(1), ("pigment_spot",), skin, landmarks)
    shifted = landmarks.copy()
    shifted[:, :2] = landmarks[:, :2] * 0.9 + [15, 10]  # the same face, smaller and moved
    np.testing.assert_allclose(skin_marks.mark_centre(mark, shifted),
                               skin_marks.mark_centre(mark, landmarks) * 0.9 + [15, 10], atol=1e-6)


@pytest.mark.parametrize("placement", ["parts", "outside_parts"])
def test_placement_keeps_point_marks_inside_or_outside_the_five_parts(faces, placement):
    rgb, landmarks = faces["grace_hopper/grace_hopper.jpg"]
    skin = np.argwhere(skin_marks.clear_skin_mask(landmarks, rgb.shape, placement))[:, ::-1].astype(np.float64)
    squares = cutout.part_squares(landmarks)
    rng = np.random.default_rng(0)
    for _ in range(20):
        mark = skin_marks.sample_mark(rng, skin_marks.POINT_MARKS, skin, landmarks)
        inside = cutout.regions_containing(skin_marks.mark_centre(mark, landmarks), squares)
        assert bool(inside) == (placement == "parts")
        where = twins.where_it_is(mark, [landmarks])
        assert (where["group"] == "five") == (placement == "parts")


def test_cli_settings_and_legacy_refuses_changes(copy_photos, landmarker_model, tmp_path, capsys):
    photos = copy_photos({"grace_hopper": ["grace_hopper.jpg"]})
    output = tmp_path / "out"
    assert twins.main(["--photo-root", str(photos), "--output-dir", str(output), "--images-per-identity", "1",
                       "--own-marks", "2", "--kinds", "pit,scar", "--placement", "outside_parts",
                       "--twin-photos", "split", "--landmarker-model", str(landmarker_model), "--no-progress"]) == 0
    data = json.loads((output / twins.TRAITS).read_text())
    assert data["settings"]["own_marks"] == [2, 2] and data["settings"]["placement"] == "outside_parts"
    assert data["settings"]["twin_photos"] == "split"
    for record in data["identities"].values():
        own = [m for m in record["traits"] if not m["shared"]]
        assert len(own) == 2 and {m["kind"] for m in record["traits"]} <= {"pit", "scar"}
        assert all(m["group"] != "five" for m in record["traits"])
    with pytest.raises(SystemExit):
        twins.main(["--photo-root", str(photos), "--output-dir", str(output), "--preset", "legacy",
                    "--own-marks", "1-2"])
    assert "legacy preset" in capsys.readouterr().err


def test_split_photos_give_each_twin_its_own_photos_and_shared_ones_are_unchanged(copy_photos, landmarker_model,
                                                                                  tmp_path):
    """With several photos a person's twins are made from different ones (twin pairs are pairs of
    different photos, as with real twins); one photo is lent to both. `shared` stays as it was."""
    photos = copy_photos({"obama": ["obama.jpg", "obama2.jpg", "obama3.jpg"], "grace_hopper": ["grace_hopper.jpg"]})
    build = lambda output, **changes: twins.build_twin_dataset(
        photos, tmp_path / output, images_per_identity=4, landmarker_model=landmarker_model, progress=False,
        settings=replace(twins.PRESETS["default"], **changes))
    split, shared = build("split", twin_photos="split"), build("shared")
    records = json.loads(split.traits.read_text())
    assert records["settings"]["twin_photos"] == "split"
    sources = {identity: record["sources"] for identity, record in records["identities"].items()}
    assert len(sources["obama_a"]) == len(sources["obama_b"]) == 4
    assert set(sources["obama_a"]).isdisjoint(sources["obama_b"])
    assert set(sources["obama_a"]) | set(sources["obama_b"]) == {f"obama/{n}" for n in ("obama.jpg", "obama2.jpg",
                                                                                           "obama3.jpg")}
    assert sources["grace_hopper_a"] == sources["grace_hopper_b"] == ["grace_hopper/grace_hopper.jpg"] * 4
    shared_sources = {i: r["sources"] for i, r in json.loads(shared.traits.read_text())["identities"].items()}
    assert shared_sources["obama_a"] == shared_sources["obama_b"] and len(set(shared_sources["obama_a"])) == 3
    # the same marks either way; the one-photo person's images are the same files
    assert records["identities"]["obama_a"]["traits"][0]["kind"] == json.loads(
        shared.traits.read_text())["identities"]["obama_a"]["traits"][0]["kind"]
    for k in range(4):
        name = f"images/grace_hopper_b/grace_hopper_b_{k:02d}.jpg"
        assert (split.output_dir / name).read_bytes() == (shared.output_dir / name).read_bytes()
    with pytest.raises(ValueError, match="twin_photos='halves': choose one of shared, split"):
        replace(twins.PRESETS["default"], twin_photos="halves")
    assert twins.PRESETS["split"] == replace(twins.PRESETS["default"], twin_photos="split")  # the demo's --simulator
    parse = lambda *flags: twins.settings_from_args(twins.build_parser().parse_args(["--photo-root", str(photos),
                                                                                     *flags]))
    assert parse("--preset", "split").twin_photos == "split"
    assert parse("--preset", "legacy", "--twin-photos", "split") == replace(twins.PRESETS["legacy"],
                                                                            twin_photos="split")
