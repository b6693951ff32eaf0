"""Evaluate a trained twin model against AdaFace alone, on identities it never saw.

    python evaluate.py --checkpoint twin_verification_training/checkpoints/best.pth
    python evaluate.py --checkpoint best.pth --jpg-dataset twins.json --twin-pairs pairs.json
    python evaluate.py --checkpoint best.pth --by-trait twin_data/traits.json   # simulated twins

Without a dataset, the run's saved split is used: the decision threshold is chosen on
the validation identities, the numbers are measured on the test identities. With
`--jpg-dataset`, every identity in it is a test identity (photos are extracted into the
output folder first, resumably) and the threshold is the one stored in the checkpoint.

Pairs: every genuine pair, every twin-impostor pair, and every general-impostor pair or
a seeded sample of them (the report states how many exist and how many were scored).
Each image is embedded once, in batches; both models score the same pairs. Outputs in
OUTPUT_DIR: report.json, pairs.csv (one row per scored pair), roc.png,
score_histograms.png, and a table on stdout. The combined model's validation threshold
is written back into the checkpoint (atomically) for inference. With `--by-trait` (the
simulator's traits.json), the twin EER of both models is also broken down by mark kind and by
where the marks are (inside the five parts / only in added regions / outside all): by_trait.json
and a second table (`trait_breakdown`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import distributed
import model_runner as runner
import face_parts_extractor as extractor
import verification_metrics as vm
import trait_breakdown
import verification_pairs as vp
from atomic_files import torch_save_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic
from combined_model import TwinVerificationModel
from train_config import TrainConfig
from triplet_dataset import DataIndexError, FaceDataIndex

MODELS = ("combined", "adaface")
KINDS = ("twin", "general", "all")


def family_of(index: FaceDataIndex) -> dict[str, str]:
    """Each person's family id (a twin pair shares one), for resampling families together."""
    return {person: "+".join(family) for family in index.families() for person in family}


def global_embeddings_of(model: TwinVerificationModel, index: FaceDataIndex, numbers: np.ndarray,
                         config: TrainConfig, device: torch.device) -> torch.Tensor:
    """`len(index.images)×512` AdaFace features, filled for `numbers` (one forward per image)."""
    result = torch.zeros(len(index.images), 512)
    result[numbers] = runner.global_embeddings(model, index, numbers, 0, config.seed, device, config.num_workers,
                                               config.progress)[:, 0]
    return result


def split_embeddings(model, index, persons, global_all, config, context) -> dict[str, Any]:
    """Both models' embeddings of every image of `persons`, and their verification pairs."""
    numbers = np.array(sorted(i for p in persons for i in index.images_of[p]), dtype=np.int64)
    person_number = {p: k for k, p in enumerate(index.persons)}
    twins = {person_number[a]: person_number[b] for a, b in index.twin_of.items()}
    pairs = vp.verification_pairs(index.person_of_image[numbers], twins, config.max_general_impostor_pairs,
                                  np.random.default_rng([config.seed, 6]))
    combined = runner.embed_images(model, index, numbers, global_all, context,
                                   runner.autocast_dtype(config.precision, context.device),
                                   runner.uses_channels_last(config.channels_last, context.device), config.num_workers)
    embeddings = {"combined": combined,
                  "adaface": global_all[numbers].numpy()}
    return {"numbers": numbers, "pairs": pairs,
            "scores": {name: vp.cosine_scores(e, pairs) for name, e in embeddings.items()}}


def choose_threshold(scores: np.ndarray, pairs: vp.Pairs, rule: str) -> float:
    return vm.select_threshold(scores, (pairs.kind == vp.GENUINE).astype(int), rule=rule)


def bootstrap_intervals(scores, pairs, families_a, families_b, resamples: int, seed: int) -> dict[str, Any]:
    """95% intervals of EER and AUC per impostor kind, resampling twin families."""
    genuine = pairs.kind == vp.GENUINE
    metric_fns = {"eer": lambda s, l, w: vm.equal_error_rate(s, l, w)[0], "auc": vm.roc_auc}
    intervals: dict[str, Any] = {}
    for kind, selected in vp.impostor_selections(pairs.kind).items():
        labels = genuine[selected].astype(int)
        if not 0 < labels.sum() < len(labels):
            intervals[kind] = None
            continue
        intervals[kind] = {}
        for name, fn in metric_fns.items():
            try:
                ci = vm.bootstrap_ci(fn, scores[selected], labels, families_a[selected], families_b[selected],
                                     n_resamples=resamples, seed=seed)
                intervals[kind][name] = {"low": ci.low, "high": ci.high, "resamples_used": ci.n_used}
            except ValueError as error:  # too few families to resample
                intervals[kind][name] = {"error": str(error)}
    return intervals


