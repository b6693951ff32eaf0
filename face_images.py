"""From a photo to every model input: decoding, landmark detection, parts and aligned face.

Used by the extraction script, by inference and by the twin simulator, so that all of
them see a face exactly the same way. The photo is decoded once (EXIF orientation
applied), landmarks are found once, and every crop comes from that one detection.

Colour conventions: photos are decoded to **RGB** uint8. Part crops are RGB (what
the part encoders take); the aligned face is **BGR** (what AdaFace takes).
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import cutout
import mark_comparison
from cli_errors import ExpectedError

DEFAULT_LANDMARKER_MODEL = Path(__file__).resolve().parent / "pretrained" / "face_landmarker.task"
MAX_FACES = 4  # several faces are detected so the largest can be chosen
# Photos above this are refused before decoding (a 100-megapixel RGB photo takes 300 MB
# decoded); scripts take it as `--max-pixels`. Pillow's own, fixed limit is replaced by this one.
DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageDecodeError(ExpectedError, ValueError):
    """A file that is missing, empty, truncated or not an image."""


class NoFaceError(ExpectedError, ValueError):
    """A readable photo in which the landmarker found no face."""


class LandmarkerModelError(ExpectedError, FileNotFoundError):
    """The Face Landmarker bundle is missing."""


@dataclass(frozen=True)
class FaceInputs:
    """Everything the models need from one face."""

    parts_rgb: dict[str, np.ndarray]  # part name → uint8 S×S×3, RGB
    aligned_bgr: np.ndarray           # uint8 112×112×3, BGR
    landmarks_px: np.ndarray          # float32 (478, 3): x, y in pixels; z as MediaPipe gives it
    skin_face_bgr: np.ndarray | None = None  # uint8 S×S×3, BGR: the face's square (mark_comparison.skin_face)


def adaface_input_array(aligned_bgr: np.ndarray) -> np.ndarray:
    """AdaFace's input contract: aligned BGR uint8 → float32 `(x/255 − 0.5)/0.5`, channels first.

    `aligned_bgr` is `112×112×3` (one face → `3×112×112`) or `B×112×112×3`
    (→ `B×3×112×112`), **BGR** channel order, as AdaFace was trained.
    """
    array = np.asarray(aligned_bgr)
    size = cutout.ALIGNED_FACE_SIZE
    if array.dtype != np.uint8 or array.shape[-3:] != (size, size, 3):
        raise ValueError(f"expected uint8 …×{size}×{size}×3 BGR, got {array.dtype} {array.shape}")
    return _ADAFACE_VALUES[np.moveaxis(array, -1, -3)]  # a new contiguous array


# Every uint8 value's AdaFace input, from the same arithmetic as AdaFace's own `to_input`
# (float64, then cast), so that looking values up matches it bit for bit.
_ADAFACE_VALUES = (((np.arange(256) / 255.0) - 0.5) / 0.5).astype(np.float32)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """RGB uint8 `H×W×3` of a decoded image of any mode.

    16-bit and 32-bit integer images are scaled from their full range (0..65535 for 16-bit
    files), float images from 0..1, so that a 16-bit photo is not clipped to near white
    the way a plain conversion to 8 bits would clip it.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scaled = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
        else:
            scaled = values / 257.0  # 65535 → 255
        grey = np.clip(np.nan_to_num(np.rint(scaled)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def decode_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded photo to RGB uint8 `H×W×3`, applying its EXIF orientation.

    A photo with more than `max_pixels` pixels is refused from its header, before decoding.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file")

    Image.MAX_IMAGE_PIXELS = None  # the limit below replaces Pillow's fixed one
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"{name}: {width}×{height} = {width * height:,} pixels, more than the limit "
                                       f"of {max_pixels:,}; shrink the photo or raise --max-pixels")
            image.load()  # a truncated file fails here rather than decoding half a picture
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb8(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{name}: truncated or corrupt image ({error})") from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 8:
        raise ImageDecodeError(f"{name}: image too small ({rgb.shape[1]}×{rgb.shape[0]})")
    return rgb


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode a photo file to RGB uint8; errors name the file and the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{path}: is a directory, not an image") from None
    except OSError as error:
        raise ImageDecodeError(f"{path}: cannot read ({error.strerror})") from None
    return decode_image_bytes(data, str(path), max_pixels)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide MediaPipe's native start-up log lines (it reads its log level from the
    process's initial environment only). Errors still arrive as Python exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class FaceLandmarkDetector:
    """MediaPipe Face Landmarker (Tasks API, IMAGE mode) returning pixel landmarks.

    One instance per process; use it as a context manager so the native graph is closed.
    """

    def __init__(self, model_path: str | os.PathLike = DEFAULT_LANDMARKER_MODEL,
                 max_faces: int = MAX_FACES, min_confidence: float = 0.5):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise LandmarkerModelError(
                f"{model_path}: Face Landmarker bundle not found. Run `make setup` or "
                "`python fetch_models.py landmarker` to fetch and verify it.")
        from mediapipe import Image as MpImage, ImageFormat
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp_image, self._srgb = MpImage, ImageFormat.SRGB
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence)
        with _native_stderr_silenced():
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
            self.detect_all(np.zeros((64, 64, 3), np.uint8))  # warm-up; its log lines come here

    def detect_all(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Landmarks `(478, 3)` float32 of every face found (x, y in pixels)."""
        height, width = rgb.shape[:2]
        image = self._mp_image(image_format=self._srgb, data=np.ascontiguousarray(rgb))
        result = self._landmarker.detect(image)
        faces = []
        for face in result.face_landmarks:
            points = np.array([(p.x, p.y, p.z) for p in face], dtype=np.float64)
            points[:, 0] *= width
            points[:, 1] *= height
            faces.append(points.astype(np.float32))
        return faces

    def detect_largest(self, rgb: np.ndarray, name: str = "<image>") -> np.ndarray:
        """Landmarks of the largest face; `NoFaceError` when there is none."""
        return self.detect_largest_counted(rgb, name)[0]

    def detect_largest_counted(self, rgb: np.ndarray, name: str = "<image>") -> tuple[np.ndarray, int]:
        """Landmarks of the largest face and how many faces were found (up to `max_faces`)."""
        faces = self.detect_all(rgb)
        if not faces:
            raise NoFaceError(f"{name}: no face found")
        return faces[cutout.largest_face(faces)], len(faces)

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "FaceLandmarkDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def face_inputs(rgb: np.ndarray, landmarks_px: np.ndarray, crop_size_px: int = 224,
                regions: tuple[str, ...] = cutout.PART_NAMES) -> FaceInputs:
    """Cut the region crops (RGB; default: the five parts), the aligned face and the skin face
    (BGR) from one detection."""
    points = np.asarray(landmarks_px, dtype=np.float64)
    parts = cutout.cut_parts(rgb, points, crop_size_px, regions)
    # cvtColor swaps the channels in one vectorised pass; a reversed view made contiguous is
    # a strided copy several times slower.
    aligned_bgr = cv2.cvtColor(cutout.align_face(rgb, points), cv2.COLOR_RGB2BGR)
    skin_face_bgr = cv2.cvtColor(mark_comparison.skin_face(rgb, points), cv2.COLOR_RGB2BGR)
    return FaceInputs(parts_rgb=parts, aligned_bgr=aligned_bgr,
                      landmarks_px=np.asarray(landmarks_px, dtype=np.float32), skin_face_bgr=skin_face_bgr)
