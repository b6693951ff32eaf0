"""Part crops packed into one memory-mapped array per part, for fast training reads.

    python face_parts_extractor.py --jpg-dataset photos.json --output-dir extracted_face_parts --pack

A training step needs every part crop of every image in its batch. Decoding one small
image file per crop costs a file open and a decode each; reading a row of a memory-mapped
array costs a copy. The packed folder `OUTPUT/packed/` sits beside the index files:

- `<part>.npy`: uint8 `N×S×S×3`, **RGB**, row `i` the crop of image `i` of `index.json`,
  pixel for pixel the crop decoded from its image file (the files stay for people who
  look at them, and remain the source of truth);
- `index.json`: format version, part names, crop size, the `[person, image key]` of
  each row, and the sha256 of the `face_parts_dataset.json` the pack was made from.

The folder is filled under a temporary name and renamed when complete, so a killed run
never leaves arrays that look finished. A pack whose source index has changed since
(photos added by a later extraction) is stale: readers refuse it with the command that
renews it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from atomic_files import atomic_directory, sha256_of_file, write_json_atomic
from cli_errors import ExpectedError

PACKED_FOLDER = "packed"
PACKED_INDEX = "index.json"
PACKED_FORMAT_VERSION = 1


class PackedCropsError(ExpectedError, ValueError):
    """A packed-crops folder that is missing pieces, stale or does not fit its index."""


def packed_folder_of(parts_index_path: Path) -> Path:
    return Path(parts_index_path).parent / PACKED_FOLDER


def read_crop_file_rgb(path: Path) -> np.ndarray:
    """One part crop from its image file, as uint8 RGB `S×S×3`."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PackedCropsError(f"{path}: part crop missing or unreadable; re-run the extractor")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pack_extraction(parts_index_path: Path) -> Path:
    """Pack every crop listed in `face_parts_dataset.json` into `packed/`; returns that folder.

    Rows follow the index order: persons sorted, image keys sorted within a person.
    """
    parts_index_path = Path(parts_index_path)
    try:
        parts_index = json.loads(parts_index_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise PackedCropsError(f"{parts_index_path}: cannot read the face parts index ({error})") from None
    source_sha256 = sha256_of_file(parts_index_path)
    rows = [(person, key) for person in sorted(parts_index) for key in sorted(parts_index[person])]
    if not rows:
        raise PackedCropsError(f"{parts_index_path}: no images to pack")
    part_names = list(parts_index[rows[0][0]][rows[0][1]])
    root = parts_index_path.parent
    first = read_crop_file_rgb(root / parts_index[rows[0][0]][rows[0][1]][part_names[0]])
    size = first.shape[0]
    with atomic_directory(packed_folder_of(parts_index_path)) as folder:
        for part in part_names:
            array = np.lib.format.open_memmap(folder / f"{part}.npy", mode="w+", dtype=np.uint8,
                                              shape=(len(rows), size, size, 3))
            for row, (person, key) in enumerate(rows):
                entry = parts_index[person][key]
                if part not in entry:
                    raise PackedCropsError(f"{parts_index_path}: {person}/{key} lacks part {part!r}")
                crop = read_crop_file_rgb(root / entry[part])
                if crop.shape != (size, size, 3):
                    raise PackedCropsError(f"{root / entry[part]}: crop is {crop.shape[1]}×{crop.shape[0]}, "
                                           f"the others {size}×{size}")
                array[row] = crop
            array.flush()
            del array
        write_json_atomic(folder / PACKED_INDEX, {
            "format_version": PACKED_FORMAT_VERSION, "parts": part_names, "crop_size_px": size,
            "images": [list(r) for r in rows], "source_index_sha256": source_sha256})
    return packed_folder_of(parts_index_path)


class PackedCrops:
    """Read-only access to a packed folder; arrays are opened lazily in each process.

    Memory maps are not pickled into loader workers (pickling one would copy the whole
    array); each process opens its own on first use.
    """

    def __init__(self, folder: Path, parts_index_path: Path, part_names: tuple[str, ...]):
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / PACKED_INDEX).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError) as error:
            raise PackedCropsError(f"{self.folder / PACKED_INDEX}: unreadable packed index ({error}); delete "
                                   f"{self.folder} or re-pack") from None
        renew = (f"re-pack: rerun the extraction into {Path(parts_index_path).parent} with --pack, or delete "
                 f"{self.folder}")
        if meta.get("format_version") != PACKED_FORMAT_VERSION:
            raise PackedCropsError(f"{self.folder}: packed format {meta.get('format_version')} is not "
                                   f"{PACKED_FORMAT_VERSION}; {renew}")
        if meta["source_index_sha256"] != sha256_of_file(parts_index_path):
            raise PackedCropsError(f"{self.folder} was packed from an older {Path(parts_index_path).name} "
                                   f"(the extraction has changed since); {renew}")
        missing = [p for p in part_names if p not in meta["parts"]]
        if missing:
            raise PackedCropsError(f"{self.folder}: no packed arrays for parts {missing}; {renew}")
        self.part_names = tuple(part_names)
        self.crop_size_px = int(meta["crop_size_px"])
        self.row_of = {(person, key): row for row, (person, key) in enumerate(meta["images"])}
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {}
            for part in self.part_names:
                path = self.folder / f"{part}.npy"
                try:
                    arrays[part] = np.load(path, mmap_mode="r")
                except (FileNotFoundError, ValueError) as error:
                    raise PackedCropsError(f"{path}: unreadable packed array ({error})") from None
                if arrays[part].shape[0] != len(self.row_of):
                    raise PackedCropsError(f"{path}: {arrays[part].shape[0]} rows, the index lists "
                                           f"{len(self.row_of)}")
            self._arrays = arrays
        return self._arrays

    def row(self, person: str, key: str) -> int:
        try:
            return self.row_of[(person, key)]
        except KeyError:
            raise PackedCropsError(f"{self.folder}: no packed crops of {person}/{key}; re-pack") from None

    def crops_rgb(self, row: int) -> np.ndarray:
        """uint8 `P×S×S×3` RGB crops of one image, parts in `part_names` order."""
        arrays = self._open()
        return np.stack([arrays[part][row] for part in self.part_names])
