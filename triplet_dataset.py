"""Training data: the extractor's index files, identity splits, twin-aware triplets, augmentation.

- Images come from `face_parts_dataset.json` and `tensor_dataset.json` (relative paths
  resolve against each index file's folder); twins (or larger sets of siblings, such as
  triplets) from `twin_pairs.json`.
- Splits are by *family*: a sibling group, or a person without a sibling. A group always
  lands on one side, so no identity seen in training appears in validation or test.
- Which triplets an epoch draws, and how each sample is augmented, are functions of
  `(seed, epoch)` only: a resumed run sees exactly what an uninterrupted one would.
- Loaders return uint8 RGB part crops (`…×3×S×S`) and cached global embeddings; the
  frozen AdaFace never runs in a loader, and each image is decoded once per use. With
  augmentation on the device the crops stay plain and come with each crop's parameters
  (`device_augment.py`), drawn from the same per-sample generator.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

import device_augment
from atomic_files import write_json_atomic
from cli_errors import ExpectedError
from cutout import PART_NAMES
from net import adaface_input_tensor
from packed_crops import PackedCrops, PackedCropsError, packed_folder_of, read_crop_file_rgb

SPLITS = ("train", "val", "test")
SPLIT_FORMAT_VERSION = 1


class DataIndexError(ExpectedError, ValueError):
    """Index or pair files that are missing, malformed or inconsistent; names the file."""


@dataclass(frozen=True)
class ImageRecord:
    person: str
    key: str
    part_paths: tuple[Path, ...]  # in the index's `regions` order
    tensor_path: Path


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataIndexError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as error:
        raise DataIndexError(f"{path}: {what} is not valid JSON ({error})") from None


def load_twin_pairs(path: Path) -> list[tuple[str, ...]]:
    """`[[id_a, id_b], [id_c, id_d, id_e], ...]`: twin pairs, or groups of identical siblings
    (triplets, quadruplets); each identity in at most one group."""
    data = _read_json(path, "twin pairs file")
    if not isinstance(data, list):
        raise DataIndexError(f"{path}: expected a list of [id_a, id_b] pairs (or larger sibling groups)")
    groups, seen = [], set()
    for number, group in enumerate(data):
        if (not isinstance(group, (list, tuple)) or len(group) < 2
                or not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in group)
                or len({str(p) for p in group}) != len(group)):
            raise DataIndexError(f"{path}: entry {number} must be two or more different identity ids, "
                                 f"got {group!r}")
        members = tuple(str(p) for p in group)
        for person in members:
            if person in seen:
                raise DataIndexError(f"{path}: identity {person!r} appears in more than one twin pair or group")
            seen.add(person)
        groups.append(members)
    return groups


def _check_parts_index(data, path: Path) -> None:
    """`{person: {image key: {part: path string}}}`, as the extractor writes it."""
    if not isinstance(data, dict):
        raise DataIndexError(f"{path}: expected an object {{person: {{image key: {{part: path}}}}}}, "
                             f"got a JSON {type(data).__name__}; re-run the extractor")
    for person, entries in data.items():
        if not isinstance(entries, dict):
            raise DataIndexError(f"{path}: {person!r} must map to an object {{image key: {{part: path}}}}")
        for key, parts in entries.items():
            if not isinstance(parts, dict):
                raise DataIndexError(f"{path}: {person}/{key} must be an object {{part: path}}")
            for part, value in parts.items():
                if not isinstance(value, str):
                    raise DataIndexError(f"{path}: {person}/{key}/{part} must be a path string, got {value!r:.60}")


def _check_tensor_index(data, path: Path) -> None:
    """`{person: [path string, ...]}`, as the extractor writes it."""
    if not isinstance(data, dict):
        raise DataIndexError(f"{path}: expected an object {{person: [tensor paths]}}, got a JSON "
                             f"{type(data).__name__}; re-run the extractor")
    for person, paths in data.items():
        if not isinstance(paths, list) or not all(isinstance(v, str) for v in paths):
            raise DataIndexError(f"{path}: {person!r} must map to a list of path strings, got {paths!r:.60}")


class FaceDataIndex:
    """Every extracted image with its person, part crops and AdaFace tensor; and the siblings.

    `siblings_of[p]`: p's twins (one for a twin pair, more for triplets and larger groups),
    only those with images; people without any are absent.
    """

    def __init__(self, images: list[ImageRecord], twin_pairs: list[tuple[str, ...]],
                 regions: tuple[str, ...] = PART_NAMES, packed: PackedCrops | None = None):
        """`packed`: the extraction's packed crops, read instead of the image files when given."""
        self.images = images
        self.regions = tuple(regions)  # the order of every record's part_paths
        self.packed = packed
        self.packed_rows = None if packed is None else np.array([packed.row(r.person, r.key) for r in images])
        self.persons = sorted({record.person for record in images})
        person_number = {person: n for n, person in enumerate(self.persons)}
        self.person_of_image = np.array([person_number[r.person] for r in images], dtype=np.int64)
        self.images_of = {person: [] for person in self.persons}
        for number, record in enumerate(images):
            self.images_of[record.person].append(number)
        self.siblings_of: dict[str, tuple[str, ...]] = {}
        self.unmatched_twins: list[str] = []  # listed in twin_pairs.json but without images
        for group in twin_pairs:
            present = sorted(p for p in group if p in self.images_of)
            self.unmatched_twins += [p for p in group if p not in self.images_of]
            if len(present) >= 2:
                for person in present:
                    self.siblings_of[person] = tuple(p for p in present if p != person)

    @classmethod
    def load(cls, face_parts_dataset: Path, tensor_dataset: Path, twin_pairs: Path,
             regions: tuple[str, ...] = PART_NAMES) -> "FaceDataIndex":
        """Read the index files, keeping the crops of `regions` (in that order) for each image."""
        parts_index = _read_json(face_parts_dataset, "face parts index")
        tensor_index = _read_json(tensor_dataset, "tensor index")
        _check_parts_index(parts_index, face_parts_dataset)
        _check_tensor_index(tensor_index, tensor_dataset)
        parts_root, tensor_root = Path(face_parts_dataset).parent, Path(tensor_dataset).parent
        images = []
        for person, entries in sorted(parts_index.items()):
            tensors = [tensor_root / p for p in tensor_index.get(person, [])]
            by_folder = {t.parent.resolve(): t for t in tensors}
            by_stem = {t.stem: t for t in tensors}
            for key, parts in sorted(entries.items()):
                missing = [p for p in regions if p not in parts]
                if missing:
                    raise DataIndexError(f"{face_parts_dataset}: {person}/{key} lacks regions {missing}; extract "
                                         f"them with face_parts_extractor.py --regions {','.join(regions)}")
                part_paths = tuple(parts_root / parts[p] for p in regions)
                tensor = by_folder.get(part_paths[0].parent.resolve()) or by_stem.get(key)
                if tensor is None:
                    raise DataIndexError(f"{tensor_dataset}: no AdaFace tensor for {person}/{key} "
                                         f"(expected one in {part_paths[0].parent} or named {key}.pt)")
                images.append(ImageRecord(str(person), key, part_paths, tensor))
        if not images:
            raise DataIndexError(f"{face_parts_dataset}: no images")
        packed = None
        if (packed_folder_of(face_parts_dataset)).is_dir():
            try:
                packed = PackedCrops(packed_folder_of(face_parts_dataset), Path(face_parts_dataset), regions)
            except PackedCropsError as error:
                raise DataIndexError(str(error)) from None
        return cls(images, load_twin_pairs(twin_pairs), regions, packed)

    def crops_rgb(self, number: int) -> np.ndarray:
        """uint8 `R×S×S×3` RGB region crops of image `number` (packed arrays when present, else files)."""
        if self.packed is not None:
            return self.packed.crops_rgb(int(self.packed_rows[number]))
        return read_record_crops_rgb(self.images[number])

    def families(self) -> list[tuple[str, ...]]:
        """Sibling groups and people without a sibling, each once, in a fixed order."""
        done, result = set(), []
        for person in self.persons:
            if person not in done:
                family = tuple(sorted({person, *self.siblings_of.get(person, ())}))
                done.update(family)
                result.append(family)
        return result

    def family_ids_of_images(self, numbers: np.ndarray) -> np.ndarray:
        """Each image's family id: its family's members joined by "+" (twins share one)."""
        family_id = {person: "+".join(family) for family in self.families() for person in family}
        return np.array([family_id[self.images[int(n)].person] for n in numbers])