def pair_rows(split_name: str, index: FaceDataIndex, data: dict[str, Any]) -> list[list[Any]]:
    pairs, numbers, scores = data["pairs"], data["numbers"], data["scores"]
    rows = []
    for k in range(len(pairs)):
        a, b = index.images[numbers[pairs.first[k]]], index.images[numbers[pairs.second[k]]]
        rows.append([split_name, f"{a.person}/{a.key}", f"{b.person}/{b.key}", a.person, b.person,
                     vp.KIND_NAMES[int(pairs.kind[k])], f"{scores['combined'][k]:.6f}", f"{scores['adaface'][k]:.6f}"])
    return rows


def write_plots(test: dict[str, Any], labels: dict[str, str], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = test["pairs"].kind
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, style in zip(MODELS, ("-", "--")):
        for kind, (far, tar) in vp.roc_by_impostor_kind(test["scores"][name], kinds).items():
            axes.plot(far, tar, style, color=vp.KIND_COLOURS[kind],
                      label=f"{labels[name]}, {vp.KIND_NAMES[kind]} impostors")
    axes.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false accept rate", ylabel="true accept rate")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    save_figure(figure, output / "roc.png")
    figure, panels = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for panel, name in zip(panels, MODELS):
        for kind, colour in vp.KIND_COLOURS.items():
            values = test["scores"][name][kinds == kind]
            if len(values):
                panel.hist(values, bins=40, range=(-1, 1), density=True, alpha=0.5, color=colour,
                           label=f"{vp.KIND_NAMES[kind]} ({len(values)})")
        panel.set(title=labels[name], xlabel="cosine similarity")
        panel.legend(fontsize=7)
    save_figure(figure, output / "score_histograms.png")


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table of the headline numbers."""
    lines = [f"{'model':34s} {'impostors':9s} {'EER':>7s} {'EER 95% CI':>15s} {'AUC':>6s} "
             f"{'TAR@1e-2':>9s} {'accuracy':>8s}"]
    for name in MODELS:
        for kind in KINDS:
            entry = report["models"][name]["test"][kind]
            if entry is None:
                lines.append(f"{report['models'][name]['label'][:34]:34s} {kind:9s}   (no pairs)")
                continue
            tar = entry["tar_at_far"]["1e-02"]
            tar_text = f"{100 * tar['tar']:8.2f}%" if tar["reliable"] else "  too few"
            ci = (report["models"][name]["bootstrap"] or {}).get(kind) or {}
            eer_ci = ci.get("eer", {})
            ci_text = f"{100 * eer_ci['low']:5.1f}–{100 * eer_ci['high']:5.1f}%" if "low" in eer_ci else "n/a"
            accuracy_text = f"{100 * entry['accuracy']:7.2f}%" if "accuracy" in entry else "n/a"
            lines.append(f"{report['models'][name]['label'][:34]:34s} {kind:9s} {100 * entry['eer']:6.2f}% "
                         f"{ci_text:>15s} {entry['auc']:6.3f} {tar_text:>9s} {accuracy_text:>8s}")
    return "\n".join(lines)


def evaluate(checkpoint_path: Path, output: Path, jpg_dataset: Path | None = None, twin_pairs: Path | None = None,
             adaface_checkpoint: str | None = None, threshold_rule: str = "eer", bootstrap: int = 1000,
             store_threshold: bool = True, device: str = "auto", workers: int = 2,
             progress: bool = True, by_trait: Path | None = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (also written to OUTPUT/report.json)."""
    traits = trait_breakdown.load_traits(by_trait) if by_trait is not None else None
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(checkpoint["config"], str(checkpoint_path))
    config = replace(config, num_workers=workers, device=device, progress=progress)
    context = distributed.Context(device=distributed.resolve_device(device, 0))
    model = TwinVerificationModel.from_checkpoint(checkpoint, adaface_checkpoint).to(context.device)
    output.mkdir(parents=True, exist_ok=True)
    if jpg_dataset is not None:
        if twin_pairs is None:
            raise DataIndexError("--jpg-dataset needs --twin-pairs")
        extracted = output / "extracted"
        summary = extractor.extract_dataset(
            extractor.load_jpg_dataset(jpg_dataset), jpg_dataset.resolve().parent, extracted,
            extractor.ExtractionSettings(crop_size_px=checkpoint["part_crop_size"], regions=model.config.regions),
            progress=progress,
            contact_sheet_images=0)
        if summary.failures:
            print(f"{len(summary.failures)} photos could not be used (see {extracted / extractor.FAILURES_REPORT})")
        index = FaceDataIndex.load(extracted / extractor.PARTS_INDEX, extracted / extractor.TENSOR_INDEX, twin_pairs,
                                   model.config.regions)
        split = {"val": [], "test": index.persons}
    else:
        run_dir = checkpoint_path.resolve().parent.parent
        index = FaceDataIndex.load(Path(config.face_parts_dataset_path), Path(config.tensor_dataset_path),
                                   Path(config.twin_pairs_path), model.config.regions)
        split = json.loads((run_dir / "split.json").read_text())
        if not split["test"]:
            raise DataIndexError(f"{run_dir / 'split.json'} has no test identities (trained with test_split 0); "
                                 "evaluate on a separate --jpg-dataset instead")
    needed = np.array(sorted(i for p in split["val"] + split["test"] for i in index.images_of[p]), dtype=np.int64)
    global_all = global_embeddings_of(model, index, needed, config, context.device)
    test = split_embeddings(model, index, split["test"], global_all, config, context)
    val = split_embeddings(model, index, split["val"], global_all, config, context) if split["val"] else None

    labels = {"combined": "twin model (global + parts)",
              "adaface": f"AdaFace alone{' (UNTRAINED)' if model.config.adaface_checkpoint is None else ''}"}
    families = family_of(index)
    family_a = np.array([families[index.images[test["numbers"][i]].person] for i in test["pairs"].first])
    family_b = np.array([families[index.images[test["numbers"][i]].person] for i in test["pairs"].second])
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_path), "global_branch": model.global_branch_label,
        "test_identities": len(split["test"]), "test_images": len(test["numbers"]),
        "pairs": {vp.KIND_NAMES[k]: int((test["pairs"].kind == k).sum()) for k in vp.KIND_NAMES},
        "general_impostor_pairs_existing": test["pairs"].general_total,
        "threshold_source": (f"chosen on {len(split['val'])} validation identities ({threshold_rule})" if val
                             else "stored in the checkpoint (from training validation)"),
        "models": {}}
    for name in MODELS:
        if val is not None:
            threshold = choose_threshold(val["scores"][name], val["pairs"], threshold_rule)
        else:
            threshold = float(checkpoint["threshold"]) if name == "combined" else None
        metrics = vp.metrics_by_impostor_kind(test["scores"][name], test["pairs"].kind, threshold)
        report["models"][name] = {
            "label": labels[name], "threshold": threshold, "test": metrics,
            "bootstrap": bootstrap_intervals(test["scores"][name], test["pairs"], family_a, family_b, bootstrap,
                                             config.seed) if bootstrap else None}
    if traits is not None:
        persons_a = [index.images[test["numbers"][i]].person for i in test["pairs"].first]
        persons_b = [index.images[test["numbers"][i]].person for i in test["pairs"].second]
        twin_of = {p: t for p, t in index.twin_of.items() if p in set(split["test"])}
        report["by_trait"] = {name: trait_breakdown.twin_eer_by_trait(test["scores"][name], test["pairs"].kind,
                                                                     persons_a, persons_b, twin_of, traits)
                              for name in MODELS}
        write_json_atomic(output / "by_trait.json", {"traits": str(by_trait), **report["by_trait"]})
    write_json_atomic(output / "report.json", report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "image_a", "image_b", "person_a", "person_b", "kind", "score_combined", "score_adaface"])
    writer.writerows(pair_rows("test", index, test))
    write_text_atomic(output / "pairs.csv", buffer.getvalue())
    write_plots(test, labels, output)
    if store_threshold and val is not None:
        checkpoint["threshold"] = report["models"]["combined"]["threshold"]
        checkpoint["threshold_rule"] = f"{threshold_rule} on validation pairs (evaluate.py)"
        torch_save_atomic(checkpoint, checkpoint_path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a twin model and AdaFace alone on unseen identities.")
    parser.add_argument("--checkpoint", type=Path, default=Path("twin_verification_training/checkpoints/best.pth"))
    parser.add_argument("--output-dir", type=Path, help="default: RUN_DIR/evaluation (or next to the checkpoint)")
    parser.add_argument("--jpg-dataset", type=Path, help="evaluate on these photos instead of the run's test split")
    parser.add_argument("--twin-pairs", type=Path, help="twin pairs of --jpg-dataset")
    parser.add_argument("--adaface-checkpoint", help="where the AdaFace file is, if not where training had it")
    parser.add_argument("--threshold-rule", choices=vm.THRESHOLD_RULES, default="eer",
                        help="how the decision threshold is chosen on validation pairs (default: eer)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of twin families for the "
                        "confidence intervals; 0 = none (default: 1000)")
    parser.add_argument("--no-store-threshold", action="store_true", help="leave the checkpoint untouched")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default: 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--by-trait", type=Path, metavar="TRAITS_JSON",
                        help="the simulator's traits.json: also break the twin EER down by mark kind and region")
    args = parser.parse_args(argv)
    output = args.output_dir or args.checkpoint.resolve().parent.parent / "evaluation"
    try:
        report = evaluate(args.checkpoint, output, args.jpg_dataset, args.twin_pairs, args.adaface_checkpoint,
                          args.threshold_rule, args.bootstrap, not args.no_store_threshold, args.device,
                          args.workers, not args.no_progress, args.by_trait)
    except (FileNotFoundError, DataIndexError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{report['test_identities']} test identities, {report['test_images']} images; pairs: "
          f"{report['pairs']['genuine']} genuine, {report['pairs']['twin']} twin impostor, "
          f"{report['pairs']['general']} general impostor (of {report['general_impostor_pairs_existing']}); "
          f"threshold {report['threshold_source']}")
    print(summary_table(report))
    if "by_trait" in report:
        print(trait_breakdown.table(report["by_trait"]))
    print(f"report, pairs.csv and plots in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
