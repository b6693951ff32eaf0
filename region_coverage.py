"""How much of the face the chosen regions see: the share of face-oval pixels they cover.

    python region_coverage.py PHOTO_OR_FOLDER [--regions extended] [--draw-dir coverage/]

For each photo (a folder is searched for photos, one level of sub-folders deep), the
largest face's landmarks are found, and the share of its face-oval pixels (the mesh
outline `cutout.FACE_OVAL`) that lie inside at least one region square is printed. With
`--draw-dir`, each photo is also written there with the squares and the oval drawn.
The last line is the mean share over all photos with a face.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import cutout
from atomic_files import write_bytes_atomic
from cli_errors import cli_main
from face_images import (DEFAULT_LANDMARKER_MODEL, IMAGE_SUFFIXES, FaceLandmarkDetector, ImageDecodeError,
                         NoFaceError, read_image)


def photos_under(path: Path) -> list[Path]:
    """The photo itself, or the photos in a folder and its direct sub-folders, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such photo or folder")
    found = sorted(p for p in [*path.iterdir(), *path.glob("*/*")]
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{path}: no photos ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def coverage_drawing(rgb: np.ndarray, landmarks_px: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
    """The photo (RGB) with the face oval in grey and each region's square in its colour."""
    drawn = cutout.draw_regions(rgb, cutout.part_squares(landmarks_px, regions))
    oval = np.round(landmarks_px[list(cutout.FACE_OVAL), :2] * 16).astype(np.int32)
    cv2.polylines(drawn, [oval], True, (200, 200, 200), 1, cv2.LINE_AA, shift=4)
    return drawn


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, help="a photo, or a folder of photos (one level of sub-folders)")
    parser.add_argument("--regions", default="five", help="a set (" + ", ".join(cutout.REGION_SETS) +
                        ") or comma-separated region names (default: %(default)s)")
    parser.add_argument("--draw-dir", type=Path, help="write each photo with its regions drawn here")
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_LANDMARKER_MODEL)
    args = parser.parse_args(argv)
    try:
        regions = cutout.parse_regions(args.regions)
    except ValueError as error:
        parser.error(f"--regions: {error}")
    photos = photos_under(args.photos)
    shares = []
    with FaceLandmarkDetector(args.landmarker_model) as detector:
        for photo in photos:
            try:
                rgb = read_image(photo)
                landmarks = detector.detect_largest(rgb, str(photo)).astype(np.float64)
            except (ImageDecodeError, NoFaceError) as error:
                print(f"skipped {error}")
                continue
            shares.append(cutout.coverage_share(landmarks, rgb.shape, regions))
            print(f"{100 * shares[-1]:5.1f}%  {photo}")
            if args.draw_dir is not None:
                ok, data = cv2.imencode(".png", coverage_drawing(rgb, landmarks, regions)[:, :, ::-1])
                name = f"{photo.parent.name}_{photo.stem}.png" if args.photos.is_dir() else f"{photo.stem}.png"
                write_bytes_atomic(args.draw_dir / name, data.tobytes())
    if not shares:
        print(f"error: no face found in {args.photos}", file=sys.stderr)
        return 1
    print(f"mean face-oval coverage of {len(regions)} regions ({', '.join(regions)}) over {len(shares)} "
          f"photo(s): {100 * np.mean(shares):.1f}% (lowest {100 * np.min(shares):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
