"""Extract the face regions, the aligned AdaFace input and the landmarks of every photo.

    python face_parts_extractor.py --jpg-dataset jpg_dataset.json --output-dir extracted_face_parts
    python face_parts_extractor.py ... --regions extended     # the five + forehead and cheeks

Each photo is decoded once and searched for landmarks once; all outputs come from that
one detection (the largest face when there are several). Per photo, the folder
`OUTPUT_DIR/<person>/<image key>/` holds

    left_eye.bmp right_eye.bmp nose.bmp mouth.bmp chin.bmp   region crops (lossless; .png with
                                                              --image-format png), one per region of
                                                              --regions (default: these five parts)
    aligned_face.bmp                                          112×112 aligned face
    skin_face.bmp                                             320×320 upright square around the
                                                              landmarks, for the mark comparison
                                                              (mark_comparison.py)
    adaface_input.pt                                          float 3×112×112, BGR, (x/255−0.5)/0.5
    landmarks.npy                                             float32 (478, 3), x/y in pixels

The folder is filled under a temporary name and renamed when complete, so a killed run
never leaves a folder that looks finished; a rerun skips finished folders. Index files
(relative paths resolve against the index file's own folder):

    face_parts_dataset.json   {person: {image key: {part: path}}}
    tensor_dataset.json       {person: [path of adaface_input.pt, ...]}
    failures.csv              path, person, reason (one line per photo that failed)
    warnings.csv              path, person, faces, warning (photos with several faces: the
                              largest was used)
    contact_sheet_NN.png      per row: aligned face with the region squares drawn, then every
                              region crop, for a visual check

Exit status: 0 when every photo succeeded, 3 when some failed (listed in failures.csv),
1 on a fatal error (bad dataset file, missing landmarker model, full disk), 2 on bad
arguments (`cli_errors` lists every code); a fatal error is one line naming the file.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import hashlib
import io
import json
import multiprocessing
import os
import re
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

import cutout
from atomic_files import (atomic_directory, naming, remove_stale_temporaries, sha256_of_file,
                          write_bytes_atomic, write_json_atomic, write_text_atomic)
from cli_errors import EXIT_INTERRUPTED, ExpectedError, cli_main
from face_images import (DEFAULT_LANDMARKER_MODEL, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, FaceInputs, FaceLandmarkDetector,
                         ImageDecodeError, LandmarkerModelError, NoFaceError, adaface_input_array, face_inputs,
                         read_image)
from packed_crops import PACKED_INDEX, pack_extraction, packed_folder_of
from tensor_files import write_float_tensor

EXIT_OK, EXIT_FATAL, EXIT_SOME_FAILED = 0, 1, 3
PARTS_INDEX = "face_parts_dataset.json"
TENSOR_INDEX = "tensor_dataset.json"
FAILURES_REPORT = "failures.csv"
WARNINGS_REPORT = "warnings.csv"
DETECTION_FILE = "detection.json"  # in a photo's folder when the landmarker found several faces: how many
SETTINGS_FILE = "extraction.json"
ALIGNED_FACE_NAME = "aligned_face"
SKIN_FACE_NAME = "skin_face"
ADAFACE_INPUT_FILE = "adaface_input.pt"
LANDMARKS_FILE = "landmarks.npy"
FORMAT_VERSION = 1
CHUNK_SIZE = 8  # photos per task handed to a worker
CONTACT_THUMB_PX = 96
CONTACT_ROWS_PER_PAGE = 25
# Crops are stored losslessly (twins differ in fine detail). BMP costs ~0.01 ms to write
# or read against ~2 ms for PNG, which would dominate both extraction and the training
# loader; PNG is there for users short of disk (about a third of the size).
IMAGE_FORMATS = {"bmp": (".bmp", []), "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])}


class DatasetFileError(ExpectedError, ValueError):
    """A dataset JSON file that is missing or not in the expected format."""


@dataclass(frozen=True)
class ImageJob:
    person_id: str
    entry: str          # the path exactly as written in jpg_dataset.json
    source: Path        # that path resolved against the JSON file's folder
    output: Path        # the finished per-image folder


@dataclass(frozen=True)
class ExtractionSettings:
    crop_size_px: int = 224
    image_format: str = "bmp"
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger photos fail (listed) without being decoded
    regions: tuple[str, ...] = cutout.PART_NAMES

    @property
    def suffix(self) -> str:
        return IMAGE_FORMATS[self.image_format][0]


@dataclass(frozen=True)
class ExtractionSummary:
    total: int
    done_before: int
    extracted: int
    failures: list[tuple[str, str, str]]  # (path, person, reason)
    warnings: list[tuple[str, str, int]] = field(default_factory=list)  # (path, person, faces) of photos
    # in which several faces were found (the largest was used)

    @property
    def exit_status(self) -> int:
        return EXIT_SOME_FAILED if self.failures else EXIT_OK


def load_jpg_dataset(path: Path) -> dict[str, list[str]]:
    """Read `{person_id: [image paths]}`; errors name the file and what is wrong."""
    if Path(path).is_dir():
        raise DatasetFileError(f"{path}: is a folder; --jpg-dataset takes a JSON file {{person_id: [image paths]}} "
                               "(for a folder with one sub-folder per person, use --image-folder)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFileError(f"{path}: dataset file not found") from None
    except UnicodeDecodeError:
        raise DatasetFileError(f"{path}: not a JSON text file") from None
    except json.JSONDecodeError as error:
        raise DatasetFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetFileError(f"{path}: expected an object {{person_id: [image paths]}}, "
                               f"got {type(data).__name__}")
    for person, images in data.items():
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
            raise DatasetFileError(f"{path}: person {person!r} must map to a list of image path "
                                   f"strings, got {images!r:.80}")
    return data


def dataset_from_folders(root: Path) -> dict[str, list[str]]:
    """`{sub-folder name: [image files in it]}` for a folder with one sub-folder per person."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFileError(f"{root}: image folder not found")
    dataset = {}
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(str(f.resolve()) for f in person_dir.iterdir()
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            dataset[person_dir.name] = images
    if not dataset:
        raise DatasetFileError(f"{root}: no sub-folders with images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return dataset


def safe_name(text: str) -> str:
    """A file-system-safe folder name; a short hash keeps altered names unique."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if cleaned != text:
        cleaned += "-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return cleaned


def image_key(entry: str) -> str:
    """Stable, collision-free name for one dataset entry (two people may both have `1.jpg`)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(entry).stem)[:60] or "image"
    return f"{stem}-{hashlib.sha1(entry.encode('utf-8')).hexdigest()[:10]}"


def plan_jobs(dataset: dict[str, list[str]], dataset_dir: Path, output_dir: Path) -> list[ImageJob]:
    jobs, seen = [], set()
    for person, entries in dataset.items():
        person_dir = output_dir / safe_name(person)
        for entry in entries:
            output = person_dir / image_key(entry)
            if output in seen:
                continue  # the same photo listed twice for one person
            seen.add(output)
            jobs.append(ImageJob(person, entry, dataset_dir / entry, output))
    return jobs


def encode_image(image_bgr: np.ndarray, image_format: str) -> np.ndarray:
    """The encoded file's bytes, as a uint8 array (written as it is, without a copy to `bytes`)."""
    suffix, params = IMAGE_FORMATS[image_format]
    ok, data = cv2.imencode(suffix, image_bgr, params)
    if not ok:
        raise RuntimeError(f"{image_format} encoding failed")
    return data


def bmp_header(height: int, width: int) -> bytes:
    """The 54-byte header of an uncompressed 24-bit BMP, field for field what `cv2.imencode` writes."""
    pixel_bytes = (3 * width + 3) // 4 * 4 * height  # each row padded to a multiple of 4 bytes
    return (struct.pack("<2sIHHI", b"BM", 54 + pixel_bytes, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0))


def write_image(path: Path, image_bgr: np.ndarray, image_format: str) -> None:
    """Write a BGR uint8 image file; the same bytes as `encode_image`.

    A BMP is its header and the rows bottom-up: written with one copy of the pixels, where
    the encoder makes two more (its own buffer and the array it returns).
    """
    if image_format != "bmp" or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        path.write_bytes(encode_image(image_bgr, image_format))
        return
    height, width = image_bgr.shape[:2]
    rows = image_bgr[::-1].reshape(height, 3 * width)
    padding = -3 * width % 4
    rows = np.pad(rows, ((0, 0), (0, padding))) if padding else np.ascontiguousarray(rows)
    with open(path, "wb") as handle:
        handle.write(bmp_header(height, width))
        handle.write(rows)


def write_face_outputs(folder: Path, face: FaceInputs, image_format: str) -> None:
    """Write one face's files into `folder` (a temporary folder, renamed by the caller)."""
    suffix = IMAGE_FORMATS[image_format][0]
    images = {part: cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR) for part, crop_rgb in face.parts_rgb.items()}
    images[ALIGNED_FACE_NAME] = face.aligned_bgr
    if face.skin_face_bgr is not None:
        images[SKIN_FACE_NAME] = face.skin_face_bgr
    for name, image_bgr in images.items():
        write_image(folder / f"{name}{suffix}", image_bgr, image_format)
    # Written without torch, so that extraction workers need not import it (tensor_files.py).
    with open(folder / ADAFACE_INPUT_FILE, "wb") as handle:
        write_float_tensor(handle, adaface_input_array(face.aligned_bgr))
    np.save(folder / LANDMARKS_FILE, face.landmarks_px)


