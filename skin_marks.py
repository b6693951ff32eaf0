"""Small persistent face marks anywhere on the face, for the twin simulator (`make_twin_demo.py`).

Pure functions on arrays: a photo (uint8 RGB `H×W×3`) and its MediaPipe landmarks in
pixels (pixel centres at integers, OpenCV's convention).

A mark is defined relative to the face, not to a photo, so one twin's mark sits on the
same spot of the skin in every photo of that twin:
- point marks (pigment spot, freckle cluster, scar, pit, vascular spot) are anchored in a
  triangle of the face mesh (`anchor`: three landmark indices, `weights`: barycentric
  coordinates), with sizes in *face heights* (landmark 10 to landmark 152);
- the others are anchored on landmarks: a brow's outline (gap, density), the centre of the
  nose, lips, chin or an upper eyelid (a local stretch), an iris (a colour sector).
`side` is the image side (`left`/`right`) of an unmirrored, upright photo, as in `cutout`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

import cutout

FOREHEAD_TOP, CHIN_BOTTOM = cutout.FOREHEAD_TOP, cutout.CHIN_BOTTOM
POINT_MARKS = ("pigment_spot", "freckle_cluster", "scar", "pit", "vascular_spot")
BROW_MARKS = ("brow_gap", "brow_density")
SHAPE_MARKS = ("nose_shape", "lip_shape", "chin_shape", "eyelid_shape")
MARK_KINDS = (*POINT_MARKS, *BROW_MARKS, *SHAPE_MARKS, "iris_sector")
# Relative frequency of each kind when a twin's marks are drawn.
KIND_WEIGHTS = {"pigment_spot": 0.22, "freckle_cluster": 0.1, "scar": 0.1, "pit": 0.08, "vascular_spot": 0.08,
                "brow_gap": 0.06, "brow_density": 0.06, "nose_shape": 0.06, "lip_shape": 0.06, "chin_shape": 0.06,
                "eyelid_shape": 0.06, "iris_sector": 0.06}
# Landmarks, per image side.
EYES = {"left": (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
        "right": (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)}
BROWS = {"left": (70, 63, 105, 66, 107, 55, 65, 52, 53, 46),   # outline order, inner end at 107/55
         "right": (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)}
BROW_ENDS = {"left": (46, 55), "right": (276, 285)}             # (outer end, inner end)
IRISES = {"left": (468, (469, 470, 471, 472)), "right": (473, (474, 475, 476, 477))}
UPPER_LIDS = {"left": 159, "right": 386}
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSTRILS = (64, 98, 97, 2, 326, 327, 294, 240, 460)
WARP_CENTRES = {"nose_shape": (1, 2, 98, 327), "lip_shape": (13, 14), "chin_shape": (199, 175)}
# Clear skin keeps this far (in face heights) from eyes, brows, lips, nostrils and the face outline;
# the top of the oval is often hair, so its upper band is left out too.
FEATURE_MARGIN, OUTLINE_MARGIN, HAIRLINE_BAND = 0.03, 0.03, 0.08
PLACEMENTS = ("anywhere", "parts", "outside_parts")  # where point marks may go, relative to the five parts


@dataclass(frozen=True)
class Mark:
    """One persistent mark; see the module docstring for the frames."""

    kind: str                                    # one of MARK_KINDS
    anchor: tuple[int, int, int] | None          # point marks: a mesh triangle
    weights: tuple[float, float, float] | None   # point marks: barycentric position in it
    side: str | None                             # brows, eyelids, irises: "left" or "right" (image sides)
    size: float                                  # radius or length, in face heights (brow gap: share of the brow)
    strength: float                              # contrast, density or stretch; sign = direction
    angle_deg: float                             # orientation in the face frame (scar, stretch axis, iris sector)
    position: float                              # brow gap: place along the brow, 0 outer … 1 inner end
    pattern_seed: int                            # outline, dot layout, scar curve

    @classmethod
    def from_json(cls, record: dict) -> "Mark":
        values = {k: record[k] for k in cls.__dataclass_fields__}
        for key in ("anchor", "weights"):
            values[key] = None if values[key] is None else tuple(values[key])
        return cls(**values)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def coverage(distance_px: np.ndarray, radius_px: float) -> np.ndarray:
    """A soft-edged disc: 1 inside, 0 outside, a ramp at least one pixel wide at the edge."""
    soft = max(0.7, 0.3 * radius_px)
    return 1.0 - smoothstep(radius_px - soft, radius_px + soft, distance_px)


def skin_tone(roi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.median(roi[mask], axis=0) if mask.sum() >= 4 else np.median(roi.reshape(-1, 3), axis=0)


def face_height(landmarks_px: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks_px[CHIN_BOTTOM, :2] - landmarks_px[FOREHEAD_TOP, :2]))


@functools.cache
def mesh_triangles() -> np.ndarray:
    """Triangles `(T, 3)` of MediaPipe's face mesh (from its tessellation edges)."""
    from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections

    edges = {(c.start, c.end) for c in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    return np.array(sorted(triangles), dtype=np.int64)


def _hull_mask(points: np.ndarray, shape: tuple[int, ...], grow_px: float) -> np.ndarray:
    mask = cutout.polygon_mask(cv2.convexHull(points.astype(np.float32))[:, 0], shape).astype(np.uint8)
    size = int(2 * round(grow_px) + 1)
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)


