"""Skin-detail comparison: small local marks that one photo of a face shows and the other lacks.

Identical twins share their face's shape and most of its look; what tells them apart are
small local marks (moles, freckles, scars, spots) that each has and the other lacks. A face
recogniser pools them away. This module compares two photos pixel by pixel on a common face:

1. Each photo's face is warped, triangle by triangle of its 478 landmarks, onto one
   canonical face (`CanonicalFace`: the mean landmark layout of the training faces, which
   every checkpoint stores), so a mole lands on the same canonical pixel in every photo of
   its owner, whatever the pose, framing or expression.
2. The warped lightness is band-passed (a difference of Gaussians at the scale of a small
   mark) and divided by its typical size on the face: light, contrast and colour changes
   between photos go, local detail stays (`CanonicalFace.detail`).
3. Two details are compared with a small shift allowed at each pixel (landmarks jitter by a
   pixel or two), a gap beside the other photo's own structure (an edge that moved) counts for
   less than one on its flat skin, the difference is divided by its own surroundings (so fine noise, JPEG
   blocks or blur spread over the whole face count for little and one isolated blob for a
   lot) and the mean of the largest few differences on clear skin is the pair's mark
   difference (`mark_differences`). Eyes and lips, which move between photos, are left out.

It learns nothing: what it measures does not depend on which marks training showed. The
decision mixes its similarity (`mark_similarities`) with the twin model's score at a weight
that validation chooses (`verification_pairs.choose_mark_weight`).

Extraction writes what it needs beside the part crops: `skin_face.bmp`, the face's square
at `SKIN_FACE_PX` (`skin_face`), whose landmarks follow from `landmarks.npy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from cli_errors import ExpectedError
from cutout import EYE_CORNERS, FACE_OVAL, warp_square

SKIN_FACE_PX = 320     # side of the saved face square
SKIN_FACE_MARGIN = 1.2  # the square's side over the landmarks' larger extent

# Outlines left out of the comparison (they move between photos of one face): MediaPipe mesh
# indices of each eye's lid margin and of the lips' outer edge.
LEFT_EYE_OUTLINE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
RIGHT_EYE_OUTLINE = (362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382)
LIPS_OUTLINE = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)


class MarkComparisonError(ExpectedError, ValueError):
    """Landmarks or a face image that the comparison cannot use."""


@dataclass(frozen=True)
class MarkSettings:
    """How details are made and compared; lengths in pixels of the canonical face."""

    size_px: int = 256             # the canonical face's side
    fine_sigma: float = 1.0        # band-pass: Gaussian(fine) − Gaussian(coarse) of the lightness
    coarse_sigma: float = 3.0
    shift_px: int = 2              # how far a pixel may look for its match in the other detail
    flat_weight: float = 1.0       # a gap counts 1 / (1 + this · the other detail's local size) ...
    flat_sigma: float = 4.0        # ... measured over this Gaussian
    surround_sigma: float = 8.0    # the neighbourhood a difference is measured against
    top_share: float = 0.0005      # share of the compared pixels whose mean is the pair's difference


def skin_face_square(landmarks_px: np.ndarray) -> np.ndarray:
    """The upright square (TL, TR, BR, BL) around the landmarks that `skin_face` cuts."""
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    low, high = points.min(0), points.max(0)
    centre, half = (low + high) / 2, SKIN_FACE_MARGIN * (high - low).max() / 2
    if not np.isfinite(half) or half <= 0:
        raise MarkComparisonError("landmarks span no area")
    return centre + half * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)


def landmarks_in_skin_face(landmarks_px: np.ndarray, size_px: int = SKIN_FACE_PX) -> np.ndarray:
    """The landmarks' x, y in pixels of the `skin_face` image cut with them."""
    square = skin_face_square(landmarks_px)
    scale = size_px / (square[1, 0] - square[0, 0])
    return (np.asarray(landmarks_px, dtype=np.float64)[:, :2] - square[0]) * scale - 0.5


def skin_face(image: np.ndarray, landmarks_px: np.ndarray, size_px: int = SKIN_FACE_PX) -> np.ndarray:
    """The face's upright square, `size_px`² (the image's channel order); outside the photo black."""
    return warp_square(image, skin_face_square(landmarks_px), size_px)


