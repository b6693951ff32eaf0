"""Geometry of part squares and of the AdaFace alignment (synthetic landmarks)."""

import cv2
import numpy as np
import pytest

import cutout

SIZE = 400
CROP = 64


def synthetic_face() -> tuple[np.ndarray, np.ndarray]:
    """An upright 'face': landmarks at plausible spots and an image whose every part
    square holds an asymmetric pattern (so a wrong corner order cannot go unnoticed)."""
    rng = np.random.default_rng(0)
    landmarks = np.full((478, 2), SIZE / 2, dtype=np.float64)
    placed = {10: (200, 60), 152: (200, 340), 35: (120, 150), 168: (200, 150), 265: (280, 150),
              36: (165, 215), 266: (235, 215), 61: (160, 265), 291: (240, 265), 32: (165, 305),
              262: (235, 305), 1: (200, 210), 468: (150, 150), 473: (250, 150), 33: (130, 150),
              133: (170, 150), 362: (230, 150), 263: (270, 150)}
    for index, point in placed.items():
        landmarks[index] = point
    # Smooth random texture plus a bright block in one corner of the image: asymmetric everywhere.
    noise = rng.uniform(0, 255, (SIZE // 8, SIZE // 8, 3)).astype(np.uint8)
    image = cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    cv2.putText(image, "FACE", (110, 230), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 8)
    return image, landmarks


def rotate(image, landmarks, degrees):
    matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), degrees, 1.0)
    rotated = cv2.warpAffine(image, matrix, (SIZE, SIZE), flags=cv2.INTER_CUBIC)
    return rotated, landmarks @ matrix[:, :2].T + matrix[:, 2]


def mirror(image, landmarks):
    flipped = landmarks.copy()
    flipped[:, 0] = SIZE - 1 - flipped[:, 0]
    return image[:, ::-1].copy(), flipped


def crop_difference(a, b):
    # Compare the inner region only: a rotated source has fresh black borders at the edges.
    m = CROP // 6
    return np.abs(a[m:-m, m:-m].astype(float) - b[m:-m, m:-m].astype(float)).mean()


def test_square_has_given_side_midpoints_and_is_upright():
    p, q = np.array([10.0, 20.0]), np.array([50.0, 20.0])
    corners = cutout.square_from_side_midpoints(p, q, down_hint=np.array([0.0, 1.0]))
    tl, tr, br, bl = corners
    np.testing.assert_allclose((tl + bl) / 2, p)
    np.testing.assert_allclose((tr + br) / 2, q)
    for a, b in [(tl, tr), (tr, br), (br, bl), (bl, tl)]:
        assert np.linalg.norm(b - a) == pytest.approx(40.0)
    assert tl[1] < bl[1] and tl[0] < tr[0]  # top above bottom, left of right
    # The hint only picks "down"; swapping p and q must give the same square.
    np.testing.assert_allclose(cutout.square_from_side_midpoints(q, p, np.array([0.0, 1.0])), corners)


@pytest.mark.parametrize("degrees", [-60, -45, -30, -15, 0, 15, 30, 44, 45, 46, 60])
def test_crops_follow_head_rotation(degrees):
    image, landmarks = synthetic_face()
    reference = cutout.cut_parts(image, landmarks, CROP)
    rotated, rotated_landmarks = rotate(image, landmarks, degrees)
    crops = cutout.cut_parts(rotated, rotated_landmarks, CROP)
    for name in cutout.PART_NAMES:
        same = crop_difference(crops[name], reference[name])
        upside_down = crop_difference(crops[name], reference[name][::-1, ::-1])
        quarter = crop_difference(crops[name], np.rot90(reference[name]))
        assert same < 12, (name, same)
        assert same < upside_down / 2 and same < quarter / 2, (name, same, upside_down, quarter)


@pytest.mark.parametrize("degrees", [-60, -45, 0, 45, 60])
def test_mirrored_face_gives_mirrored_crops(degrees):
    image, landmarks = synthetic_face()
    reference = cutout.cut_parts(image, landmarks, CROP)
    mirrored, mirrored_landmarks = rotate(*mirror(image, landmarks), degrees)
    crops = cutout.cut_parts(mirrored, mirrored_landmarks, CROP)
    for name in cutout.PART_NAMES:
        flipped = crop_difference(crops[name], reference[name][:, ::-1])
        upside_down = crop_difference(crops[name], reference[name][::-1, :])
        assert flipped < 12, (name, flipped)
        assert flipped < upside_down / 2


