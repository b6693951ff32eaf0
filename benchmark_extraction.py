"""Print extraction throughput next to landmarker-only throughput on the same photos.

    python benchmark_extraction.py --image-folder ../shared/faces --repeat 4
    python benchmark_extraction.py --workers 2 --rounds 3 --scratch-dir /data/tmp   # median of 3

"Landmarker only" is the least any extraction must do per photo: read and decode the
file, then run the Face Landmarker once. "Whole extraction" is `extract_dataset` end to
end (crops, aligned face, tensor, landmarks, atomic folder writes, index files), on a
fresh output folder. Both include their start-up (processes, models), which matters less
the more photos there are: hence the photos are listed several times. Both are timed for 1 and 2 worker processes; the ratio is the
share of landmarker-only throughput that the whole extraction keeps.

Every timed extraction is kept until the benchmark ends, and only then deleted (about
1.2 MB a photo each: 2.5 GB for the default 2,000 photos). On ext4, creating a file
beside thousands of files deleted a few minutes earlier costs over ten times as much
(the allocator steps over each recently freed inode), so deleting one timing's output
before the next would slow the next one down in a way no real extraction sees.
"""

from __future__ import annotations

import argparse
import sys
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from cli_errors import cli_main
from cutout import PART_NAMES
from face_images import FaceLandmarkDetector, NoFaceError, read_image
from face_parts_extractor import dataset_from_folders, extract_dataset

_detector: FaceLandmarkDetector | None = None


def _init(model: str) -> None:
    global _detector
    _detector = FaceLandmarkDetector(model)


def _decode_and_detect(path: str) -> int:
    try:
        return len(_detector.detect_all(read_image(path)))
    except NoFaceError:
        return 0


def landmarker_only(paths: list[str], workers: int, model: str) -> float:
    """Photos per second for decode + one landmark detection, start-up included."""
    start = time.perf_counter()
    if workers == 1:
        _init(model)
        for path in paths:
            _decode_and_detect(path)
    else:
        with multiprocessing.get_context("spawn").Pool(workers, _init, (model,)) as pool:
            pool.map(_decode_and_detect, paths, chunksize=8)
    return len(paths) / (time.perf_counter() - start)


def detect_only(paths: list[str], model: str) -> float:
    """Photos per second for the landmarker on already-decoded images (one process)."""
    images = [read_image(path) for path in paths]
    with FaceLandmarkDetector(model) as detector:
        start = time.perf_counter()
        for image in images:
            detector.detect_all(image)
        return len(images) / (time.perf_counter() - start)


def files_per_photo(regions: int = len(PART_NAMES)) -> int:
    """Files that extraction creates per photo: one crop per region, the aligned face, its
    `adaface_input.pt`, the skin face and the landmarks (`detection.json` only for photos with
    several faces)."""
    return regions + 4


def file_creation_ms(folder: Path, count: int = 500) -> float:
    """Milliseconds to create one small file in the new folder `folder` (the files are kept)."""
    folder.mkdir()
    start = time.perf_counter()
    for index in range(count):
        (folder / str(index)).write_bytes(b"x")
    return (time.perf_counter() - start) / count * 1000


def timed_extraction(dataset: dict[str, list[str]], workers: int, model: str, output: Path) -> float:
    """Seconds for `extract_dataset` into the new folder `output`, start-up included."""
    start = time.perf_counter()
    extract_dataset(dataset, Path("/"), output, workers=workers, landmarker_model=Path(model),
                    contact_sheet_images=0, progress=False)
    return time.perf_counter() - start


def whole_extraction(dataset: dict[str, list[str]], workers: int, model: str, output: Path) -> float:
    """Photos per second for the whole extraction into `output`, start-up included."""
    return sum(map(len, dataset.values())) / timed_extraction(dataset, workers, model, output)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-folder", type=Path, default=Path("../shared/faces"))
    parser.add_argument("--repeat", type=int, default=40, help="list every photo this many times "
                        "(as different people) so timings cover enough work")
    parser.add_argument("--landmarker-model", default="pretrained/face_landmarker.task")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1,
                        help="time both this many times, alternating, and print the median ratio: on a shared "
                             "machine the speed drifts between two timings taken one after the other")
    parser.add_argument("--scratch-dir", type=Path, default=Path("."),
                        help="where the timed extractions write (use the disk you will extract to)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.scratch_dir.mkdir(parents=True, exist_ok=True)

    base = dataset_from_folders(args.image_folder)
    dataset = {f"{person}#{copy}": images for copy in range(args.repeat) for person, images in base.items()}
    paths = [path for images in dataset.values() for path in images]
    with tempfile.TemporaryDirectory(dir=args.scratch_dir) as folder:  # deleted only at the end
        folder = Path(folder)
        create_ms = file_creation_ms(folder / "created")
        print(f"{len(paths)} photos ({len(paths) // args.repeat} distinct, each {args.repeat} times); "
              f"creating a file in {args.scratch_dir} takes {create_ms:.3f} ms, so the {files_per_photo()} files of "
              f"a photo take {files_per_photo() * create_ms:.2f} ms of one core")
        print(f"landmarker on decoded images, 1 process: {detect_only(paths, args.landmarker_model):7.1f} img/s")
        for workers in args.workers:
            ratios = []
            for round_number in range(1, args.rounds + 1):
                only = landmarker_only(paths, workers, args.landmarker_model)
                output = folder / f"workers{workers}-round{round_number}"
                whole = whole_extraction(dataset, workers, args.landmarker_model, output)
                ratios.append(whole / only)
                print(f"workers={workers}" + (f", round {round_number}" if args.rounds > 1 else "")
                      + f": decode+landmarker {only:7.1f} img/s | whole extraction {whole:7.1f} img/s "
                      f"| ratio {whole / only:6.1%}", flush=True)
            if args.rounds > 1:
                print(f"workers={workers}: median ratio {statistics.median(ratios):6.1%} over {args.rounds} rounds "
                      f"(range {min(ratios):.1%}-{max(ratios):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
