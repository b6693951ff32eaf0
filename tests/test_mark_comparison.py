"""The mark comparison: the skin face, the canonical face, details, differences and the mark weight."""

import numpy as np
import pytest

import mark_comparison as mc
import verification_pairs as vp
from synthetic_extraction import synthetic_landmarks, synthetic_skin, write_synthetic_extraction


def rotated(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points[:, :2] @ rotation.T * scale + np.array(shift)


@pytest.fixture(scope="module")
def face():
    return mc.CanonicalFace.from_landmarks([synthetic_landmarks()])


def test_the_skin_face_puts_each_landmark_where_its_coordinates_say():
    landmarks = rotated(synthetic_landmarks(), 0, 1.7, (40, 25))
    photo = np.full((800, 700, 3), 120, np.uint8)
    x, y = np.round(landmarks[1]).astype(int)
    photo[y - 2:y + 3, x - 2:x + 3] = 255  # a bright square on landmark 1
    cut = mc.skin_face(photo, landmarks)
    assert cut.shape == (mc.SKIN_FACE_PX, mc.SKIN_FACE_PX, 3)
    u, v = mc.landmarks_in_skin_face(landmarks)[1]
    assert cut[int(round(v)), int(round(u))].min() > 200
    ys, xs = np.nonzero(cut[:, :, 0] > 200)
    assert abs(xs.mean() - u) < 1.0 and abs(ys.mean() - v) < 1.0


def test_the_canonical_face_takes_out_position_size_and_roll(face):
    moved = mc.CanonicalFace.from_landmarks([rotated(synthetic_landmarks(), 20, 0.6, (300, -40))])
    np.testing.assert_allclose(moved.layout, face.layout, atol=1e-6)
    np.testing.assert_array_equal(mc.CanonicalFace.from_state(face.state()).compared, face.compared)
    side = face.settings.size_px
    assert face.compared.shape == (side, side) and 0.2 < face.compared.mean() < 0.8
    for outline in (mc.LEFT_EYE_OUTLINE, mc.LIPS_OUTLINE):  # eyes and lips are left out
        x, y = np.round(face.layout[list(outline)].mean(0)).astype(int)
        assert not face.compared[y, x]


def test_warping_a_face_onto_its_own_layout_changes_nothing_inside_it(face):
    rng = np.random.default_rng(0)
    side = face.settings.size_px
    image = rng.integers(0, 256, (side, side, 3)).astype(np.uint8)
    warped = face.warp(image, face.layout)
    np.testing.assert_allclose(warped[face.compared].astype(int), image[face.compared].astype(int), atol=1)


def skin_details(face, marks: list[tuple[int, int] | None], noise_seed: int = 0, shift: int = 0):
    """Details of one skin (the same family texture), each with photo noise and optionally a dark dot."""
    import cv2

    skin = synthetic_skin(np.random.default_rng(7))
    landmarks = mc.landmarks_in_skin_face(synthetic_landmarks())
    rng = np.random.default_rng(noise_seed)
    details = []
    for mark in marks:
        image = np.clip(skin + rng.normal(0, 2, skin.shape), 0, 255).astype(np.uint8)
        if mark is not None:
            cv2.circle(image, mark, 3, (90, 90, 110), -1)
        details.append(face.detail(np.roll(image, shift, axis=1), landmarks + [shift, 0]))
    return np.stack(details)


def test_a_mark_that_one_photo_lacks_makes_a_larger_difference_than_photo_noise(face):
    cheek = tuple(int(v) for v in mc.landmarks_in_skin_face(synthetic_landmarks())[[33, 61]].mean(0))
    details = skin_details(face, [None, None, cheek, cheek])
    difference = lambda i, j: mc.mark_difference(face, details[i], details[j])
    assert difference(0, 0) == 0.0
    assert difference(0, 2) == pytest.approx(difference(2, 0))  # symmetric
    noise_only, same_mark = difference(0, 1), difference(2, 3)
    assert difference(0, 2) > 1.5 * max(noise_only, same_mark)
    np.testing.assert_allclose(mc.mark_differences(face, details, np.array([0, 0]), np.array([1, 2])),
                               [noise_only, difference(0, 2)])
    scale = mc.difference_scale(np.array([noise_only, same_mark]))
    similarities = mc.mark_similarities(np.array([0.0, noise_only, difference(0, 2)]), scale)
    assert similarities[0] == 1.0 and similarities[0] > similarities[1] > similarities[2] > 0


def test_a_whole_face_moved_by_a_pixel_or_two_is_no_mark(face):
    still, moved = skin_details(face, [None]), skin_details(face, [None], shift=2)
    cheek = tuple(int(v) for v in mc.landmarks_in_skin_face(synthetic_landmarks())[[33, 61]].mean(0))
    marked = skin_details(face, [cheek], noise_seed=1)
    assert mc.mark_difference(face, still[0], moved[0]) < 0.7 * mc.mark_difference(face, still[0], marked[0])


def test_bad_landmarks_and_images_are_refused(face):
    with pytest.raises(mc.MarkComparisonError, match="478 finite landmarks"):
        face.warp(np.zeros((10, 10, 3), np.uint8), np.zeros((468, 2)))
    with pytest.raises(mc.MarkComparisonError, match="uint8"):
        face.detail(np.zeros((10, 10), np.uint8), face.layout)
    with pytest.raises(mc.MarkComparisonError, match="eye centres coincide"):
        mc.CanonicalFace.from_landmarks([np.zeros((478, 2))])
    with pytest.raises(mc.MarkComparisonError, match="no faces"):
        mc.CanonicalFace.from_landmarks([])


def test_an_extraction_without_skin_faces_is_named_with_the_way_out(tmp_path):
    write_synthetic_extraction(tmp_path, families=1, images_per_person=1)
    folder = next(p for p in tmp_path.glob("*/*") if p.is_dir())
    face = mc.canonical_face_of([folder])
    assert face.detail_of_extracted(folder).shape == (face.settings.size_px,) * 2
    (folder / "skin_face.bmp").unlink()
    with pytest.raises(mc.MarkComparisonError, match=r"skin_face\.bmp: missing.*--mark-weight 0"):
        face.detail_of_extracted(folder)


def test_the_mark_weight_follows_the_recognisers_rule():
    rng = np.random.default_rng(0)
    kind = np.repeat([vp.GENUINE, vp.TWIN, vp.GENERAL], [300, 300, 100])
    guesses = rng.uniform(0.5, 0.9, 700)  # a decision that cannot tell twins apart
    telling = np.where(kind == vp.GENUINE, rng.uniform(0.6, 1.0, 700), rng.uniform(0.0, 0.5, 700))
    weight, eers = vp.choose_mark_weight(guesses, telling, guesses, kind, None)
    assert weight > 0 and eers[weight] < eers[0.0] - vp.RECOGNISER_WEIGHT_TOLERANCE
    lowest = min(eers.values())  # the smallest weight within the margin of the best
    assert eers[weight] <= lowest + vp.RECOGNISER_WEIGHT_TOLERANCE
    assert all(eers[w] > lowest + vp.RECOGNISER_WEIGHT_TOLERANCE for w in eers if w < weight)
    assert vp.choose_mark_weight(guesses, rng.uniform(0, 1, 700), guesses, kind, None)[0] == 0.0  # no help
    # a decision that already tells twins apart keeps marks that add nothing out
    assert vp.choose_mark_weight(telling, guesses, telling, kind, None)[0] == 0.0
    assert vp.choose_mark_weight(guesses, telling, guesses, np.full(700, vp.GENUINE), None) == (0.0, {})
    scores, w, m = vp.decision_with_marks(guesses, telling, telling, kind, None, 0.5, 0.25)
    np.testing.assert_allclose(scores, 0.75 * (0.5 * guesses + 0.5 * telling) + 0.25 * telling)
    assert (w, m) == (0.5, 0.25)
    assert vp.decision_with_marks(guesses, telling, None, kind, None, 0.0, None)[2] == 0.0  # no marks: weight 0
    gate = 0.7
    gated = vp.decision_with_marks(guesses, guesses, telling, kind, gate, 0.0, 1.0)[0]
    assert ((gated < -1) == (guesses < gate)).all()


def test_each_details_structure_is_made_once_however_many_pairs_it_is_in(face, monkeypatch):
    details = skin_details(face, [None, None, None])
    one_by_one = [mc.mark_difference(face, details[i], details[j]) for i, j in [(0, 1), (0, 2), (1, 2)]]
    made = []
    real = mc.structure_of
    monkeypatch.setattr(mc, "structure_of", lambda face, detail: made.append(1) or real(face, detail))
    together = mc.mark_differences(face, details, np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert len(made) == 3
    assert together.tolist() == one_by_one