def clear_skin_mask(landmarks_px: np.ndarray, shape: tuple[int, ...], placement: str = "anywhere") -> np.ndarray:
    """Boolean `H×W` mask where point marks may go: the face oval without eyes, brows, lips,
    nostrils, its outline band and its top band (hair). `placement="parts"` keeps only the
    skin inside the five part squares, `"outside_parts"` only the skin outside all of them."""
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    height = face_height(points)
    oval = cutout.face_oval_mask(points, shape).astype(np.uint8)
    size = int(2 * round(OUTLINE_MARGIN * height) + 1)
    skin = cv2.erode(oval, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)
    for feature in (*EYES.values(), *BROWS.values(), LIPS, NOSTRILS):
        skin &= ~_hull_mask(points[list(feature)], shape, FEATURE_MARGIN * height)
    down = cutout.face_down_axis(points)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    depth = ((np.stack([xs, ys], -1) - points[FOREHEAD_TOP]) @ down) / height
    skin &= depth > HAIRLINE_BAND
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if placement != "anywhere":
        inside = np.zeros_like(skin)
        for corners in cutout.part_squares(points).values():
            inside |= cutout.polygon_mask(corners, shape)
        skin &= inside if placement == "parts" else ~inside
    return skin


def anchor_of(point_px: np.ndarray, landmarks_px: np.ndarray) -> tuple[tuple[int, int, int], tuple[float, ...]]:
    """The mesh triangle containing a point (or the nearest one) and the point's barycentric weights."""
    triangles = mesh_triangles()
    corners = np.asarray(landmarks_px, dtype=np.float64)[triangles][:, :, :2]  # T×3×2
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, np.asarray(point_px, dtype=np.float64) - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)
    wb = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det
    wc = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det
    weights = np.stack([1 - wb - wc, wb, wc], 1)
    outside = np.clip(-weights, 0, None).sum(1)  # 0 for the triangles that contain the point
    best = int(np.argmin(outside))
    w = np.clip(weights[best], 0, None)
    w = w / w.sum()
    return tuple(int(i) for i in triangles[best]), tuple(round(float(x), 5) for x in w)


def mark_centre(mark: Mark, landmarks_px: np.ndarray) -> np.ndarray:
    """Where a mark is in a photo, in pixels `(2,)` (for shapes: the centre of the stretch)."""
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    if mark.anchor is not None:
        return np.asarray(mark.weights) @ points[list(mark.anchor)]
    if mark.kind in BROW_MARKS:
        outer, inner = points[list(BROW_ENDS[mark.side])]
        return outer + (mark.position if mark.kind == "brow_gap" else 0.5) * (inner - outer)
    if mark.kind == "eyelid_shape":
        return points[UPPER_LIDS[mark.side]]
    if mark.kind == "iris_sector":
        return points[IRISES[mark.side][0]]
    return points[list(WARP_CENTRES[mark.kind])].mean(0)


