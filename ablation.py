"""Which training recipe tells the demo's simulated twins apart: every recipe, 3 seeds, one table.

    python ablation.py [--output-dir demo_output/ablation] [--seeds 0 1 2] [--train-images 9000]
                       [--simulator default|legacy|split] [--global-model auto|none|FILE]
    make ablation

Each recipe trains on the demo's data (real photos → simulated twins → 64 px parts, see
demo_data.py) with the CPU-sized settings of `make demo`, once per seed (the seed also
draws the family split, so each seed holds out other families), and is evaluated on
its held-out test families. The "parts only" row scores the default recipe's models
with the global embedding zeroed. Outputs: OUTPUT/ablation.md (the table, also for the
README), OUTPUT/ablation.json (every run's numbers), one run folder per recipe and seed.
Re-running resumes: finished runs are read back, not trained again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import evaluate
from atomic_files import write_json_atomic, write_text_atomic
from cli_errors import cli_main
from demo_data import CPU_SIZED, DEMO_CROP_PX, DEMO_IMAGES_PER_IDENTITY, REPO, choose_global_model, prepare_demo_data
from family_batches import epoch_family_batches
from make_twin_demo import PRESETS
from train_config import TrainConfig
from train_twin_verification import run_training
from triplet_dataset import FaceDataIndex, epoch_triplets, split_families

DEFAULT_RECIPE = "families + batch_all, spatial head"
RECIPES: dict[str, dict[str, Any]] = {
    "triplets, random negatives": dict(sampler="triplets", loss="triplet", negative_strategy="random"),
    "triplets, mixed negatives": dict(sampler="triplets", loss="triplet", negative_strategy="mixed"),
    "triplets, twin negatives": dict(sampler="triplets", loss="triplet", negative_strategy="twin"),
    "families + batch_all, spatial head": dict(sampler="families", loss="batch_all"),
    "families + batch_hard, spatial head": dict(sampler="families", loss="batch_hard"),
    "families + batch_all, pool head": dict(sampler="families", loss="batch_all", part_head="pool"),
    "families + batch_all, no global distillation": dict(sampler="families", loss="batch_all",
                                                         global_distillation=0.0),
    "families + batch_all, virtual twins 0.5": dict(sampler="families", loss="batch_all", virtual_twins=0.5),
    "families + batch_all, rgb part input": dict(sampler="families", loss="batch_all", part_input="rgb"),
    "families + batch_all, no parts loss": dict(sampler="families", loss="batch_all", part_loss_weight=0.0),
    "families + batch_all, parts compared": dict(sampler="families", loss="batch_all", decision_embedding="parts"),
    "families + batch_all, combined decision": dict(sampler="families", loss="batch_all",
                                                    decision_embedding="combined"),
}
PARTS_ONLY = "parts only (default recipe, global input zeroed, no recogniser gate)"


def images_per_epoch(config: TrainConfig) -> int:
    """Images one training epoch of `config` encodes (its sampler on its seed's training families)."""
    index = FaceDataIndex.load(Path(config.face_parts_dataset_path), Path(config.tensor_dataset_path),
                               Path(config.twin_pairs_path))
    train = split_families(index.families(), config.train_split, config.test_split, config.seed)["train"]
    if config.sampler == "families":
        batches = epoch_family_batches(index, train, config.families_per_batch, config.images_per_identity,
                                       config.seed, 0)
        return sum(len(batch) for batch in batches.batches)
    return 3 * len(epoch_triplets(index, train, config.negative_strategy, config.twin_negative_fraction,
                                  config.curriculum_switch_epoch, config.seed, 0))


def recipe_config(name: str, seed: int, train_images: int, data_paths: dict[str, str], adaface: str,
                  output: Path, base: dict[str, Any]) -> TrainConfig:
    """The recipe's config, with as many epochs as it takes to encode about `train_images` images,
    so that every recipe gets the same training budget."""
    config = TrainConfig(**{**base, **RECIPES[name]}, seed=seed, adaface_checkpoint=adaface, output_dir=str(output),
                         **data_paths)
    epochs = max(1, int(round(train_images / images_per_epoch(config))))
    return replace(config, num_epochs=epochs, early_stopping_patience=0)


def share_global_cache(run_dir: Path, output: Path) -> None:
    """The frozen global branch's embeddings are the same for every run (no augmented views are
    cached): copy them in rather than recompute (training checks the cache's key and recomputes
    on any mismatch)."""
    shared = output / "global_cache" / "global_embeddings.pt"
    target = run_dir / "cache" / "global_embeddings.pt"
    if shared.is_file() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, target)