def split_families(families: list[tuple[str, ...]], train_split: float, test_split: float,
                   seed: int) -> dict[str, list[str]]:
    """Seeded split of families into train/val/test identity lists (siblings never separated).

    Validation and test get their share of families, and at least two identities each
    (so that they hold impostor pairs); training gets the rest.
    """
    order = [families[i] for i in np.random.default_rng([seed, 7]).permutation(len(families))]
    wanted = {"test": int(round(test_split * len(families))) if test_split > 0 else 0,
              "val": max(1, int(round((1 - train_split - test_split) * len(families))))}
    split: dict[str, list[str]] = {name: [] for name in SPLITS}
    position = 0
    for name in ("test", "val"):
        taken = 0
        while wanted[name] and (taken < wanted[name] or len(split[name]) < 2) and position < len(order):
            split[name] += order[position]
            taken, position = taken + 1, position + 1
    split["train"] = [p for family in order[position:] for p in family]
    if len(split["train"]) < 2 or len(split["val"]) < 2 or (test_split > 0 and len(split["test"]) < 2):
        raise DataIndexError(f"{len(families)} families are too few for train/val/test shares "
                             f"{train_split}/{1 - train_split - test_split:.2f}/{test_split}")
    return {name: sorted(split[name]) for name in SPLITS}


