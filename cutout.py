"""Face geometry: region squares and the AdaFace alignment, from MediaPipe landmarks.

Pure functions, arrays in and arrays out; nothing here reads or writes files.

Conventions
- Landmarks are float pixel coordinates `(x, y)` of the image they were found in
  (x to the right, y down), shape `(478, 2)` or `(478, 3)` (a z column is ignored).
  They stay float throughout; nothing is rounded to whole pixels.
- "Left" and "right" in part names are the *image* sides of an unmirrored, upright
  photo: `left_eye` is the square around landmarks 35..168, which is the subject's
  right eye.
- Every square is returned as four corners in the order top-left, top-right,
  bottom-right, bottom-left *of the face's own frame*: "down" points from the forehead
  to the chin whatever the head's roll, so crops come out upright. The frame is always
  a rotation of the image frame, never a reflection, so a mirrored photo gives
  mirrored crops rather than upside-down ones. No corner sorting is involved.
- Images are uint8 `H×W×3` in whatever channel order the caller uses; warping does
  not look at channels.
"""

from __future__ import annotations

import cv2
import numpy as np

# The face regions, as data. Each region is the square whose two opposite sides have the
# midpoints of its landmark pair (`square_from_side_midpoints`: left and right sides for a pair
# across the face, top and bottom for a pair along it, upright either way); nothing else about a
# region is special-cased. The first five are the parts of the original design (their
# names, order and geometry are fixed: checkpoints and extractions depend on them). The
# others cover the skin the five miss; the pairs were chosen on the sample photos to cover
# most of the face oval while reaching into the hair as little as the square rule allows
# (the forehead square still reaches about a third of a face height above the oval).
REGION_LANDMARK_PAIRS: dict[str, tuple[int, int]] = {
    "left_eye": (35, 168),
    "right_eye": (168, 265),
    "nose": (36, 266),
    "mouth": (61, 291),
    "chin": (32, 262),
    "forehead": (21, 251),      # temple to temple, just above the brows
    "left_cheek": (23, 194),    # below the eye down to beside the mouth (image left)
    "right_cheek": (253, 418),  # the mirror image of left_cheek
    "jaw": (212, 432),          # beside and below the mouth corners, across the chin
}
REGION_NAMES: tuple[str, ...] = tuple(REGION_LANDMARK_PAIRS)
PART_NAMES: tuple[str, ...] = REGION_NAMES[:5]  # the default region list
PART_LANDMARK_PAIRS: dict[str, tuple[int, int]] = {name: REGION_LANDMARK_PAIRS[name] for name in PART_NAMES}
ADDED_REGION_NAMES: tuple[str, ...] = REGION_NAMES[5:]
# Named region lists for `--regions`; any comma-separated list of region names works too.
REGION_SETS: dict[str, tuple[str, ...]] = {
    "five": PART_NAMES,
    "extended": (*PART_NAMES, "forehead", "left_cheek", "right_cheek"),
    "all": REGION_NAMES,
}
REGION_COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, for drawings only
    "left_eye": (255, 64, 64), "right_eye": (255, 160, 0), "nose": (255, 255, 0), "mouth": (255, 0, 255),
    "chin": (0, 255, 255), "forehead": (64, 255, 64), "left_cheek": (64, 128, 255), "right_cheek": (160, 96, 255),
    "jaw": (255, 255, 255)}
# The face oval of the MediaPipe mesh, in order around the face (forehead top first).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

FOREHEAD_TOP, CHIN_BOTTOM = 10, 152
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)
IRIS_CENTRES = (468, 473)            # present in the 478-point model
EYE_CORNERS = ((33, 133), (362, 263))  # fallback eye centres for 468-point meshes

# The standard 112×112 ArcFace five-point template (image-left eye first).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ALIGNED_FACE_SIZE = 112

# Downscaling by more than this factor is anti-aliased first (bilinear warping alone
# skips source pixels and turns fine skin texture into noise).
_ANTIALIAS_ABOVE = 1.5


def face_down_axis(landmarks_px: np.ndarray) -> np.ndarray:
    """Unit vector pointing from the top of the forehead to the bottom of the chin."""
    down = landmarks_px[CHIN_BOTTOM, :2] - landmarks_px[FOREHEAD_TOP, :2]
    length = np.linalg.norm(down)
    if not np.isfinite(length) or length == 0:
        raise ValueError("degenerate landmarks: forehead and chin coincide")
    return down / length


def right_of(down: np.ndarray) -> np.ndarray:
    """The face frame's x axis for a given down axis (a +90° rotation in image coordinates)."""
    return np.array([down[1], -down[0]])