def keep_global_cache(run_dir: Path, output: Path) -> None:
    shared = output / "global_cache" / "global_embeddings.pt"
    if not shared.exists():
        shared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "cache" / "global_embeddings.pt", shared)


def run_one(config: TrainConfig, run_dir: Path, parts_only: bool = False) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it on its test families."""
    state = run_training(config)
    best, evaluation = run_dir / "checkpoints" / "best.pth", run_dir / ("evaluation_parts_only" if parts_only
                                                                        else "evaluation")
    report_path = evaluation / "report.json"
    latest = run_dir / "checkpoints" / "latest.pth"
    if report_path.is_file() and report_path.stat().st_mtime >= latest.stat().st_mtime:
        report = json.loads(report_path.read_text())  # evaluated after the training finished
    else:
        report = evaluate.evaluate(best, evaluation, bootstrap=200, workers=0, progress=False, parts_only=parts_only,
                                   store_threshold=False)
    combined = report["models"]["combined"]
    interval = (combined["bootstrap"] or {}).get("twin") or {}
    eer = lambda model, kind: (report["models"][model]["test"][kind] or {}).get("eer")  # None: no such pairs
    return {"twin_eer": eer("combined", "twin"), "general_eer": eer("combined", "general"),
            "twin_eer_interval": [interval["eer"].get("low"), interval["eer"].get("high")] if "eer" in interval else None,
            "global_alone_twin_eer": eer("adaface", "twin"), "global_alone_general_eer": eer("adaface", "general"),
            "global_branch": report["global_branch"], "best_epoch": state["best"]["epoch"],
            "epochs": state["epoch"], "images_encoded": state.get("images_encoded"),
            "seconds": state.get("seconds"), "time_to_twin_eer": state.get("time_to_twin_eer"),
            "part_images_per_second": float(np.mean([r["part_images_per_second"] for r in state["history"]])),
            "test_families": report["test_identities"] // 2}


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    twin = np.array([r["twin_eer"] for r in runs], dtype=float)  # None (no such pairs) → nan
    general = np.array([r["general_eer"] for r in runs], dtype=float)
    return {"recipe": name, "seeds": len(runs), "twin_eer_mean": float(twin.mean()), "twin_eer_sd": float(twin.std(ddof=1)) if len(runs) > 1 else 0.0,
            "twin_eer_median": float(np.median(twin)), "general_eer_mean": float(general.mean()),
            "twin_eer_by_seed": {r["seed"]: r["twin_eer"] for r in runs},
            "twin_eer_interval_by_seed": {r["seed"]: r["twin_eer_interval"] for r in runs},
            "images_encoded": float(np.mean([r["images_encoded"] or 0 for r in runs])),
            "seconds": float(np.mean([r["seconds"] or 0 for r in runs]))}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | twin EER, mean ± sd | twin EER, median | general EER | images encoded | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['recipe']} | {100 * row['twin_eer_mean']:.1f}% ± {100 * row['twin_eer_sd']:.1f} | "
                     f"{100 * row['twin_eer_median']:.1f}% | {100 * row['general_eer_mean']:.1f}% | "
                     f"{row['images_encoded']:,.0f} | {row['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def run_ablation(output: Path, seeds: list[int], train_images: int, recipes: list[str], photos: Path | None,
                 adaface: str, table_only: bool = False, simulator: str = "default") -> dict[str, Any]:
    data = prepare_demo_data(photos, output / "data", DEMO_IMAGES_PER_IDENTITY, DEMO_CROP_PX, progress=False,
                             simulator=simulator)
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:  # every recipe once before any twice, so that a partial table is balanced
        for name in recipes:
            slug = name.replace(",", "").replace(" + ", "_").replace(" ", "_")
            run_dir = output / "runs" / slug / f"seed{seed}"
            if table_only and not (run_dir / "evaluation" / "report.json").is_file():
                continue  # not trained and evaluated yet: left out of the table
            share_global_cache(run_dir, output)
            started = time.perf_counter()
            result = run_one(recipe_config(name, seed, train_images, data.paths, adaface, run_dir, CPU_SIZED), run_dir)
            keep_global_cache(run_dir, output)
            results.setdefault(name, []).append({"seed": seed, **result})
            print(f"{name}, seed {seed}: twin EER {100 * result['twin_eer']:.1f}%, general EER "
                  f"{100 * result['general_eer']:.1f}% ({time.perf_counter() - started:.0f} s)", flush=True)
            if name == DEFAULT_RECIPE and not (table_only and not
                                               (run_dir / "evaluation_parts_only" / "report.json").is_file()):
                parts = run_one(recipe_config(name, seed, train_images, data.paths, adaface, run_dir, CPU_SIZED),
                                run_dir, parts_only=True)
                results.setdefault(PARTS_ONLY, []).append({"seed": seed, **parts})
            write_report(output, seeds, train_images, data, results, simulator)
    return write_report(output, seeds, train_images, data, results, simulator)


def write_report(output: Path, seeds: list[int], train_images: int, data, results: dict[str, list],
                 simulator: str = "default") -> dict[str, Any]:
    """ablation.md and ablation.json from the runs so far (rewritten after every run)."""
    rows = [summarise(name, runs) for name, runs in results.items()]
    global_label = next(iter(results.values()))[0]["global_branch"]
    done = sorted({run["seed"] for runs in results.values() for run in runs})
    which = ", ".join(map(str, done)) + ("" if done == sorted(seeds) else f" of {', '.join(map(str, seeds))}")
    text = (f"Held-out twin families of the demo data (simulator preset {simulator}; {data.photos} photos, "
            f"{DEMO_IMAGES_PER_IDENTITY} per identity, {DEMO_CROP_PX} px parts), seeds {which} "
            f"(a seed also draws the family split), each run trained for about {train_images:,} encoded images "
            f"(the epochs that take), the checkpoint with the best validation twin plus general EER evaluated; global branch: "
            f"{global_label}. Images encoded and wall time (training and validation) are per run.\n\n{table(rows)}\n")
    write_text_atomic(output / "ablation.md", text)
    write_json_atomic(output / "ablation.json", {"seeds": seeds, "train_images": train_images, "runs": results,
                                                 "rows": rows})
    return {"rows": rows, "runs": results, "text": text}


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "demo_output" / "ablation")
    parser.add_argument("--photos", type=Path, help="folder with one sub-folder of photos per person")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-images", type=int, default=9000, help="training budget of each run in "
                        "encoded images; each recipe trains for the epochs that take (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                        metavar="RECIPE", help=f"any of: {'; '.join(RECIPES)} (default: all)")
    parser.add_argument("--simulator", choices=sorted(PRESETS), default="default",
                        help="twin simulator preset of the data (default: %(default)s)")
    parser.add_argument("--global-model", default="auto",
                        help="auto (AdaFace where present, else pretrained/w600k_mbf.onnx), none (an untrained "
                             "IR-50), or a global model file (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--table-only", action="store_true", help="write the table from the runs already "
                        "trained and evaluated (e.g. by several processes, one per seed); train nothing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    adaface, global_note = choose_global_model(args.global_model)
    print(global_note)
    result = run_ablation(args.output_dir, args.seeds, args.train_images, args.recipes, args.photos, adaface,
                          args.table_only, args.simulator)
    print(result["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