def sample_mark(rng: np.random.Generator, kinds: tuple[str, ...], skin_px: np.ndarray,
                landmarks_px: np.ndarray) -> Mark:
    """Draw one mark of one of `kinds`. `skin_px`: `(N, 2)` pixels of clear skin in the photo
    that anchors point marks (`landmarks_px` are that photo's)."""
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    anchor = barycentric = side = None
    position, angle = 0.0, float(rng.uniform(-180, 180))
    if kind in POINT_MARKS:
        if len(skin_px) == 0:
            raise ValueError("no clear skin to place a mark on")
        anchor, barycentric = anchor_of(skin_px[rng.integers(len(skin_px))], landmarks_px)
    else:
        side = ("left", "right")[int(rng.integers(2))]
        if kind in WARP_CENTRES:  # nose, lips and chin are in the middle of the face
            side = None
    sign = float(rng.choice([-1, 1]))
    # Ranges reach down to barely visible: the lower ends are at the edge of what a 64-px crop shows.
    size, strength = {
        "pigment_spot": lambda: (rng.uniform(0.004, 0.016), rng.uniform(0.08, 0.6)),
        "freckle_cluster": lambda: (rng.uniform(0.015, 0.04), rng.uniform(0.06, 0.35)),
        "scar": lambda: (rng.uniform(0.025, 0.08), rng.uniform(0.08, 0.45)),
        "pit": lambda: (rng.uniform(0.004, 0.01), rng.uniform(0.1, 0.45)),
        "vascular_spot": lambda: (rng.uniform(0.003, 0.01), rng.uniform(0.1, 0.55)),
        "brow_gap": lambda: (rng.uniform(0.08, 0.22), rng.uniform(0.3, 0.9)),
        "brow_density": lambda: (0.0, sign * rng.uniform(0.1, 0.5)),
        "nose_shape": lambda: (0.11, sign * rng.uniform(0.03, 0.14)),
        "lip_shape": lambda: (0.1, sign * rng.uniform(0.03, 0.14)),
        "chin_shape": lambda: (0.1, sign * rng.uniform(0.03, 0.14)),
        "eyelid_shape": lambda: (0.045, sign * rng.uniform(0.05, 0.2)),
        "iris_sector": lambda: (rng.uniform(40, 120), rng.uniform(0.15, 0.6)),
    }[kind]()
    if kind == "brow_gap":
        position = float(rng.uniform(0.2, 0.8))
    if kind in ("lip_shape", "chin_shape", "eyelid_shape"):
        angle = 90.0  # fuller or thinner lips, a longer or shorter chin, a heavier or lighter lid
    return Mark(kind, anchor, barycentric, side, round(float(size), 4), round(float(strength), 4),
                round(angle, 2), round(position, 4), int(rng.integers(2**31)))