def square_from_side_midpoints(p: np.ndarray, q: np.ndarray, down_hint: np.ndarray) -> np.ndarray:
    """Corners `(4, 2)` TL, TR, BR, BL of the square with side midpoints `p` and `q`.

    The square's axes follow `q - p`; `down_hint` only decides which of its four axis
    directions is "down" (the one closest to the hint), so the result is upright and never
    reflected: a pair across the face (eyes, mouth corners) gives the left and right sides,
    a pair along it (below an eye to beside the mouth) the top and bottom sides.
    """
    p = np.asarray(p, dtype=np.float64)[:2]
    q = np.asarray(q, dtype=np.float64)[:2]
    side = np.linalg.norm(q - p)
    if not np.isfinite(side) or side == 0:
        raise ValueError("degenerate square: both side midpoints coincide")
    across = (q - p) / side
    down = np.array([-across[1], across[0]])
    if abs(np.dot(across, down_hint)) > abs(np.dot(down, down_hint)):
        down = across
    if np.dot(down, down_hint) < 0:
        down = -down
    right = right_of(down)
    centre = (p + q) / 2
    half_right, half_down = right * side / 2, down * side / 2
    return np.stack([centre - half_right - half_down, centre + half_right - half_down,
                     centre + half_right + half_down, centre - half_right + half_down])