def _sample(names: list[str]) -> str:
    return f"{names[:5]}{' and %d more' % (len(names) - 5) if len(names) > 5 else ''}"


def check_split(saved, index: FaceDataIndex, path: Path) -> dict[str, list[str]]:
    """The train/val/test identity lists of a saved split, after checking that they are
    disjoint, keep every twin pair together and match the dataset's identities."""
    fresh = "train in a new --output-dir, which makes a new split"
    if not isinstance(saved, dict) or not all(isinstance(saved.get(name), list) for name in SPLITS):
        raise DataIndexError(f"{path}: expected an object with identity lists 'train', 'val' and 'test'; "
                             f"it was edited or damaged: restore it, or {fresh}")
    split = {name: [str(p) for p in saved[name]] for name in SPLITS}
    where: dict[str, str] = {}
    for name in SPLITS:
        for person in split[name]:
            if person in where and where[person] != name:
                raise DataIndexError(f"{path}: identity {person!r} is in both {where[person]} and {name}, which "
                                     f"would leak it across splits; restore the file, or {fresh}")
            where[person] = name
    for a, siblings in index.siblings_of.items():
        for b in (b for b in siblings if a in where and b in where and where[a] != where[b]):
            raise DataIndexError(f"{path}: twins {a!r} ({where[a]}) and {b!r} ({where[b]}) are in different "
                                 f"splits; a family stays together: restore the file, or {fresh}")
    gone = sorted(set(where) - set(index.images_of))
    if gone:
        raise DataIndexError(f"{path}: {len(gone)} identities of the saved split have no images in the dataset "
                             f"now ({_sample(gone)}); bring their photos back and re-extract, or {fresh}")
    new = sorted(set(index.persons) - set(where))
    if new:
        raise DataIndexError(f"{path}: the dataset has identities the saved split lacks ({_sample(new)}); "
                             f"{fresh}")
    return split


def load_split(path: Path, index: FaceDataIndex) -> dict[str, list[str]]:
    """A run's saved `split.json`, checked against the dataset (`check_split`)."""
    return check_split(_read_json(path, "saved split"), index, path)


def load_or_make_split(path: Path, index: FaceDataIndex, train_split: float, test_split: float,
                       seed: int) -> dict[str, list[str]]:
    """The run's saved split (checked on every load), or a new one saved atomically."""
    if path.exists():
        return load_split(path, index)
    split = split_families(index.families(), train_split, test_split, seed)
    write_json_atomic(path, {"format_version": SPLIT_FORMAT_VERSION, "seed": seed,
                             "train_split": train_split, "test_split": test_split, **split})
    return split


@dataclass(frozen=True)
class Triplets:
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    twin_negative: np.ndarray  # bool: the negative is the anchor's twin

    def __len__(self) -> int:
        return len(self.anchor)


def curriculum_stage(strategy: str, epoch: int, switch_epoch: int) -> int:
    """1 = random negatives, 2 = twin negatives; fixed strategies are stage 1 throughout."""
    return 2 if strategy == "curriculum" and epoch >= switch_epoch else 1


