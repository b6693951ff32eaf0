"""The original demo's twin traits: marks placed inside the five part squares (`--preset legacy`).

Each trait lies in one of the five part squares (`cutout.part_squares`), placed in that
square's own frame (`uv`: (0, 0) top-left to (1, 1) bottom-right, face upright; sizes in
square sides) or on landmarks (`uv` None: brow outline, nose, lips). Kept unchanged so that
the original simulator's images can still be made exactly; the default simulator's marks
are in `skin_marks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

import cutout
from skin_marks import coverage, skin_tone, smoothstep

MARKS = ("mole", "freckles", "scar")
# Kind → (relative frequency, parts it may go in). Shapes and eyebrows are landmark-anchored.
TRAIT_KINDS = {
    "mole": (0.34, cutout.PART_NAMES), "freckles": (0.14, cutout.PART_NAMES),
    "scar": (0.16, cutout.PART_NAMES), "eyebrow": (0.12, ("left_eye", "right_eye")),
    "nose_shape": (0.12, ("nose",)), "lip_shape": (0.12, ("mouth",)),
}
# Skin boxes (u0, u1, v0, v1) per part where point marks go, away from eyes, brows,
# nostrils and lips; measured on the sample photos.
SKIN_BOXES = {
    "left_eye": ((0.15, 0.70, 0.72, 0.90), (0.04, 0.14, 0.42, 0.62)),
    "right_eye": ((0.30, 0.85, 0.72, 0.90), (0.86, 0.96, 0.42, 0.62)),
    "nose": ((0.04, 0.12, 0.30, 0.72), (0.89, 0.96, 0.30, 0.72), (0.47, 0.57, 0.10, 0.30)),
    "mouth": ((0.25, 0.75, 0.08, 0.22), (0.32, 0.70, 0.88, 0.95)),
    "chin": ((0.20, 0.80, 0.35, 0.78),),
}
BROWS = {"left_eye": (70, 63, 105, 66, 107, 55, 65, 52, 53, 46),  # image-left brow, outline order
         "right_eye": (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)}
WARP_CENTRES = {"nose_shape": (1, 2, 98, 327), "lip_shape": (13, 14)}
SQUARE_MARGIN = 0.04        # effects fade out over this fraction of the side at a square's edge
# Each twin's own traits (min, max). Real twins differ in many small marks; with fewer than
# about four, the dozen training families of the demo are too few for the part encoders to
# learn marks in general rather than the marks of those families (measured: held-out twin
# EER 49% with 2-3 own traits, 34% with 4-6, AdaFace alone 51%).
OWN_TRAITS = (4, 6)

@dataclass(frozen=True)
class Trait:
    """One persistent mark; see the module docstring for the coordinate frame."""

    kind: str                             # a key of TRAIT_KINDS
    part: str                             # the part square that contains it
    uv: tuple[float, float] | None        # centre in the square's frame; None: landmark-anchored
    size: float                           # radius (mole, freckle cluster, warp) or length (scar), in sides
    strength: float                       # darkening, lightening, density or stretch; sign = direction
    angle_deg: float                      # orientation in the face frame (scar, warp axis)
    pattern_seed: int                     # mole outline, freckle layout, scar curve

    @classmethod
    def from_json(cls, record: dict) -> "Trait":
        """The trait back from its `traits.json` record (which also says where it is: `regions`, `group`)."""
        values = {k: record[k] for k in cls.__dataclass_fields__}
        return cls(**{**values, "uv": None if values["uv"] is None else tuple(values["uv"])})


def sample_trait(rng: np.random.Generator, kind: str | None = None) -> Trait:
    """Draw one trait; floats are rounded so that `traits.json` holds what is rendered."""
    kinds = list(TRAIT_KINDS)
    if kind is None:
        weights = np.array([TRAIT_KINDS[k][0] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    parts = TRAIT_KINDS[kind][1]
    part = parts[rng.integers(len(parts))]
    uv, angle = None, 0.0
    if kind in MARKS:
        box = SKIN_BOXES[part][rng.integers(len(SKIN_BOXES[part]))]
        uv = (round(float(rng.uniform(box[0], box[1])), 4), round(float(rng.uniform(box[2], box[3])), 4))
        angle = rng.uniform(-180, 180)
    size, strength = {
        "mole": lambda: (rng.uniform(0.028, 0.045), rng.uniform(0.4, 0.65)),
        "freckles": lambda: (rng.uniform(0.06, 0.1), rng.uniform(0.28, 0.42)),
        "scar": lambda: (rng.uniform(0.15, 0.28), rng.uniform(0.3, 0.5)),
        "eyebrow": lambda: (0.0, rng.choice([-1, 1]) * rng.uniform(0.3, 0.5)),
        "nose_shape": lambda: (0.38, rng.choice([-1, 1]) * rng.uniform(0.08, 0.15)),
        "lip_shape": lambda: (0.34, rng.choice([-1, 1]) * rng.uniform(0.08, 0.14)),
    }[kind]()
    if kind == "lip_shape":
        angle = 90.0  # fuller or thinner lips: a stretch along the face's vertical
    return Trait(kind, part, uv, round(float(size), 4), round(float(strength), 4),
                 round(float(angle), 2), int(rng.integers(2**31)))


def sample_twin_traits(rng_shared: np.random.Generator, rng_a: np.random.Generator,
                       rng_b: np.random.Generator) -> tuple[list[Trait], list[Trait]]:
    """Traits of both twins: maybe one shared, then `OWN_TRAITS` of each twin's own.

    Each twin has at most one eyebrow or nose/lip shape change; the rest are marks.
    """
    shared = [sample_trait(rng_shared)] if rng_shared.random() < 0.5 else []
    result = []
    for rng in (rng_a, rng_b):
        traits = list(shared)
        wanted = len(shared) + int(rng.integers(OWN_TRAITS[0], OWN_TRAITS[1] + 1))
        while len(traits) < wanted:
            trait = sample_trait(rng)
            # At most one brow or shape change per twin keeps the differences small and local.
            if trait.kind in MARKS or all(t.kind in MARKS for t in traits):
                traits.append(trait)
        result.append(traits)
    return result[0], result[1]


def trait_centre(trait: Trait, landmarks_px: np.ndarray) -> np.ndarray:
    """Where an original-demo trait is in a photo, in pixels `(2,)`."""
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    if trait.kind in MARKS:
        corners = cutout.part_squares(points)[trait.part]
        return corners[0] + trait.uv[0] * (corners[1] - corners[0]) + trait.uv[1] * (corners[3] - corners[0])
    if trait.kind == "eyebrow":
        return points[list(BROWS[trait.part])].mean(0)
    return points[list(WARP_CENTRES[trait.kind])].mean(0)


def _mark_alpha(trait: Trait, points: np.ndarray, centre: np.ndarray, ex: np.ndarray, ey: np.ndarray,
                side: float) -> np.ndarray:
    """Per-pixel opacity `(h, w)` of a mole, freckle cluster or scar."""
    pattern = np.random.default_rng(trait.pattern_seed)
    offset = points - centre
    if trait.kind == "mole":  # slightly irregular outline
        angle = np.arctan2(offset[..., 1], offset[..., 0])
        wobble = 1 + 0.08 * np.sin(3 * angle + pattern.uniform(0, 2 * np.pi))
        return coverage(np.linalg.norm(offset, axis=-1) / wobble, trait.size * side)
    if trait.kind == "freckles":
        alpha = np.zeros(points.shape[:2])
        for _ in range(int(pattern.integers(5, 11))):
            r, phi = trait.size * np.sqrt(pattern.random()), pattern.uniform(0, 2 * np.pi)
            dot = centre + r * (np.cos(phi) * ex + np.sin(phi) * ey)
            radius = pattern.uniform(0.012, 0.02) * side
            weight = pattern.uniform(0.6, 1.0)
            alpha = np.maximum(alpha, weight * coverage(np.linalg.norm(points - dot, axis=-1), radius))
        return alpha
    # scar: a thin, slightly bent quadratic curve, tapered at both ends
    theta = np.deg2rad(trait.angle_deg)
    along = (np.cos(theta) * ex + np.sin(theta) * ey) / side
    across = np.array([-along[1], along[0]])
    length = trait.size * side
    start, end = centre - along * length / 2, centre + along * length / 2
    control = centre + across * length * pattern.uniform(-0.25, 0.25)
    s = np.linspace(0, 1, 25)[:, None]
    curve = (1 - s) ** 2 * start + 2 * s * (1 - s) * control + s ** 2 * end
    a, b = curve[:-1], curve[1:]
    seg = b - a
    t = np.clip(np.einsum("hwkc,kc->hwk", points[..., None, :] - a, seg) / (seg ** 2).sum(1), 0, 1)
    nearest = a + t[..., None] * seg
    distance = np.linalg.norm(points[..., None, :] - nearest, axis=-1).min(-1)
    position = np.clip(((points - start) @ along) / length, 0, 1)
    return coverage(distance, max(0.045 * length, 0.8)) * np.sqrt(np.sin(np.pi * position))


def _render_one(image: np.ndarray, landmarks: np.ndarray, corners: np.ndarray, trait: Trait) -> None:
    """Paint one trait into `image` (uint8, modified in place) within its part square."""
    height, width = image.shape[:2]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 3, [width, height])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roi = image[y0:y1, x0:x1].astype(np.float32)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    points = np.stack([xs, ys], -1).astype(np.float64)
    ex, ey = corners[1] - corners[0], corners[3] - corners[0]
    side = float(np.linalg.norm(ex))
    u, v = ((points - corners[0]) @ ex) / side ** 2, ((points - corners[0]) @ ey) / side ** 2
    in_square = np.ones_like(u)
    for edge in (u, 1 - u, v, 1 - v):
        in_square *= smoothstep(0.0, SQUARE_MARGIN, edge)
    grey = bool(np.abs(roi[..., 0] - roi[..., 1]).mean() < 1 and np.abs(roi[..., 0] - roi[..., 2]).mean() < 1)

    if trait.kind in MARKS:
        centre = corners[0] + trait.uv[0] * ex + trait.uv[1] * ey
        alpha = _mark_alpha(trait, points, centre, ex, ey, side) * in_square
        extent = trait.size / 2 if trait.kind == "scar" else trait.size
        near = np.linalg.norm(points - centre, axis=-1)
        ring = (near > (extent + 0.03) * side) & (near < (extent + 0.08) * side)
        skin = skin_tone(roi, ring & (alpha < 0.01))
        if trait.kind == "scar":  # healed scars are paler and a little pink
            tint = np.array([0.55, 0.3, 0.3]) if not grey else np.full(3, 0.4)
            target = np.minimum(skin * (1 + trait.strength * tint), 255)
        else:                     # pigment: darker, warmer (blue falls most)
            tint = np.array([0.85, 1.0, 1.15]) if not grey else np.ones(3)
            target = skin * (1 - trait.strength * tint)
        painted = target + 0.4 * (roi - skin)  # keep some of the skin's own texture
        roi = roi + alpha[..., None] * (painted - roi)
    elif trait.kind == "eyebrow":
        outline = ((landmarks[list(BROWS[trait.part]), :2] - [x0, y0]) * 16).round().astype(np.int32)
        brow = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(brow, [outline], 255, lineType=cv2.LINE_AA, shift=4)
        brow = brow.astype(np.float32) / 255
        grown = cv2.dilate(brow, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.1 * side) | 1,) * 2))
        brow = cv2.GaussianBlur(brow, (0, 0), max(0.012 * side, 0.6)) * in_square
        skin = skin_tone(roi, (grown > 0.5) & (brow < 0.02))
        if trait.strength > 0:    # denser: hairs darken most, the skin between them a little
            hair = np.clip((skin.mean() - roi.mean(-1)) / (0.4 * skin.mean() + 1), 0.3, 1.0)
            roi = roi * (1 - trait.strength * hair * brow)[..., None]
        else:                     # sparser: skin shows through
            roi = roi + (-trait.strength * brow)[..., None] * (skin - roi)
    else:                         # nose_shape / lip_shape: a smooth local stretch
        centre = landmarks[list(WARP_CENTRES[trait.kind]), :2].astype(np.float64).mean(0)
        theta = np.deg2rad(trait.angle_deg)
        axis = (np.cos(theta) * ex + np.sin(theta) * ey) / side
        offset = points - centre
        falloff = 1 - smoothstep(0.5, 1.0, np.linalg.norm(offset, axis=-1) / (trait.size * side))
        source = points - (trait.strength * falloff * (offset @ axis))[..., None] * axis - [x0, y0]
        warped = cv2.remap(roi, source[..., 0].astype(np.float32), source[..., 1].astype(np.float32),
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        roi = roi + in_square[..., None] * (warped - roi)
    image[y0:y1, x0:x1] = np.clip(np.rint(roi), 0, 255).astype(np.uint8)


def render_traits(rgb: np.ndarray, landmarks_px: np.ndarray, traits: list[Trait]) -> np.ndarray:
    """A copy of the photo with the traits painted on; only pixels in their part squares change."""
    image, landmarks = np.array(rgb, dtype=np.uint8, copy=True), np.asarray(landmarks_px, dtype=np.float64)
    squares = cutout.part_squares(landmarks)
    order = {"nose_shape": 0, "lip_shape": 0, "eyebrow": 1}  # warp first, paint marks last
    for trait in sorted(traits, key=lambda t: order.get(t.kind, 2)):
        _render_one(image, landmarks, squares[trait.part], trait)
    return image