def find_face(job: ImageJob, detector: FaceLandmarkDetector,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, int] | str:
    """Decode the photo and find its largest face: `(rgb, landmarks, faces found)`, or why that failed."""
    try:
        rgb = read_image(job.source, max_pixels)
        return rgb, *detector.detect_largest_counted(rgb, str(job.source))
    except (ImageDecodeError, NoFaceError) as error:
        return str(error).removeprefix(f"{job.source}: ")


def save_face(job: ImageJob, rgb: np.ndarray, landmarks: np.ndarray, faces_found: int,
              settings: ExtractionSettings) -> str | None:
    """Cut and write one face's outputs as a finished folder; None, or why that failed."""
    try:
        face = face_inputs(rgb, landmarks, settings.crop_size_px, settings.regions)
    except ValueError as error:  # degenerate landmark geometry
        return f"unusable landmarks ({error})"
    try:
        with atomic_directory(job.output) as folder:
            write_face_outputs(folder, face, settings.image_format)
            if faces_found > 1:  # kept with the photo, so that a rerun (which skips finished photos) still warns
                (folder / DETECTION_FILE).write_text(json.dumps({"faces_found": faces_found}))
    except OSError as error:  # a full disk or a read-only folder stops the run, naming the folder
        raise naming(error, job.output) from None
    return None