def draw_triplets(index: FaceDataIndex, persons: list[str], strategy: str, twin_fraction: float,
                  rng: np.random.Generator) -> Triplets:
    """One triplet per anchor image (people with ≥ 2 images), in a shuffled order.

    `strategy`: "random", "twin" (the anchor's twin, a random one of them for triplets and
    larger sibling groups, or a random person when it has none in `persons`) or "mixed"
    (twin with probability `twin_fraction`).
    """
    members = [p for p in persons if p in index.images_of]
    member_set = set(members)
    anchors = [i for p in members if len(index.images_of[p]) >= 2 for i in index.images_of[p]]
    if not anchors or len(members) < 2:
        raise DataIndexError(f"cannot form triplets from {len(members)} people: need two people and "
                             "someone with at least two images")
    rows = []
    for anchor in anchors:
        person = index.images[anchor].person
        own = index.images_of[person]
        positive = own[(own.index(anchor) + 1 + rng.integers(len(own) - 1)) % len(own)]
        twins = [p for p in index.siblings_of.get(person, ()) if p in member_set]
        wants_twin = strategy == "twin" or (strategy == "mixed" and rng.random() < twin_fraction)
        if wants_twin and twins:
            negative_person = twins[rng.integers(len(twins))] if len(twins) > 1 else twins[0]
        else:
            others = len(members) - 1
            pick = rng.integers(others)
            negative_person = members[pick + (pick >= members.index(person))]
        pool = index.images_of[negative_person]
        rows.append((anchor, positive, pool[rng.integers(len(pool))], negative_person in twins))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    columns = list(zip(*rows))
    return Triplets(*(np.array(c, dtype=np.int64) for c in columns[:3]), np.array(columns[3], dtype=bool))


def epoch_triplets(index: FaceDataIndex, persons: list[str], strategy: str, twin_fraction: float,
                   switch_epoch: int, seed: int, epoch: int) -> Triplets:
    """The triplets of one training epoch: a function of (seed, epoch) only."""
    stage = curriculum_stage(strategy, epoch, switch_epoch)
    effective = {"curriculum": "random" if stage == 1 else "twin"}.get(strategy, strategy)
    return draw_triplets(index, persons, effective, twin_fraction, np.random.default_rng([seed, 1, epoch]))


# ---- augmentation (photometric + small geometric; never a flip: moles and scars have a side)

def random_affine(size_px: int, rng: np.random.Generator, degrees: float, scale: float,
                  shift: float) -> np.ndarray:
    angle = rng.uniform(-degrees, degrees)
    zoom = rng.uniform(1 - scale, 1 + scale)
    matrix = cv2.getRotationMatrix2D((size_px / 2 - 0.5, size_px / 2 - 0.5), angle, zoom)
    matrix[:, 2] += rng.uniform(-shift, shift, 2) * size_px
    return matrix


def augment_image(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0, degrees: float = 8.0,
                  scale: float = 0.08, shift: float = 0.04) -> np.ndarray:
    """A randomly varied copy of a square uint8 image (any channel order).

    `strength` scales every range (rotation, zoom, shift, contrast, brightness, gamma,
    blur probability) from the defaults given at 1.0.
    """
    size = image.shape[0]
    out = cv2.warpAffine(image, random_affine(size, rng, degrees * strength, scale * strength, shift * strength),
                         (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    contrast, brightness = 1 + rng.uniform(-0.2, 0.2) * strength, rng.uniform(-20, 20) * strength
    gamma = 1 + rng.uniform(-0.15, 0.15) * strength
    table = np.clip(((np.arange(256) / 255.0) ** gamma * 255.0 - 128) * contrast + 128 + brightness, 0, 255)
    out = cv2.LUT(out, table.astype(np.uint8))
    if rng.random() < 0.2 * strength:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.0))
    return out


def read_crop_rgb(path: Path) -> np.ndarray:
    try:
        return read_crop_file_rgb(path)
    except PackedCropsError as error:
        raise DataIndexError(str(error)) from None


def read_record_crops_rgb(record: ImageRecord) -> np.ndarray:
    """uint8 `5×S×S×3` RGB crops of one image from its files; all crops must share one size."""
    crops = [read_crop_rgb(path) for path in record.part_paths]
    sizes = {c.shape for c in crops}
    if len(sizes) != 1:
        raise DataIndexError(f"{record.part_paths[0].parent}: part crops differ in size {sorted(sizes)}")
    return np.stack(crops)


def read_adaface_tensor(path: Path) -> torch.Tensor:
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataIndexError(f"{path}: AdaFace input tensor missing; re-run the extractor") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise DataIndexError(f"{path}: AdaFace input tensor unreadable (empty, truncated or damaged: "
                             f"{type(error).__name__}); delete its folder and re-run the extractor") from None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape[-3:]) != (3, 112, 112):
        raise DataIndexError(f"{path}: expected a 3×112×112 AdaFace input tensor")
    return tensor.reshape(3, 112, 112).float()