def _point_alpha(mark: Mark, offset: np.ndarray, right: np.ndarray, down: np.ndarray, height: float) -> np.ndarray:
    """Opacity `(h, w)` of a point mark; `offset`: pixel positions minus the mark's centre."""
    pattern = np.random.default_rng(mark.pattern_seed)
    radius = mark.size * height
    if mark.kind == "freckle_cluster":
        alpha = np.zeros(offset.shape[:2])
        for _ in range(int(pattern.integers(4, 10))):
            r, phi = radius * np.sqrt(pattern.random()), pattern.uniform(0, 2 * np.pi)
            dot = r * (np.cos(phi) * right + np.sin(phi) * down)
            weight = pattern.uniform(0.6, 1.0)
            dot_radius = max(pattern.uniform(0.002, 0.004) * height, 0.6)
            alpha = np.maximum(alpha, weight * coverage(np.linalg.norm(offset - dot, axis=-1), dot_radius))
        return alpha
    if mark.kind == "scar":
        theta = np.deg2rad(mark.angle_deg)
        along = np.cos(theta) * right + np.sin(theta) * down
        across = np.array([-along[1], along[0]])
        start, end = -along * radius / 2, along * radius / 2
        control = across * radius * pattern.uniform(-0.25, 0.25)
        s = np.linspace(0, 1, 25)[:, None]
        curve = (1 - s) ** 2 * start + 2 * s * (1 - s) * control + s ** 2 * end
        a, seg = curve[:-1], curve[1:] - curve[:-1]
        t = np.clip(np.einsum("hwkc,kc->hwk", offset[..., None, :] - a, seg) / (seg ** 2).sum(1), 0, 1)
        distance = np.linalg.norm(offset[..., None, :] - (a + t[..., None] * seg), axis=-1).min(-1)
        place = np.clip(((offset - start) @ along) / radius, 0, 1)
        return coverage(distance, max(0.045 * radius, 0.7)) * np.sqrt(np.sin(np.pi * place))
    angle = np.arctan2(offset[..., 1], offset[..., 0])  # pigment spot, pit, vascular spot
    wobble = 1 + 0.08 * np.sin(3 * angle + pattern.uniform(0, 2 * np.pi))
    return coverage(np.linalg.norm(offset, axis=-1) / wobble, max(radius, 0.6))


def _paint_point(roi: np.ndarray, mark: Mark, offset: np.ndarray, right: np.ndarray, down: np.ndarray,
                 height: float) -> np.ndarray:
    alpha = _point_alpha(mark, offset, right, down, height)
    extent = mark.size * height / (2 if mark.kind == "scar" else 1)
    near = np.linalg.norm(offset, axis=-1)
    skin = skin_tone(roi, (near > extent + 0.01 * height) & (near < extent + 0.03 * height) & (alpha < 0.01))
    grey = bool(np.abs(roi[..., 0] - roi[..., 1]).mean() < 1 and np.abs(roi[..., 0] - roi[..., 2]).mean() < 1)
    s = mark.strength
    if mark.kind == "pit":  # a small hollow: shaded on the side facing the light (from above), lit below
        shade = np.clip((offset @ -down) / max(mark.size * height, 0.6), -1, 1)
        return roi * (1 - s * 0.6 * alpha * shade)[..., None]
    if mark.kind == "scar":
        tint = np.full(3, 0.4) if grey else np.array([0.55, 0.3, 0.3])
        target = np.minimum(skin * (1 + s * tint), 255)
    elif mark.kind == "vascular_spot":  # red: green and blue fall most
        tint = np.full(3, 0.4) if grey else np.array([0.15, 0.75, 0.6])
        target = skin * (1 - s * tint)
    else:  # pigment: darker, warmer
        tint = np.ones(3) if grey else np.array([0.85, 1.0, 1.15])
        target = skin * (1 - s * tint)
    painted = target + 0.4 * (roi - skin)  # keep some of the skin's own texture
    return roi + alpha[..., None] * (painted - roi)


def _paint_brow(roi: np.ndarray, mark: Mark, points: np.ndarray, origin: np.ndarray, height: float) -> np.ndarray:
    outline = ((points[list(BROWS[mark.side])] - origin) * 16).round().astype(np.int32)
    brow = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(brow, [outline], 255, lineType=cv2.LINE_AA, shift=4)
    brow = brow.astype(np.float32) / 255
    grown = cv2.dilate(brow, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.03 * height) | 1,) * 2))
    brow = cv2.GaussianBlur(brow, (0, 0), max(0.004 * height, 0.6))
    skin = skin_tone(roi, (grown > 0.5) & (brow < 0.02))
    if mark.kind == "brow_gap":
        outer, inner = points[list(BROW_ENDS[mark.side])] - origin
        ys, xs = np.mgrid[0:roi.shape[0], 0:roi.shape[1]]
        along = ((np.stack([xs, ys], -1) - outer) @ (inner - outer)) / float((inner - outer) @ (inner - outer))
        gap = 1 - smoothstep(mark.size / 2, mark.size / 2 + 0.04, np.abs(along - mark.position))
        return roi + (mark.strength * brow * gap)[..., None] * (skin - roi)
    if mark.strength > 0:  # denser: hairs darken most, the skin between them a little
        hair = np.clip((skin.mean() - roi.mean(-1)) / (0.4 * skin.mean() + 1), 0.3, 1.0)
        return roi * (1 - mark.strength * hair * brow)[..., None]
    return roi + (-mark.strength * brow)[..., None] * (skin - roi)