def process_chunk(jobs: list[ImageJob], detector: FaceLandmarkDetector, settings: ExtractionSettings,
                  writer: ThreadPoolExecutor) -> list[tuple[ImageJob, str | None]]:
    """Extract a few photos: `(job, None or failure reason)` each.

    Landmarks are found here while a writer thread cuts and writes the previous faces
    (OpenCV and file I/O release the GIL), so the landmarker is rarely kept waiting.
    Photos are reported only once their folder is complete; a write error (e.g. a full
    disk) propagates and stops the run.
    """
    results, pending = [], []
    for job in jobs:
        found = find_face(job, detector, settings.max_pixels)
        if isinstance(found, str):
            results.append((job, found))
        else:
            pending.append((job, writer.submit(save_face, job, *found, settings)))
    results += [(job, future.result()) for job, future in pending]
    return results


_worker_state: dict = {}


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep memory freed in this process for reuse, rather than hand it
    back to the kernel after every photo and take it again, zero-filled, for the next one.

    Each photo allocates and frees several MB (decoded photo, crops, encoded files); pages
    new from the kernel cost a fault and a zero fill each, which on virtual machines that
    return freed memory to their host is many times the cost of reusing warm memory.
    Memory above 32 MB at once (very large photos) is still returned at once. Returns False,
    changing nothing, where the C library has no `mallopt` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in
               ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def _init_worker(model_path: str, settings: ExtractionSettings) -> None:
    cv2.setNumThreads(1)
    keep_freed_memory()  # a worker process does nothing else; its memory goes when the run ends
    detector = FaceLandmarkDetector(model_path)
    writer = ThreadPoolExecutor(1)
    multiprocessing.util.Finalize(None, detector.close, exitpriority=10)
    multiprocessing.util.Finalize(None, writer.shutdown, exitpriority=20)
    _worker_state.update(detector=detector, settings=settings, writer=writer)


def _process_in_worker(jobs: list[ImageJob]) -> list[tuple[ImageJob, str | None]]:
    state = _worker_state
    return process_chunk(jobs, state["detector"], state["settings"], state["writer"])