def parse_regions(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A region list from a set name (`five`, `extended`, `all`) or comma-separated names.

    Raises ValueError naming the unknown or repeated regions; the order given is kept
    (it is the order of the part encoders and of the embedding).
    """
    if isinstance(text, str):
        names = REGION_SETS.get(text.strip()) or tuple(n.strip() for n in text.split(",") if n.strip())
    else:
        names = tuple(text)
    unknown = [name for name in names if name not in REGION_LANDMARK_PAIRS]
    if unknown or not names:
        raise ValueError(f"unknown regions {unknown or [text]}: choose a set ({', '.join(REGION_SETS)}) or "
                         f"comma-separated names from {', '.join(REGION_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"regions listed twice in {list(names)}")
    return names


def part_squares(landmarks_px: np.ndarray, regions: tuple[str, ...] = PART_NAMES) -> dict[str, np.ndarray]:
    """Corner arrays `(4, 2)` of the squares of `regions` (default: the five parts), keyed by name."""
    down = face_down_axis(landmarks_px)
    return {name: square_from_side_midpoints(landmarks_px[REGION_LANDMARK_PAIRS[name][0]],
                                             landmarks_px[REGION_LANDMARK_PAIRS[name][1]], down)
            for name in regions}


def polygon_mask(polygon_px: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean `H×W` mask of the pixels whose centres lie inside a polygon (pixel coordinates)."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(polygon_px)[:, :2] * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def face_oval_mask(landmarks_px: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean `H×W` mask of the face oval (the mesh's outline: forehead top, temples, jaw)."""
    return polygon_mask(np.asarray(landmarks_px, dtype=np.float64)[list(FACE_OVAL), :2], shape)


def coverage_share(landmarks_px: np.ndarray, shape: tuple[int, ...], regions: tuple[str, ...]) -> float:
    """Share of face-oval pixels that lie inside at least one of the `regions`' squares."""
    oval = face_oval_mask(landmarks_px, shape)
    covered = np.zeros_like(oval)
    for corners in part_squares(np.asarray(landmarks_px, dtype=np.float64), regions).values():
        covered |= polygon_mask(corners, shape)
    return float((covered & oval).sum() / max(oval.sum(), 1))


def draw_regions(image: np.ndarray, squares: dict[str, np.ndarray], thickness: int = 2,
                 labels: bool = True) -> np.ndarray:
    """A copy of `image` (uint8 H×W×3) with each square outlined in its region's colour.

    Colours come from `REGION_COLOURS` in the image's own channel order (the names say RGB).
    """
    drawn = np.ascontiguousarray(image, dtype=np.uint8).copy()
    for name, corners in squares.items():
        colour = REGION_COLOURS[name]
        cv2.polylines(drawn, [np.round(corners * 16).astype(np.int32)], True, colour, thickness, cv2.LINE_AA, shift=4)
        if labels:
            x, y = np.round(corners.mean(0)).astype(int)
            cv2.putText(drawn, name, (int(x) - 4 * len(name), int(y)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                        cv2.LINE_AA)
    return drawn


def regions_containing(point_px: np.ndarray, squares: dict[str, np.ndarray]) -> list[str]:
    """Names of the squares (corner arrays TL, TR, BR, BL) that contain a point, in table order."""
    point = np.asarray(point_px, dtype=np.float64)[:2]
    inside = []
    for name, corners in squares.items():
        ex, ey = corners[1] - corners[0], corners[3] - corners[0]
        u, v = (point - corners[0]) @ ex / (ex @ ex), (point - corners[0]) @ ey / (ey @ ey)
        if 0 <= u <= 1 and 0 <= v <= 1:
            inside.append(name)
    return inside


def _antialias_region(image: np.ndarray, src_corners: np.ndarray, scale: float):
    """Area-downscale the image region under `src_corners` by `scale`.

    Returns the smaller region and the affine that maps original coordinates into it.
    """
    height, width = image.shape[:2]
    x0 = int(max(np.floor(src_corners[:, 0].min()) - 1, 0))
    y0 = int(max(np.floor(src_corners[:, 1].min()) - 1, 0))
    x1 = int(min(np.ceil(src_corners[:, 0].max()) + 2, width))
    y1 = int(min(np.ceil(src_corners[:, 1].max()) + 2, height))
    if x1 <= x0 or y1 <= y0:
        return image, np.eye(3)
    region = image[y0:y1, x0:x1]
    new_w = max(1, int(round((x1 - x0) / scale)))
    new_h = max(1, int(round((y1 - y0) / scale)))
    small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    sx, sy = new_w / (x1 - x0), new_h / (y1 - y0)
    # Pixel centres: original x ↦ (x - x0 + 0.5) * sx - 0.5 in the small region.
    to_small = np.array([[sx, 0, (0.5 - x0) * sx - 0.5],
                         [0, sy, (0.5 - y0) * sy - 0.5],
                         [0, 0, 1]])
    return small, to_small


def warp_square(image: np.ndarray, corners: np.ndarray, size_px: int) -> np.ndarray:
    """Resample the square `corners` (TL, TR, BR, BL) to an upright `size_px`² image.

    The square's outer edges map onto the outer edges of the output pixels; area
    outside the image is black.
    """
    corners = np.asarray(corners, dtype=np.float64)
    source, to_source = image, np.eye(3)
    scale = np.linalg.norm(corners[1] - corners[0]) / size_px
    if scale > _ANTIALIAS_ABOVE:
        source, to_source = _antialias_region(image, corners, scale)
    src = (to_source[:2, :2] @ corners[[0, 1, 3]].T).T + to_source[:2, 2]
    dst = np.array([[-0.5, -0.5], [size_px - 0.5, -0.5], [-0.5, size_px - 0.5]])
    matrix = cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32))
    return cv2.warpAffine(source, matrix, (size_px, size_px), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def cut_parts(image: np.ndarray, landmarks_px: np.ndarray, crop_size_px: int = 224,
              regions: tuple[str, ...] = PART_NAMES) -> dict[str, np.ndarray]:
    """The upright crops of `regions` (default: the five parts), `crop_size_px`² each, in the
    image's channel order."""
    return {name: warp_square(image, corners, crop_size_px)
            for name, corners in part_squares(landmarks_px, regions).items()}


def five_points(landmarks_px: np.ndarray) -> np.ndarray:
    """ArcFace's five points `(5, 2)`: eye centres, nose tip, mouth corners.

    Each pair is ordered along the face's own x axis (the one that appears on the
    left of the aligned face comes first), which holds for tilted and mirrored faces.
    """
    landmarks_px = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    if len(landmarks_px) > max(IRIS_CENTRES):
        eyes = landmarks_px[list(IRIS_CENTRES)]
    else:
        eyes = np.stack([landmarks_px[list(pair)].mean(axis=0) for pair in EYE_CORNERS])
    mouth = landmarks_px[list(MOUTH_CORNERS)]
    right = right_of(face_down_axis(landmarks_px))
    if eyes[0] @ right > eyes[1] @ right:
        eyes = eyes[::-1]
    if mouth[0] @ right > mouth[1] @ right:
        mouth = mouth[::-1]
    return np.stack([eyes[0], eyes[1], landmarks_px[NOSE_TIP], mouth[0], mouth[1]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `src` to `dst` (2×3).

    Umeyama's closed form, restricted to proper rotations (no reflection).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c ** 2).sum() / len(src)
    if src_var == 0:
        raise ValueError("degenerate points: all source points coincide")
    scale = (singular * sign).sum() / src_var
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks_px: np.ndarray) -> np.ndarray:
    """The 2×3 similarity taking image pixels to the 112×112 ArcFace frame."""
    return similarity_transform(five_points(landmarks_px), ARCFACE_TEMPLATE_112)


def align_face(image: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """The aligned 112×112 face (same channel order as `image`)."""
    matrix = alignment_matrix(landmarks_px)
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    source = image
    if 1 / scale > _ANTIALIAS_ABOVE:
        corners = cv2.invertAffineTransform(matrix) @ np.array(
            [[0, 0, 1], [ALIGNED_FACE_SIZE, 0, 1], [ALIGNED_FACE_SIZE, ALIGNED_FACE_SIZE, 1],
             [0, ALIGNED_FACE_SIZE, 1]], dtype=np.float64).T
        source, to_source = _antialias_region(image, corners.T, 1 / scale)
        matrix = matrix @ np.linalg.inv(to_source)
    return cv2.warpAffine(source, matrix.astype(np.float32), (ALIGNED_FACE_SIZE, ALIGNED_FACE_SIZE),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def largest_face(faces_px: list[np.ndarray]) -> int:
    """Index of the face whose landmark bounding box has the largest area."""
    if not faces_px:
        raise ValueError("no faces given")
    areas = [float(np.ptp(face[:, 0]) * np.ptp(face[:, 1])) for face in faces_px]
    return int(np.argmax(areas))