def adaface_tensor_to_bgr(tensor: torch.Tensor) -> np.ndarray:
    """Invert the AdaFace input contract: `(x/255−0.5)/0.5` channels-first → uint8 BGR 112×112×3."""
    return np.clip(np.rint((tensor.numpy().transpose(1, 2, 0) * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)


def sample_rng(seed: int, epoch: int, item: int, role: int) -> np.random.Generator:
    return np.random.default_rng([seed, 2, epoch, item, role])


def crops_to_tensor(crops_rgb: np.ndarray, rng: np.random.Generator | None, strength: float = 1.0) -> torch.Tensor:
    """uint8 `P×S×S×3` RGB crops → uint8 `P×3×S×S`, each augmented on the CPU when `rng` is given."""
    if rng is not None:
        crops_rgb = np.stack([augment_image(crop, rng, strength) for crop in crops_rgb])
    return torch.from_numpy(np.ascontiguousarray(crops_rgb)).permute(0, 3, 1, 2).contiguous()


def part_crops_sample(crops_rgb: np.ndarray, rng: np.random.Generator | None, strength: float,
                      on_device: bool) -> dict[str, torch.Tensor]:
    """A sample's part crops as `parts` (uint8 `P×3×S×S`), augmented here when `rng` is given.

    With `on_device`, the crops stay plain and `augment_params` (`P×8`, drawn from `rng`)
    holds each crop's augmentation for the training step to apply on its device.
    """
    if rng is None or not on_device:
        return {"parts": crops_to_tensor(crops_rgb, rng, strength)}
    return {"parts": crops_to_tensor(crops_rgb, None),
            "augment_params": torch.from_numpy(device_augment.draw_parameters(rng, len(crops_rgb), strength))}


class TripletDataset(Dataset):
    """Item `i` of an epoch's triplets: uint8 parts and cached global embeddings of the three images."""

    def __init__(self, index: FaceDataIndex, triplets: Triplets, global_embeddings: torch.Tensor,
                 augment: bool, seed: int, epoch: int, augment_strength: float = 1.0,
                 augment_on_device: bool = False):
        """`global_embeddings`: `N×V×512`, view 0 plain, views 1.. of augmented faces;
        `augment_on_device`: see `part_crops_sample`."""
        self.index, self.triplets = index, triplets
        self.global_embeddings = global_embeddings
        self.augment, self.seed, self.epoch = augment, seed, epoch
        self.augment_strength, self.augment_on_device = augment_strength, augment_on_device

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        images = (self.triplets.anchor[item], self.triplets.positive[item], self.triplets.negative[item])
        sample = {"twin_negative": torch.tensor(bool(self.triplets.twin_negative[item]))}
        for role, (name, image) in enumerate(zip(("anchor", "positive", "negative"), images)):
            rng = sample_rng(self.seed, self.epoch, item, role) if self.augment else None
            parts = part_crops_sample(self.index.crops_rgb(image), rng, self.augment_strength, self.augment_on_device)
            sample.update({f"{name}_{key}": value for key, value in parts.items()})
            view = int(rng.integers(self.global_embeddings.shape[1])) if rng is not None else 0
            sample[f"{name}_global"] = self.global_embeddings[image, view]
        return sample


class ImageDataset(Dataset):
    """Plain (unaugmented) part crops of chosen images, for validation and evaluation."""

    def __init__(self, index: FaceDataIndex, image_numbers: list[int] | np.ndarray):
        self.index, self.image_numbers = index, np.asarray(image_numbers, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_numbers)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        number = int(self.image_numbers[item])
        return {"image": torch.tensor(number), "parts": crops_to_tensor(self.index.crops_rgb(number), None)}


class FaceViewDataset(Dataset):
    """AdaFace inputs of every image: view 0 as extracted, views 1..V augmented (seeded).

    Used once per run to fill the global-embedding cache (AdaFace is frozen, so its
    output for a given input never changes).
    """

    def __init__(self, index: FaceDataIndex, augmented_views: int, seed: int):
        self.index, self.views, self.seed = index, 1 + augmented_views, seed

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, item: int) -> torch.Tensor:
        plain = read_adaface_tensor(self.index.images[item].tensor_path)
        views = [plain]
        if self.views > 1:
            face_bgr = adaface_tensor_to_bgr(plain)
            for view in range(1, self.views):
                rng = np.random.default_rng([self.seed, 3, item, view])
                views.append(adaface_input_tensor(augment_image(face_bgr, rng, degrees=5, scale=0.05, shift=0.03)))
        return torch.stack(views)