def run_jobs(jobs: list[ImageJob], model_path: Path, settings: ExtractionSettings, workers: int,
             progress: bool):
    """Yield `(job, failure reason or None)` as photos finish, in any order."""
    from tqdm import tqdm

    chunks = [jobs[i:i + CHUNK_SIZE] for i in range(0, len(jobs), CHUNK_SIZE)]
    bar = tqdm(total=len(jobs), unit="img", desc="extracting", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        if workers <= 1:
            with FaceLandmarkDetector(model_path) as detector, ThreadPoolExecutor(1) as writer:
                for chunk in chunks:
                    yield from process_chunk(chunk, detector, settings, writer)
                    bar.update(len(chunk))
            return
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(workers, initializer=_init_worker, initargs=(str(model_path), settings))
        try:
            for results in pool.imap_unordered(_process_in_worker, chunks):
                yield from results
                bar.update(len(results))
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        bar.close()


def relative_to(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def build_indexes(jobs: list[ImageJob], output_dir: Path, suffix: str,
                  regions: tuple[str, ...] = cutout.PART_NAMES) -> tuple[dict, dict]:
    """Index every finished per-image folder, in dataset order."""
    parts_index: dict[str, dict[str, dict[str, str]]] = {}
    tensor_index: dict[str, list[str]] = {}
    for job in jobs:
        if not job.output.is_dir():
            continue
        folder = relative_to(job.output, output_dir)  # once per photo: relpath is slow next to a join
        parts = {part: os.path.join(folder, f"{part}{suffix}") for part in regions}
        parts_index.setdefault(job.person_id, {})[job.output.name] = parts
        tensor_index.setdefault(job.person_id, []).append(os.path.join(folder, ADAFACE_INPUT_FILE))
    return parts_index, tensor_index


def aligned_face_with_regions(aligned_bgr: np.ndarray, landmarks_px: np.ndarray, regions: tuple[str, ...],
                              size_px: int) -> np.ndarray:
    """The aligned face at `size_px`² with the region squares drawn where they lie on it.

    The squares were cut from the photo; the alignment maps them onto the aligned face.
    """
    scale = size_px / cutout.ALIGNED_FACE_SIZE
    matrix = cutout.alignment_matrix(landmarks_px) * scale
    squares = {name: corners @ matrix[:, :2].T + matrix[:, 2]
               for name, corners in cutout.part_squares(landmarks_px, regions).items()}
    face = cv2.resize(aligned_bgr, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    colours_bgr = {name: cutout.REGION_COLOURS[name][::-1] for name in regions}
    drawn = face.copy()
    for name, corners in squares.items():
        cv2.polylines(drawn, [np.round(corners * 16).astype(np.int32)], True, colours_bgr[name], 1, cv2.LINE_AA,
                      shift=4)
    return drawn


def contact_sheet_rows(folders: list[Path], suffix: str, regions: tuple[str, ...] = cutout.PART_NAMES,
                       thumb_px: int = CONTACT_THUMB_PX) -> list[np.ndarray]:
    """One BGR row per finished folder: the aligned face with the regions drawn, then every region crop."""
    rows = []
    for folder in folders:
        aligned = cv2.imread(str(folder / f"{ALIGNED_FACE_NAME}{suffix}"))
        landmarks = np.load(folder / LANDMARKS_FILE).astype(np.float64)
        tiles = [aligned_face_with_regions(aligned, landmarks, regions, thumb_px)]
        tiles += [cv2.resize(cv2.imread(str(folder / f"{name}{suffix}")), (thumb_px, thumb_px),
                             interpolation=cv2.INTER_AREA) for name in regions]
        row = np.hstack(tiles)
        label = f"{folder.parent.name}/{folder.name}"[:48]
        cv2.putText(row, label, (3, thumb_px - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(row, label, (3, thumb_px - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    return rows


def write_contact_sheets(jobs: list[ImageJob], output_dir: Path, suffix: str, max_images: int,
                         regions: tuple[str, ...] = cutout.PART_NAMES) -> list[Path]:
    for old in output_dir.glob("contact_sheet_*.png"):
        old.unlink()
    folders = [job.output for job in jobs if job.output.is_dir()][:max_images]
    rows = contact_sheet_rows(folders, suffix, regions)
    pages = []
    for start in range(0, len(rows), CONTACT_ROWS_PER_PAGE):
        page = output_dir / f"contact_sheet_{start // CONTACT_ROWS_PER_PAGE + 1:02d}.png"
        write_bytes_atomic(page, encode_image(np.vstack(rows[start:start + CONTACT_ROWS_PER_PAGE]), "png"))
        pages.append(page)
    return pages


def several_faces(jobs: list[ImageJob]) -> list[tuple[str, str, int]]:
    """`(path, person, faces found)` of finished photos in which more than one face was found."""
    found = []
    for job in jobs:
        record = job.output / DETECTION_FILE
        if record.is_file():  # written only for several faces
            count = int(json.loads(record.read_text())["faces_found"])
            if count > 1:
                found.append((str(job.source), job.person_id, count))
    return found


def write_warnings(path: Path, warnings: list[tuple[str, str, int]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "person", "faces", "warning"])
    writer.writerows([source, person, count, f"{count} faces found; the largest was used"]
                     for source, person, count in sorted(warnings))
    write_text_atomic(path, buffer.getvalue())


def write_failures(path: Path, failures: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "person", "reason"])
    writer.writerows(sorted(failures))
    write_text_atomic(path, buffer.getvalue())


def check_settings(output_dir: Path, settings: dict) -> None:
    """Refuse to mix outputs made with different settings in one folder."""
    path = output_dir / SETTINGS_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetFileError(f"{path}: damaged ({error}); it records how this folder was extracted. Extract "
                                   "into a new --output-dir, or delete it if you are sure the folder was made "
                                   "with the current settings") from None
        if not isinstance(previous, dict):
            raise DatasetFileError(f"{path}: expected a JSON object of extraction settings; extract into a new "
                                   "--output-dir")
        previous.setdefault("regions", list(cutout.PART_NAMES))  # written before regions were a setting
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise DatasetFileError(
                f"{output_dir} holds an extraction made with other settings ({', '.join(changed)}: "
                f"{ {k: previous.get(k) for k in changed} } vs { {k: settings[k] for k in changed} }); "
                "use the same settings to resume, or another --output-dir")
    else:
        write_json_atomic(path, settings)


def extract_dataset(dataset: dict[str, list[str]], dataset_dir: Path, output_dir: Path,
                    settings: ExtractionSettings = ExtractionSettings(), workers: int = 1,
                    landmarker_model: Path = DEFAULT_LANDMARKER_MODEL, contact_sheet_images: int = 100,
                    progress: bool = True, pack: bool = False) -> ExtractionSummary:
    """Extract every photo of `dataset` not already done; rewrite the index files.

    Relative image paths resolve against `dataset_dir`. With `pack`, the crops are also
    packed into one array per part (`packed_crops.py`); an existing pack is renewed
    whenever the index changes, so it never goes stale.
    """
    if not Path(landmarker_model).is_file():
        raise LandmarkerModelError(f"{landmarker_model}: Face Landmarker bundle not found. Run `make setup` "
                                   "or `python fetch_models.py landmarker` to fetch and verify it.")
    output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(output_dir, {"format_version": FORMAT_VERSION, "crop_size": settings.crop_size_px,
                                "image_format": settings.image_format, "regions": list(settings.regions),
                                "landmarker_sha256": sha256_of_file(landmarker_model)})
    jobs = plan_jobs(dataset, Path(dataset_dir).resolve(), output_dir.resolve())
    for person_dir in {job.output.parent for job in jobs}:
        remove_stale_temporaries(person_dir)
    todo = [job for job in jobs if not job.output.is_dir()]
    failures = []
    try:
        for job, reason in run_jobs(todo, landmarker_model, settings, workers, progress):
            if reason is not None:
                failures.append((str(job.source), job.person_id, reason))
    finally:
        # Runs after an interrupt too: whatever finished is indexed and kept.
        parts_index, tensor_index = build_indexes(jobs, output_dir.resolve(), settings.suffix, settings.regions)
        write_json_atomic(output_dir / PARTS_INDEX, parts_index)
        write_json_atomic(output_dir / TENSOR_INDEX, tensor_index)
        write_failures(output_dir / FAILURES_REPORT, failures)
        warnings = several_faces(jobs)
        write_warnings(output_dir / WARNINGS_REPORT, warnings)
    packed = packed_folder_of(output_dir / PARTS_INDEX)
    if pack or (packed.is_dir() and not pack_is_current(output_dir / PARTS_INDEX)):
        pack_extraction(output_dir / PARTS_INDEX)
    if contact_sheet_images > 0:
        write_contact_sheets(jobs, output_dir.resolve(), settings.suffix, contact_sheet_images, settings.regions)
    return ExtractionSummary(total=len(jobs), done_before=len(jobs) - len(todo),
                             extracted=len(todo) - len(failures), failures=failures, warnings=warnings)


def pack_is_current(parts_index_path: Path) -> bool:
    try:
        meta = json.loads((packed_folder_of(parts_index_path) / PACKED_INDEX).read_text(encoding="utf-8"))
        return meta.get("source_index_sha256") == sha256_of_file(parts_index_path)
    except (OSError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Cut the face regions (default: the five parts) and the aligned AdaFace input out of every photo "
                    "of a {person_id: [image paths]} dataset. Resumable: rerun to continue.",
        epilog="Exit status: 0 all photos extracted; 3 some failed (see failures.csv); "
               "1 fatal error; 2 bad arguments.")
    parser.add_argument("--jpg-dataset", type=Path, default=Path("jpg_dataset.json"),
                        help="JSON {person_id: [image paths]}; relative paths resolve against its folder "
                             "(default: %(default)s)")
    parser.add_argument("--image-folder", type=Path, default=None,
                        help="instead of --jpg-dataset: a folder with one sub-folder of photos per person")
    parser.add_argument("--output-dir", type=Path, default=Path("extracted_face_parts"),
                        help="where crops and index files go (default: %(default)s)")
    parser.add_argument("--crop-size", type=int, default=224, help="side of each part crop in pixels "
                        "(default: %(default)s)")
    parser.add_argument("--regions", default="five",
                        help="face regions to cut: a set (" + ", ".join(f"{k}: {len(v)}" for k, v in
                                                              cutout.REGION_SETS.items()) +
                        ") or comma-separated names from " + ", ".join(cutout.REGION_NAMES) +
                        " (default: %(default)s, the original five parts)")
    parser.add_argument("--image-format", choices=sorted(IMAGE_FORMATS), default="bmp",
                        help="lossless format of the crops: bmp is fastest to write and to load in "
                             "training, png takes about a third of the disk (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own landmarker "
                        "(default: %(default)s)")
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_LANDMARKER_MODEL,
                        help="MediaPipe face_landmarker.task (default: %(default)s)")
    parser.add_argument("--contact-sheet", type=int, default=100, metavar="N",
                        help="put the first N photos on contact sheets; 0 for none (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="photos with more pixels fail without being decoded (default: %(default)s)")
    parser.add_argument("--pack", action="store_true",
                        help="also pack every region's crops into one memory-mapped array (OUTPUT/packed/), "
                             "which training reads much faster than one file per crop")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.crop_size < 16:
        build_parser().error("--crop-size must be at least 16 pixels")
    if args.max_pixels < 1:
        build_parser().error("--max-pixels must be at least 1")
    try:
        regions = cutout.parse_regions(args.regions)
    except ValueError as error:
        build_parser().error(f"--regions: {error}")
    try:
        if args.image_folder is not None:
            dataset, dataset_dir = dataset_from_folders(args.image_folder), args.image_folder
        else:
            dataset, dataset_dir = load_jpg_dataset(args.jpg_dataset), args.jpg_dataset.resolve().parent
        settings = ExtractionSettings(args.crop_size, args.image_format, args.max_pixels, regions)
        summary = extract_dataset(dataset, dataset_dir, args.output_dir, settings, max(1, args.workers),
                                  args.landmarker_model, args.contact_sheet, not args.no_progress, args.pack)
    except KeyboardInterrupt:
        print("interrupted: finished photos are kept and indexed; rerun the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    for path, person, reason in summary.failures:
        print(f"failed: {path} (person {person}): {reason}", file=sys.stderr)
    print(f"{summary.total} photos: {summary.extracted} extracted now, {summary.done_before} already done, "
          f"{len(summary.failures)} failed"
          + (f" (listed in {args.output_dir / FAILURES_REPORT})" if summary.failures else "")
          + f"; outputs in {args.output_dir}")
    if summary.warnings:
        print(f"warning: {len(summary.warnings)} photos show several faces; the largest was used "
              f"(listed in {args.output_dir / WARNINGS_REPORT})", file=sys.stderr)
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