def test_landmarks_are_not_rounded():
    image, landmarks = synthetic_face()
    a = cutout.cut_parts(image, landmarks, CROP)["nose"]
    b = cutout.cut_parts(image, landmarks + [0.3, 0.0], CROP)["nose"]
    assert not np.array_equal(a, b)


def test_downscaling_is_antialiased():
    checker = (np.indices((800, 800)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.dstack([checker] * 3)
    corners = cutout.square_from_side_midpoints([0, 400], [800, 400], np.array([0.0, 1.0]))
    crop = cutout.warp_square(image, corners, 50)
    inner = crop[5:-5, 5:-5].astype(float)
    assert abs(inner.mean() - 127.5) < 5 and inner.std() < 5


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.7, 1.8, np.array([5.0, -3.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rotation.T + shift
    matrix = cutout.similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = cutout.ARCFACE_TEMPLATE_112
    mirrored = src * [-1, 1]
    assert np.linalg.det(cutout.similarity_transform(mirrored, src)[:, :2]) > 0


def landmarks_with_five_points(points: np.ndarray) -> np.ndarray:
    """478 landmarks whose five ArcFace points (and forehead/chin) are given by `points`."""
    landmarks = np.zeros((478, 2))
    eye_left, eye_right, nose, mouth_left, mouth_right = points
    landmarks[468], landmarks[473], landmarks[1] = eye_left, eye_right, nose
    landmarks[61], landmarks[291] = mouth_left, mouth_right
    eyes_mid, mouth_mid = (eye_left + eye_right) / 2, (mouth_left + mouth_right) / 2
    landmarks[10] = eyes_mid - (mouth_mid - eyes_mid)
    landmarks[152] = mouth_mid + (mouth_mid - eyes_mid)
    return landmarks


@pytest.mark.parametrize("degrees", [-60, -20, 0, 45, 60])
@pytest.mark.parametrize("mirrored", [False, True])
def test_alignment_puts_points_on_the_template(degrees, mirrored):
    template = cutout.ARCFACE_TEMPLATE_112
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = 2.7 * template @ rotation.T + [300.0, 120.0]
    landmarks = landmarks_with_five_points(points)
    if mirrored:  # a mirrored photo: the subject's eyes swap image sides
        landmarks[:, 0] = 1000 - landmarks[:, 0]
        landmarks[[468, 473]] = landmarks[[473, 468]]
        landmarks[[61, 291]] = landmarks[[291, 61]]
    matrix = cutout.alignment_matrix(landmarks)
    aligned = cutout.five_points(landmarks) @ matrix[:, :2].T + matrix[:, 2]
    # The template is not exactly left-right symmetric, so a mirrored one fits to ~1e-3 px.
    np.testing.assert_allclose(aligned, template, atol=1e-2 if mirrored else 1e-6)


def test_aligned_face_shows_the_eyes_at_the_template():
    template = cutout.ARCFACE_TEMPLATE_112
    image = np.zeros((500, 500, 3), np.uint8)
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = 3.0 * template @ rotation.T + [150.0, 60.0]
    for x, y in points[:2]:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1, cv2.LINE_AA)
    aligned = cutout.align_face(image, landmarks_with_five_points(points))
    assert aligned.shape == (112, 112, 3)
    for x, y in template[:2]:
        ys, xs = np.nonzero(aligned[int(y) - 8:int(y) + 8, int(x) - 8:int(x) + 8, 0] > 128)
        found = np.array([xs.mean() + int(x) - 8, ys.mean() + int(y) - 8])
        assert np.linalg.norm(found - [x, y]) < 1.5


def test_largest_face_is_chosen():
    small = np.array([[0, 0], [10, 10]], dtype=float)
    large = np.array([[0, 0], [50, 40]], dtype=float)
    assert cutout.largest_face([small, large, small]) == 1


def test_degenerate_landmarks_are_rejected():
    with pytest.raises(ValueError):
        cutout.part_squares(np.zeros((478, 2)))
