"""Simulate identical twins from real photos: one real person becomes a pair of twins.

    python make_twin_demo.py --photo-root ../shared/faces --output-dir demo_output/twin_data
    python make_twin_demo.py ... --own-marks 1-1 --placement parts     # settings (see --help)
    python make_twin_demo.py ... --preset legacy                        # the original demo simulator

Each person in whose photos a face is found becomes identities `<person>_a` and
`<person>_b`, built from the same photos and differing only by small, local, persistent
marks painted on the source photo (its landmarks detected once) before independent
per-photo pose, light, blur, noise and JPEG variation.

- `default` preset: 1-3 own marks per twin (often just one), drawn from pigment spots,
  freckle clusters, small scars, pits, vascular spots, brow gaps and density, local shape
  changes of nose, lips, chin and an eyelid, and iris colour sectors (`skin_marks`), with
  contrast and size ranges down to barely visible. Point marks go anywhere on clear skin of
  the face oval (not just inside the five parts); about half of the pairs also share a mark.
- `legacy` preset: the original demo, 4-6 own traits per twin (moles, freckles, scars, brow
  density, nose and lip shape), all inside the five part squares, milder capture variation.
  The same seed gives the same images as before the presets existed.
- `split` preset: the default marks, with each person's photos shared out between the twins
  (`--twin-photos split`): twin pairs are pairs of different photos wherever the person has
  several, as with real twins.

Honest scope: this simulates *one* twin cue, local marks, on people who are otherwise
pixel-identical. It checks the pipeline end to end and asks whether the part branch
learns what the frozen global embedding cannot; it is no substitute for real twins.

Output (relative paths resolve against the JSON file's folder): `images/<identity>/*.jpg`,
`jpg_dataset.json` {identity: [image paths]}, `twin_pairs.json` [[id_a, id_b], ...],
`traits.json`: the settings, and per identity: person, twin, source photo of each image,
and its marks. Every mark records `shared` (the twin has it too), `regions` (the face
regions of `cutout.REGION_LANDMARK_PAIRS` whose square contains its centre in at least half
of the photos it was painted on) and `group` (`five`: inside one of the five parts; `added`:
only inside added regions; `outside`: in none). Landmarks are in pixels, pixel centres at
integers (OpenCV's convention).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import cutout
from atomic_files import TEMP_MARKER, atomic_directory, write_json_atomic
from cli_errors import ExpectedError, cli_main
from face_images import (DEFAULT_LANDMARKER_MODEL, FaceLandmarkDetector, ImageDecodeError,
                         NoFaceError, read_image)
from face_parts_extractor import DatasetFileError, dataset_from_folders
from part_traits import OWN_TRAITS, TRAIT_KINDS, Trait, render_traits, sample_twin_traits, trait_centre
from skin_marks import MARK_KINDS, PLACEMENTS, Mark, clear_skin_mask, mark_centre, render_marks, sample_mark

JPG_DATASET, TWIN_PAIRS, TRAITS = "jpg_dataset.json", "twin_pairs.json", "traits.json"
TWIN_SUFFIXES = ("a", "b")
CROP_PER_FACE = 2.2         # output image side / face size (landmark extent)
OUTPUT_PX_RANGE = (160, 896)
# Faces smaller than this (landmark extent, px) are upsampled before traits are painted:
# twin datasets such as ND-TWINS are shot at high resolution, where a 2 mm mole spans
# several pixels; on a 120-px face it would be sub-pixel and invisible to any model.
MIN_FACE_PX = 360
_STREAM_TRAITS, _STREAM_IMAGE, _STREAM_ORDER = 0, 1, 2
ABOUT_LEGACY = ("Simulated twins: each pair comes from one real person and differs only by the local traits "
                "listed here, painted on before pose/light variation. A pipeline check, not real twins. "
                "uv: position in the part square, (0,0) top-left, (1,1) bottom-right, face upright; "
                "size: in part-square sides; uv null: anchored on landmarks (brow outline, nose, lips).")
ABOUT = ("Simulated twins: each pair comes from one real person and differs only by the marks listed here, "
         "painted on before per-photo pose/light/blur/noise/JPEG variation. A pipeline check, not real twins. "
         "anchor/weights: a face-mesh triangle and barycentric position (point marks); side: image side of a "
         "brow, eyelid or iris; size: in face heights (landmark 10 to 152), for brow gaps a share of the brow, "
         "for iris sectors degrees; regions: region squares containing the mark's centre; group: five, added "
         "or outside (the regions of cutout.py). settings.twin_photos split: a person's photos are shared out "
         "between the twins (one photo: both use it), so the twins also differ by photo, as real twins do.")
TWIN_PHOTOS = ("shared", "split")


@dataclass(frozen=True)
class CaptureVariation:
    """Ranges of the per-photo capture variation (the defaults are the original demo's)."""

    rotation_deg: float = 10.0                        # in-plane head roll, ±
    zoom: float = 0.1                                 # scale, ±share
    shift: float = 0.04                               # framing, ±share of the image side
    tilt: float = 0.03                                # perspective corner jitter, ±share
    gamma: tuple[float, float] = (0.85, 1.18)
    contrast: float = 0.15                            # ±share
    brightness: float = 0.06                          # ±, on 0..1 intensities
    colour: float = 0.05                              # per-channel gain, ±share (colour photos)
    blur_probability: float = 0.3
    blur_sigma_px: tuple[float, float] = (0.5, 1.2)
    noise_levels: tuple[float, float] = (1.0, 4.0)    # grey-level sd range, of 255
    jpeg_quality: tuple[int, int] = (70, 96)          # [low, high)


@dataclass(frozen=True)
class SimulatorSettings:
    """What the twins differ by, and how much each photo varies.

    `marks="legacy"` is the original demo simulator (4-6 own traits per twin inside the five
    part squares: `OWN_TRAITS`, `TRAIT_KINDS`), reproduced image for image; `marks="anywhere"`
    draws `own_marks` marks per twin from `kinds` (`skin_marks.MARK_KINDS`) on clear skin
    anywhere on the face (`placement="parts"`: only inside the five part squares;
    `"outside_parts"`: only outside them). `twin_photos="shared"`: both twins are made from every
    photo of the person; `"split"`: the photos are shared out between the twins (alternately, in
    the seeded order), so twin pairs are pairs of different photos wherever the person has more
    than one, as with real twins; a person with one photo lends it to both.
    """

    marks: str = "anywhere"
    own_marks: tuple[int, int] = (1, 3)
    placement: str = "anywhere"
    kinds: tuple[str, ...] = MARK_KINDS
    shared_mark_probability: float = 0.5
    twin_photos: str = "shared"
    capture: CaptureVariation = CaptureVariation(
        rotation_deg=12.0, zoom=0.12, shift=0.05, tilt=0.04, gamma=(0.8, 1.25), contrast=0.2, brightness=0.08,
        colour=0.06, blur_probability=0.4, blur_sigma_px=(0.5, 1.6), noise_levels=(1.0, 6.0), jpeg_quality=(55, 96))

    def __post_init__(self) -> None:
        if self.marks not in ("anywhere", "legacy"):
            raise ValueError(f"marks={self.marks!r}: choose anywhere or legacy")
        if self.twin_photos not in TWIN_PHOTOS:
            raise ValueError(f"twin_photos={self.twin_photos!r}: choose one of {', '.join(TWIN_PHOTOS)}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement={self.placement!r}: choose one of {', '.join(PLACEMENTS)}")
        if not 1 <= self.own_marks[0] <= self.own_marks[1]:
            raise ValueError(f"own_marks={self.own_marks}: need 1 ≤ min ≤ max")
        known = TRAIT_KINDS if self.marks == "legacy" else MARK_KINDS
        unknown = sorted(set(self.kinds) - set(known))
        if unknown or not self.kinds:
            raise ValueError(f"unknown mark kinds {unknown or list(self.kinds)}; choose from {', '.join(known)}")

    def to_dict(self) -> dict:
        return asdict(self)


# `default`: the hard, varied simulator. `legacy`: the original demo's (4-6 own traits per twin,
# inside the five parts, milder capture), which issue-9-style recipe comparisons were tuned on.
# `split`: the default marks on twins made from different photos of the person where it has several.
PRESETS = {"default": SimulatorSettings(),
           "legacy": SimulatorSettings(marks="legacy", own_marks=OWN_TRAITS, placement="parts", kinds=tuple(TRAIT_KINDS),
                                       capture=CaptureVariation()),
           "split": SimulatorSettings(twin_photos="split")}


@dataclass(frozen=True)
class TwinDatasetSummary:
    output_dir: Path
    jpg_dataset: Path
    twin_pairs: Path
    traits: Path
    people: int            # people looked at (with or without a face)
    pairs: int
    identities: int
    images: int
    skipped_people: tuple[str, ...]
    skipped_photos: tuple[str, ...]


class OutputFolderError(ExpectedError, ValueError):
    """An output folder that exists and was not made by this script."""


def rng_for(seed: int, person: str, stream: int, *keys: int) -> np.random.Generator:
    """A generator for one (seed, person, stream, keys) that does not depend on the run."""
    person_key = int.from_bytes(hashlib.sha256(person.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, person_key, stream, *keys])


def twin_traits(seed: int, person: str) -> tuple[list[Trait], list[Trait]]:
    """The traits of `<person>_a` and `<person>_b` for this seed."""
    return sample_twin_traits(*(rng_for(seed, person, _STREAM_TRAITS, k) for k in (2, 0, 1)))


def twin_marks(seed: int, person: str, landmarks_px: np.ndarray, shape: tuple[int, ...],
               settings: SimulatorSettings) -> tuple[list[Mark], list[Mark]]:
    """The marks of `<person>_a` and `<person>_b` (`settings.marks == "anywhere"`): maybe one
    shared, then `own_marks` of each twin's own, at most one brow, shape or iris change each.

    Point marks are placed on clear skin of the photo whose landmarks are given (the person's
    first photo in the seeded order) and anchored to the mesh, so they follow the face.
    """
    skin = clear_skin_mask(landmarks_px, shape, settings.placement)
    skin_px = np.argwhere(skin)[:, ::-1].astype(np.float64)  # (x, y)
    rng_shared, rng_a, rng_b = (rng_for(seed, person, _STREAM_TRAITS, k) for k in (2, 0, 1))
    shared = [sample_mark(rng_shared, settings.kinds, skin_px, landmarks_px)] \
        if rng_shared.random() < settings.shared_mark_probability else []
    result = []
    for rng in (rng_a, rng_b):
        marks = list(shared)
        wanted = len(shared) + int(rng.integers(settings.own_marks[0], settings.own_marks[1] + 1))
        for _ in range(1000):
            if len(marks) == wanted:
                break
            mark = sample_mark(rng, settings.kinds, skin_px, landmarks_px)
            if mark.anchor is not None or all(m.anchor is not None for m in marks):
                marks.append(mark)
        else:
            raise ValueError(f"{person}: cannot draw {wanted} marks from kinds {settings.kinds}")
        result.append(marks)
    return result[0], result[1]


def where_it_is(mark: Trait | Mark, photos: list[np.ndarray]) -> dict:
    """Which regions contain a mark's centre in at least half of the photos (landmark arrays) it
    was painted on, and its group: `five` (inside one of the five parts), `added` (only inside
    added regions) or `outside` (in no region)."""
    counts = dict.fromkeys(cutout.REGION_NAMES, 0)
    for landmarks in photos:
        centre = mark_centre(mark, landmarks) if isinstance(mark, Mark) else trait_centre(mark, landmarks)
        for name in cutout.regions_containing(centre, cutout.part_squares(landmarks, cutout.REGION_NAMES)):
            counts[name] += 1
    regions = [name for name, count in counts.items() if 2 * count >= len(photos)]
    group = ("five" if any(r in cutout.PART_NAMES for r in regions) else "added" if regions else "outside")
    return {"regions": regions, "group": group}


def capture(rgb: np.ndarray, landmarks_px: np.ndarray, rng: np.random.Generator,
            variation: CaptureVariation = CaptureVariation()) -> bytes:
    """One simulated photo of the face as JPEG bytes: pose, light, blur, noise, compression,
    each drawn independently for this photo from the ranges of `variation`."""
    v = variation
    points = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
    face = float(np.ptp(points, axis=0).max())
    # Stay inside the photo where it allows: replicated borders are not part of any face.
    crop = min(CROP_PER_FACE * face, max(min(rgb.shape[:2]), 1.2 * face))
    extent = np.array(rgb.shape[1::-1], dtype=np.float64)
    centre = (points.min(0) + points.max(0)) / 2
    centre = np.where(crop <= extent, np.clip(centre, crop / 2, extent - crop / 2), extent / 2)
    size = int(np.clip(round(crop), *OUTPUT_PX_RANGE))
    source, shrink = rgb, crop / size
    if shrink > 1.5:  # area-downscale first: bilinear warping alone would alias skin texture
        source = cv2.resize(rgb, None, fx=1 / shrink, fy=1 / shrink, interpolation=cv2.INTER_AREA)
        centre, crop = (centre + 0.5) / shrink - 0.5, crop / shrink
    angle = np.deg2rad(rng.uniform(-v.rotation_deg, v.rotation_deg))
    scale = size / crop * rng.uniform(1 - v.zoom, 1 + v.zoom)
    shift = rng.uniform(-v.shift, v.shift, 2) * size
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = np.eye(3)
    affine[:2, :2], affine[:2, 2] = rotation, size / 2 + shift - rotation @ centre
    frame = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float32)
    tilted = frame + rng.uniform(-v.tilt, v.tilt, (4, 2)).astype(np.float32) * size
    matrix = cv2.getPerspectiveTransform(frame, tilted) @ affine
    image = cv2.warpPerspective(source, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE).astype(np.float32) / 255

    grey = bool(np.abs(image[..., 0] - image[..., 2]).mean() < 1 / 255)
    image = image ** rng.uniform(*v.gamma)
    image = ((image - image.mean()) * rng.uniform(1 - v.contrast, 1 + v.contrast) + image.mean()
             + rng.uniform(-v.brightness, v.brightness))
    if not grey:
        image = image * rng.uniform(1 - v.colour, 1 + v.colour, 3).astype(np.float32)
    if rng.random() < v.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*v.blur_sigma_px))
    noise = rng.normal(0, rng.uniform(*v.noise_levels) / 255, (size, size, 1))
    if not grey:
        noise = noise + rng.normal(0, 0.5 / 255, (size, size, 3))
    image = np.clip(np.rint((image + noise) * 255), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*v.jpeg_quality))])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def _at_least_face_size(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upsample a photo (and its landmarks) whose face is smaller than `MIN_FACE_PX`."""
    factor = MIN_FACE_PX / float(np.ptp(landmarks[:, :2], axis=0).max())
    if factor <= 1:
        return rgb, landmarks
    larger = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    scaled = landmarks.copy()
    scaled[:, :2] = (scaled[:, :2] + 0.5) * factor - 0.5  # pixel centres stay pixel centres
    return larger, scaled


def _detect_faces(detector: FaceLandmarkDetector, person: str, paths: list[str], notes: list[str]) -> list:
    """`[(photo name, rgb, landmarks)]` for the photos with a face; one detection per photo."""
    photos = []
    for path in paths:
        name = f"{person}/{Path(path).name}"
        try:
            rgb = read_image(path)
            landmarks = detector.detect_largest(rgb, name).astype(np.float64)
            photos.append((name, *_at_least_face_size(rgb, landmarks)))
        except (ImageDecodeError, NoFaceError) as error:
            notes.append(name)
            tqdm.write(f"skipped photo {error}")
    return photos


def _write_identity(folder: Path, identity: str, photos: list, order: np.ndarray, traits: list[Trait | Mark],
                    rngs: list[np.random.Generator], variation: CaptureVariation) -> tuple[list[str], list[str], list]:
    """Write one identity's images (one per generator, cycling through the photos `order` lists);
    returns their paths, source photo names and the landmarks of each distinct source photo."""
    marked, paths, sources = {}, [], []  # marked: photo index → that photo with the traits painted on
    (folder / "images" / identity).mkdir(parents=True)
    for k, rng in enumerate(rngs):
        index = int(order[k % len(order)])
        name, rgb, landmarks = photos[index]
        if index not in marked:
            legacy = all(isinstance(t, Trait) for t in traits)
            marked[index] = (render_traits if legacy else render_marks)(rgb, landmarks, traits)
        paths.append(f"images/{identity}/{identity}_{k:02d}.jpg")
        (folder / paths[-1]).write_bytes(capture(marked[index], landmarks, rng, variation))
        sources.append(name)
    return paths, sources, [photos[index][2] for index in marked]


def build_twin_dataset(photo_root: Path, output_dir: Path, images_per_identity: int = 6, seed: int = 0,
                       landmarker_model: Path = DEFAULT_LANDMARKER_MODEL, max_people: int | None = None,
                       progress: bool = True, settings: SimulatorSettings = PRESETS["default"]) -> TwinDatasetSummary:
    """Turn every person under `photo_root` (one sub-folder each) into a pair of twins that
    differ as `settings` say.

    The output folder is filled under a temporary name and renamed into place when done;
    a previous twin demo folder there is replaced, any other non-empty folder refused.
    """
    if images_per_identity < 1 or seed < 0:
        raise ValueError("images_per_identity must be ≥ 1 and seed ≥ 0")
    photo_root, output_dir = Path(photo_root).resolve(), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / TRAITS).is_file():
        raise OutputFolderError(f"{output_dir}: exists and is not a twin demo folder (no {TRAITS}); "
                                "it would be replaced, so pick another --output-dir or empty it")
    people = dataset_from_folders(photo_root)  # {person: [sorted absolute paths]}
    for stale in output_dir.parent.glob(f".{output_dir.name}{TEMP_MARKER}*"):  # from a killed run
        shutil.rmtree(stale, ignore_errors=True)
    dataset, pairs, records, skipped_people, skipped_photos = {}, [], {}, [], []
    with atomic_directory(output_dir) as folder, FaceLandmarkDetector(landmarker_model) as detector:
        for person, paths in tqdm(people.items(), unit="person", desc="twins", disable=not progress, delay=2):
            if max_people is not None and len(pairs) >= max_people:
                break
            photos = _detect_faces(detector, person, paths, skipped_photos)
            if not photos:
                skipped_people.append(person)
                tqdm.write(f"skipped person {person}: no face in any of {len(paths)} photo(s)")
                continue
            order = rng_for(seed, person, _STREAM_ORDER).permutation(len(photos))
            if settings.marks == "legacy":
                traits = twin_traits(seed, person)
            else:
                _, reference_rgb, reference_landmarks = photos[int(order[0])]
                traits = twin_marks(seed, person, reference_landmarks, reference_rgb.shape, settings)
            pairs.append([f"{person}_{suffix}" for suffix in TWIN_SUFFIXES])
            for index, (identity, own) in enumerate(zip(pairs[-1], traits)):
                rngs = [rng_for(seed, person, _STREAM_IMAGE, index, k) for k in range(images_per_identity)]
                own_photos = order[index::2] if settings.twin_photos == "split" and len(order) > 1 else order
                dataset[identity], sources, painted = _write_identity(folder, identity, photos, own_photos, own, rngs,
                                                                      settings.capture)
                records[identity] = {"person": person, "twin": pairs[-1][1 - index], "sources": sources,
                                     "traits": [{**asdict(t), "shared": t in traits[1 - index],
                                                 **where_it_is(t, painted)} for t in own]}
        if not pairs:
            raise DatasetFileError(f"{photo_root}: no face found in any photo")
        write_json_atomic(folder / JPG_DATASET, dataset)
        write_json_atomic(folder / TWIN_PAIRS, pairs)
        write_json_atomic(folder / TRAITS, {"about": ABOUT_LEGACY if settings.marks == "legacy" else ABOUT, "seed": seed,
                                            "settings": settings.to_dict(), "identities": records})
    return TwinDatasetSummary(output_dir, output_dir / JPG_DATASET, output_dir / TWIN_PAIRS, output_dir / TRAITS,
                              len(pairs) + len(skipped_people), len(pairs), len(dataset),
                              sum(map(len, dataset.values())), tuple(skipped_people), tuple(skipped_photos))


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX or N, got {text!r}") from None


def settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    """The preset, changed by whichever setting flags were given."""
    changes = {}
    if args.own_marks is not None:
        changes["own_marks"] = args.own_marks
    if args.placement is not None:
        changes["placement"] = args.placement
    if args.kinds is not None:
        changes["kinds"] = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if args.shared_mark_probability is not None:
        changes["shared_mark_probability"] = args.shared_mark_probability
    if args.twin_photos is not None:
        changes["twin_photos"] = args.twin_photos
    marks = [key for key in changes if key != "twin_photos"]  # which photos a twin gets is not about its marks
    if marks and args.preset == "legacy":
        raise ValueError(f"the legacy preset is the original simulator and takes no changes to its marks "
                         f"({', '.join(marks)})")
    return replace(PRESETS[args.preset], **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Simulate twin pairs from real face photos by adding "
                                     "small local marks (spots, freckles, scars, pits, brows, shape changes, "
                                     "iris sectors).")
    parser.add_argument("--photo-root", type=Path, required=True,
                        help="folder with one sub-folder of photos per person")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output/twin_data"),
                        help="where images and JSON files go; replaced if it exists (default: %(default)s)")
    parser.add_argument("--images-per-identity", type=int, default=6, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--max-people", type=int, default=None, help="stop after this many twin pairs")
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_LANDMARKER_MODEL,
                        help="MediaPipe face_landmarker.task (default: %(default)s)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: 1-3 marks per twin anywhere on the face, many kinds, down to barely "
                             "visible; legacy: the original demo (4-6 traits inside the five parts); split: the "
                             "default marks, each twin made from its own share of the person's photos "
                             "(default: %(default)s)")
    parser.add_argument("--own-marks", type=_range, metavar="MIN-MAX",
                        help="marks of each twin's own, e.g. 1-3 or 1 (default preset: 1-3)")
    parser.add_argument("--placement", choices=PLACEMENTS,
                        help="where point marks go: anywhere on clear skin, only inside the five parts, or only "
                             "outside them (with point-mark --kinds: twins the five parts cannot tell apart)")
    parser.add_argument("--kinds", help="comma-separated mark kinds from: " + ", ".join(MARK_KINDS))
    parser.add_argument("--shared-mark-probability", type=float,
                        help="chance that a pair also shares one mark (default preset: 0.5)")
    parser.add_argument("--twin-photos", choices=TWIN_PHOTOS,
                        help="shared: both twins from every photo of the person (default); split: the photos "
                             "shared out between the twins, so twin pairs are pairs of different photos wherever "
                             "a person has several (a person with one photo lends it to both)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images_per_identity < 1 or args.seed < 0 or (args.max_people is not None and args.max_people < 1):
        parser.error("--images-per-identity and --max-people must be ≥ 1, --seed ≥ 0")
    started = time.perf_counter()
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    summary = build_twin_dataset(args.photo_root, args.output_dir, args.images_per_identity, args.seed,
                                 args.landmarker_model, args.max_people, not args.no_progress, settings)
    print(f"{summary.people} people → {summary.pairs} twin pairs, {summary.identities} identities, "
          f"{summary.images} images in {summary.output_dir} ({time.perf_counter() - started:.1f} s); "
          f"skipped {len(summary.skipped_people)} people, {len(summary.skipped_photos)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