def _normalised_layout(landmarks: np.ndarray) -> np.ndarray:
    """x, y with the eye centres at (∓0.5, 0): position, size and roll taken out."""
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    left, right = (points[list(pair)].mean(0) for pair in EYE_CORNERS)
    across = right - left
    length = float(np.hypot(*across))
    if not np.isfinite(length) or length <= 0:
        raise MarkComparisonError("the eye centres coincide")
    cos, sin = across / length
    rotate = np.array([[cos, sin], [-sin, cos]])
    return (points - (left + right) / 2) @ rotate.T / length


class CanonicalFace:
    """The common face that every photo's face is warped onto, and the comparison's settings."""

    def __init__(self, layout: np.ndarray, triangles: np.ndarray, settings: MarkSettings = MarkSettings()):
        self.layout = np.asarray(layout, dtype=np.float64)        # (478, 2) canonical pixels
        self.triangles = np.asarray(triangles, dtype=np.int64)    # (T, 3) landmark numbers
        self.settings = settings
        self._build_tables()

    @classmethod
    def from_landmarks(cls, landmark_sets: Iterable[np.ndarray], settings: MarkSettings = MarkSettings()
                       ) -> "CanonicalFace":
        """The mean layout of these faces' landmarks (each with position, size and roll taken
        out), scaled to fill the canonical square."""
        from scipy.spatial import Delaunay

        layouts = [_normalised_layout(points) for points in landmark_sets]
        if not layouts:
            raise MarkComparisonError("no faces to make the canonical face from")
        mean = np.mean(layouts, axis=0)
        low, high = mean.min(0), mean.max(0)
        border = settings.size_px / 64
        layout = (mean - (low + high) / 2) * ((settings.size_px - 2 * border) / (high - low).max()) \
            + settings.size_px / 2 - 0.5
        return cls(layout, Delaunay(layout).simplices, settings)

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to make the same face again (`from_state`)."""
        return {"layout": self.layout.tolist(), "triangles": self.triangles.tolist(),
                "settings": asdict(self.settings)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CanonicalFace":
        return cls(np.array(state["layout"]), np.array(state["triangles"]), MarkSettings(**state["settings"]))

    def _build_tables(self) -> None:
        """Each canonical pixel's triangle and barycentric weights, and the compared pixels."""
        size = self.settings.size_px
        owner = np.full((size, size), -1, np.int32)
        for number, triangle in enumerate(self.triangles):
            cv2.fillConvexPoly(owner, np.round(self.layout[triangle]).astype(np.int32), int(number))
        self._inside = owner >= 0
        ys, xs = np.nonzero(self._inside)
        self._triangle_of = owner[ys, xs]
        corners = self.layout[self.triangles[self._triangle_of]]            # (n, 3, 2)
        edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        offset = np.stack([xs, ys], 1) - corners[:, 0]
        determinant = edge1[:, 0] * edge2[:, 1] - edge2[:, 0] * edge1[:, 1]
        determinant = np.where(np.abs(determinant) < 1e-12, 1e-12, determinant)
        w1 = (offset[:, 0] * edge2[:, 1] - edge2[:, 0] * offset[:, 1]) / determinant
        w2 = (edge1[:, 0] * offset[:, 1] - offset[:, 0] * edge1[:, 1]) / determinant
        self._weights = np.stack([1 - w1 - w2, w1, w2], 1)
        compared = self._polygon(FACE_OVAL)
        for outline in (LEFT_EYE_OUTLINE, RIGHT_EYE_OUTLINE, LIPS_OUTLINE):
            grow = max(1, round(size / 50))
            compared &= ~cv2.dilate(self._polygon(outline).astype(np.uint8), np.ones((grow, grow), np.uint8)).astype(bool)
        shrink = max(1, round(size / 36))
        self.compared = cv2.erode(compared.astype(np.uint8), np.ones((shrink, shrink), np.uint8)).astype(bool)
        if not self.compared.any():
            raise MarkComparisonError("the canonical face leaves no skin to compare")

    def _polygon(self, indices: tuple[int, ...]) -> np.ndarray:
        mask = np.zeros((self.settings.size_px,) * 2, np.uint8)
        cv2.fillPoly(mask, [np.round(self.layout[list(indices)]).astype(np.int32)], 1)
        return mask.astype(bool)

    def warp(self, image: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
        """`image` (whose face has these landmarks, x, y in its pixels) on the canonical face."""
        points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
        if points.shape[0] != len(self.layout) or not np.isfinite(points).all():
            raise MarkComparisonError(f"need {len(self.layout)} finite landmarks, got {points.shape[0]}")
        size = self.settings.size_px
        source = np.einsum("nk,nkd->nd", self._weights, points[self.triangles[self._triangle_of]])
        map_x = np.full((size, size), -1.0, np.float32)
        map_y = np.full((size, size), -1.0, np.float32)
        map_x[self._inside], map_y[self._inside] = source[:, 0], source[:, 1]
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def detail(self, face_bgr: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
        """The face's local detail on the canonical face (float32, size²): band-passed lightness
        over its median size on the compared skin."""
        if face_bgr.ndim != 3 or face_bgr.shape[2] != 3 or face_bgr.dtype != np.uint8:
            raise MarkComparisonError(f"need a uint8 H×W×3 image, got {face_bgr.dtype} {face_bgr.shape}")
        lightness = cv2.cvtColor(self.warp(face_bgr, landmarks_px), cv2.COLOR_BGR2LAB)[:, :, 0].astype(np.float32)
        settings = self.settings
        band = (cv2.GaussianBlur(lightness, (0, 0), settings.fine_sigma)
                - cv2.GaussianBlur(lightness, (0, 0), settings.coarse_sigma))
        typical = float(np.median(np.abs(band[self.compared])))
        return (band / max(typical, 1e-3)).astype(np.float32)

    def detail_of_extracted(self, folder: Path) -> np.ndarray:
        """The detail of one extracted photo (its folder holds `skin_face.bmp` and `landmarks.npy`)."""
        import face_parts_extractor as extractor

        image_path = next((folder / f"{extractor.SKIN_FACE_NAME}{suffix}"
                           for suffix, _ in extractor.IMAGE_FORMATS.values()
                           if (folder / f"{extractor.SKIN_FACE_NAME}{suffix}").is_file()), None)
        if image_path is None:
            raise MarkComparisonError(
                f"{folder / extractor.SKIN_FACE_NAME}.bmp: missing (extracted before skin faces were written); "
                "extract the photos again into a new folder, or train with --mark-weight 0")
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise MarkComparisonError(f"{image_path}: not a readable image")
        try:
            landmarks = np.load(folder / extractor.LANDMARKS_FILE)
        except (OSError, ValueError) as error:
            raise MarkComparisonError(f"{folder / extractor.LANDMARKS_FILE}: unreadable ({error})") from None
        return self.detail(image, landmarks_in_skin_face(landmarks, image.shape[0]))


def _shifted_gap(a: np.ndarray, b: np.ndarray, shift: int) -> np.ndarray:
    """At each pixel, how far `a` is from the closest value of `b` within `shift` pixels."""
    gap = np.full(a.shape, np.inf, np.float32)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            np.minimum(gap, np.abs(a - np.roll(b, (dy, dx), (0, 1))), out=gap)
    return gap


def structure_of(face: CanonicalFace, detail: np.ndarray) -> np.ndarray:
    """1 + k · the detail's local size (blurred |detail|): what a gap beside it is divided by.

    A mark that one photo shows where the other has flat skin counts in full; a gap beside
    the other photo's own structure (an edge or a wrinkle that moved a little) counts for less.
    """
    settings = face.settings
    return 1.0 + settings.flat_weight * cv2.GaussianBlur(np.abs(detail), (0, 0), settings.flat_sigma)


def mark_difference(face: CanonicalFace, a: np.ndarray, b: np.ndarray,
                    structures: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """How strongly one detail shows a local mark that the other lacks (≥ 0; larger: more unlike).

    `structures`: `structure_of` both details, where the caller has them already.
    """
    settings = face.settings
    structure_a, structure_b = structures if structures is not None else (structure_of(face, a),
                                                                            structure_of(face, b))
    gap = np.maximum(_shifted_gap(a, b, settings.shift_px) / structure_b,
                     _shifted_gap(b, a, settings.shift_px) / structure_a)
    gap = cv2.GaussianBlur(gap, (0, 0), 1.0)
    surround = cv2.GaussianBlur(gap, (0, 0), settings.surround_sigma)
    values = gap[face.compared] / (surround[face.compared] + 1e-3 * float(surround[face.compared].mean()) + 1e-12)
    count = max(1, int(settings.top_share * values.size))
    return float(np.partition(values, values.size - count)[values.size - count:].mean())


def mark_differences(face: CanonicalFace, details, first: np.ndarray, second: np.ndarray,
                     compared: np.ndarray | None = None) -> np.ndarray:
    """`mark_difference` of each pair (`details[first[k]]`, `details[second[k]]`); NaN for the
    pairs that `compared` (bool per pair, default all) leaves out. Each detail's structure is
    made once, however many pairs it is in."""
    first, second = np.asarray(first), np.asarray(second)
    compared = np.ones(len(first), bool) if compared is None else np.asarray(compared, bool)
    structures: dict[int, np.ndarray] = {}

    def structure(index: int) -> np.ndarray:
        if index not in structures:
            structures[index] = structure_of(face, details[index])
        return structures[index]

    differences = np.full(len(first), np.nan)
    for k in np.nonzero(compared)[0]:
        i, j = int(first[k]), int(second[k])
        differences[k] = mark_difference(face, details[i], details[j], (structure(i), structure(j)))
    return differences


def mark_similarities(differences: np.ndarray, scale: float) -> np.ndarray:
    """Differences as similarities in (0, 1]: exp(−difference / scale); 1 for identical details."""
    return np.exp(-np.asarray(differences, dtype=np.float64) / scale)


def difference_scale(differences: np.ndarray) -> float:
    """The typical difference of genuine pairs (their median), which `mark_similarities` divides by."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        raise MarkComparisonError("no genuine pairs to set the mark difference's scale")
    return max(float(np.median(values)), 1e-6)


def extracted_folder(record) -> Path:
    """The extraction folder of one indexed photo (`triplet_dataset.ImageRecord`)."""
    return Path(record.tensor_path).parent


def canonical_face_of(folders: Iterable[Path], settings: MarkSettings = MarkSettings()) -> CanonicalFace:
    """The canonical face of these extracted photos' landmarks (training's photos)."""
    import face_parts_extractor as extractor

    landmark_sets = []
    for folder in folders:
        path = Path(folder) / extractor.LANDMARKS_FILE
        try:
            landmark_sets.append(np.load(path))
        except (OSError, ValueError) as error:
            raise MarkComparisonError(f"{path}: unreadable ({error})") from None
    return CanonicalFace.from_landmarks(landmark_sets, settings)


def pair_differences(face: CanonicalFace, folders: list[Path], first: np.ndarray, second: np.ndarray,
                     compared: np.ndarray | None = None) -> np.ndarray:
    """`mark_difference` of each pair of extracted photos (`folders[first[k]]`, `folders[second[k]]`);
    NaN for the pairs that `compared` (bool per pair) leaves out. Each photo's detail is made once."""
    first, second = np.asarray(first), np.asarray(second)
    compared = np.ones(len(first), bool) if compared is None else np.asarray(compared, bool)
    details = {int(i): face.detail_of_extracted(folders[int(i)])
               for i in np.unique(np.concatenate([first[compared], second[compared]]))}
    return mark_differences(face, details, first, second, compared)


def similarities_of(differences: np.ndarray, scale: float) -> np.ndarray:
    """`mark_similarities`, 0 for pairs not compared (NaN differences)."""
    return np.where(np.isnan(differences), 0.0, mark_similarities(np.nan_to_num(differences, nan=0.0), scale))


def marks_of_pairs(face: CanonicalFace, folders: list[Path], pairs, global_scores: np.ndarray,
                   gate: float | None, scale: float | None = None) -> tuple[np.ndarray, float]:
    """The mark similarity of each verification pair (`verification_pairs.Pairs` over `folders`)
    and the scale it used: `scale`, or the median difference of these genuine pairs. Pairs of
    unrelated people that the recogniser's gate turns away are not compared (similarity 0):
    the gate puts their decision below every threshold, whatever their marks."""
    import verification_pairs as vp

    compared = np.asarray(pairs.kind) != vp.GENERAL
    if gate is not None:
        compared |= np.asarray(global_scores) >= gate
    else:
        compared[:] = True
    differences = pair_differences(face, folders, pairs.first, pairs.second, compared)
    if scale is None:
        scale = difference_scale(differences[np.asarray(pairs.kind) == vp.GENUINE])
    return similarities_of(differences, scale), float(scale)