def _paint_stretch(roi: np.ndarray, mark: Mark, offset: np.ndarray, right: np.ndarray, down: np.ndarray,
                   height: float) -> np.ndarray:
    theta = np.deg2rad(mark.angle_deg)
    axis = np.cos(theta) * right + np.sin(theta) * down
    falloff = 1 - smoothstep(0.5, 1.0, np.linalg.norm(offset, axis=-1) / (mark.size * height))
    ys, xs = np.mgrid[0:roi.shape[0], 0:roi.shape[1]]
    source = np.stack([xs, ys], -1) - (mark.strength * falloff * (offset @ axis))[..., None] * axis
    return cv2.remap(roi, source[..., 0].astype(np.float32), source[..., 1].astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _paint_iris(roi: np.ndarray, mark: Mark, offset: np.ndarray, radius: float, right: np.ndarray,
                down: np.ndarray) -> np.ndarray:
    distance = np.linalg.norm(offset, axis=-1)
    ring = coverage(distance, radius * 0.95) * smoothstep(0.35 * radius, 0.5 * radius, distance)
    angle = np.rad2deg(np.arctan2(offset @ down, offset @ right))
    apart = np.abs((angle - mark.angle_deg + 180) % 360 - 180)
    alpha = ring * (1 - smoothstep(mark.size / 2 - 8, mark.size / 2 + 8, apart))
    lighter = np.minimum(roi * (1 + mark.strength * np.array([0.9, 0.6, 0.1])) + 12 * mark.strength, 255)
    return roi + alpha[..., None] * (lighter - roi)


def render_marks(rgb: np.ndarray, landmarks_px: np.ndarray, marks: list[Mark]) -> np.ndarray:
    """A copy of the photo with the marks painted on (stretches first, then brows, then paint)."""
    image = np.array(rgb, dtype=np.uint8, copy=True)
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    height = face_height(points)
    down = cutout.face_down_axis(points)
    right = cutout.right_of(down)
    order = {kind: 0 for kind in SHAPE_MARKS} | {kind: 1 for kind in BROW_MARKS}
    for mark in sorted(marks, key=lambda m: order.get(m.kind, 2)):
        centre = mark_centre(mark, points)
        if mark.kind in BROW_MARKS:
            brow = points[list(BROWS[mark.side])]
            reach = np.ptp(brow, axis=0).max() / 2 + 0.05 * height
            centre = brow.mean(0)
        elif mark.kind in SHAPE_MARKS:
            reach = mark.size * height + 2
        elif mark.kind == "iris_sector":
            iris_radius = float(np.linalg.norm(points[list(IRISES[mark.side][1])] - centre, axis=1).mean())
            reach = iris_radius + 2
        else:
            reach = mark.size * height * (0.6 if mark.kind == "scar" else 1.0) + 0.04 * height + 3
        x0, y0 = np.maximum(np.floor(centre - reach).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(centre + reach).astype(int) + 1, image.shape[1::-1])
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        roi = image[y0:y1, x0:x1].astype(np.float32)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        offset = np.stack([xs, ys], -1).astype(np.float64) - mark_centre(mark, points)
        if mark.kind in POINT_MARKS:
            roi = _paint_point(roi, mark, offset, right, down, height)
        elif mark.kind in BROW_MARKS:
            roi = _paint_brow(roi, mark, points, np.array([x0, y0], dtype=np.float64), height)
        elif mark.kind in SHAPE_MARKS:
            roi = _paint_stretch(roi, mark, offset, right, down, height)
        else:
            roi = _paint_iris(roi, mark, offset, iris_radius, right, down)
        image[y0:y1, x0:x1] = np.clip(np.rint(roi), 0, 255).astype(np.uint8)
    return image
