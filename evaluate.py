"""Evaluate a trained twin model against its global model alone, on identities it never saw.

    python evaluate.py --checkpoint twin_verification_training/checkpoints/best.pth
    python evaluate.py --checkpoint best.pth --jpg-dataset twins.json --twin-pairs pairs.json
    python evaluate.py --checkpoint best.pth --by-trait twin_data/traits.json   # simulated twins

Without a dataset, the run's saved split is used: the decision threshold is chosen on
the validation identities (by default the one that accepts at most `--target-twin-far` of
their twin impostors), the numbers are measured on the test identities: accuracy and
FAR at that threshold for twin and for general impostors apart, EER, AUC, TAR@FAR. With
`--jpg-dataset`, every identity in it is a test identity (photos are extracted into the
output folder first, resumably) and the threshold is the one stored in the checkpoint.

Pairs: every genuine pair, every twin-impostor pair, and every general-impostor pair or
a seeded sample of them (the report states how many exist and how many were scored).
Each image is embedded once, in batches; both models score the same pairs. Outputs in
OUTPUT_DIR: report.json, pairs.csv (one row per scored pair), roc.png,
score_histograms.png, and tables on stdout: the metrics, and each held-out twin family's own
twin EER (`by_family` in the report). The combined model's validation threshold
is written back into the checkpoint (atomically) for inference. With `--by-trait` (the
simulator's traits.json), the twin EER of both models is also broken down by mark kind and by
where the marks are (inside the five parts / only in added regions / outside all): by_trait.json
and a second table (`trait_breakdown`).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import distributed
import mark_comparison as mc
import model_runner as runner
import face_parts_extractor as extractor
import verification_metrics as vm
import trait_breakdown
import verification_pairs as vp
from atomic_files import torch_save_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic
from cli_errors import ExpectedError, cli_main
from combined_model import CheckpointMismatchError, TwinVerificationModel, read_checkpoint
from train_config import ConfigError, TrainConfig, fixed_weight
from triplet_dataset import DataIndexError, FaceDataIndex, load_split

MODELS = ("combined", "adaface")
TWIN_FAR_RULE = "twin_far"
THRESHOLD_RULES = (TWIN_FAR_RULE, *vm.THRESHOLD_RULES)
KINDS = ("twin", "general", "all")


class NonFiniteScoresError(ExpectedError, ValueError):
    """Embeddings with NaN or infinity: no metric computed from them would mean anything."""


def global_embeddings_of(model: TwinVerificationModel, index: FaceDataIndex, numbers: np.ndarray,
                         config: TrainConfig, device: torch.device, cache: Path | None = None) -> torch.Tensor:
    """`len(index.images)×G` global-branch features, filled for `numbers` (one forward per image),
    or read from the training run's cache when it holds these images' embeddings by this model."""
    if cache is not None:
        cached = runner.load_global_cache(cache, runner.global_cache_key(model, index, 1, config.seed))
        if cached is None:  # a cache with augmented views: its key has them, view 0 is the plain one
            views = 1 + (config.face_augment_views if config.augment else 0)
            cached = runner.load_global_cache(cache, runner.global_cache_key(model, index, views, config.seed))
        if cached is not None:
            return cached[:, 0].float()
    result = torch.zeros(len(index.images), model.global_dim)
    result[numbers] = runner.global_embeddings(model, index, numbers, 0, config.seed, device, config.num_workers,
                                               config.progress)[:, 0]
    return result


def split_embeddings(model, index, persons, global_all, config, context, parts_only: bool = False) -> dict[str, Any]:
    """Both models' embeddings of every image of `persons`, and their verification pairs.

    `parts_only`: the twin model sees a zero global embedding, so its scores show what the
    part encoders contribute by themselves (the global model's own scores are unchanged)."""
    numbers = np.array(sorted(i for p in persons for i in index.images_of[p]), dtype=np.int64)
    person_number = {p: k for k, p in enumerate(index.persons)}
    twins = {person_number[a]: [person_number[s] for s in siblings]
             for a, siblings in index.siblings_of.items()}
    pairs = vp.verification_pairs(index.person_of_image[numbers], twins, config.max_general_impostor_pairs,
                                  np.random.default_rng([config.seed, 6]))
    combined = runner.embed_images(model, index, numbers, torch.zeros_like(global_all) if parts_only else global_all,
                                   context,
                                   runner.autocast_dtype(config.precision, context.device),
                                   runner.on_for_device(config.channels_last, context.device), config.num_workers)
    embeddings = {"combined": combined,
                  "adaface": global_all[numbers].numpy()}
    for name, values in embeddings.items():
        if not np.isfinite(values).all():
            raise NonFiniteScoresError(f"the {name} model gives NaN or infinite embeddings for "
                                       f"{int((~np.isfinite(values).all(axis=1)).sum())} images; its weights or "
                                       "inputs are broken, so no metric is computed")
    return {"numbers": numbers, "pairs": pairs,
            "scores": {name: vp.cosine_scores(e, pairs) for name, e in embeddings.items()}}


def choose_threshold(scores: np.ndarray, pairs: vp.Pairs, rule: str, target_twin_far: float) -> tuple[float, str]:
    """A threshold chosen on validation pairs, and its rule in words.

    `twin_far` (the default): at most `target_twin_far` of the twin impostors accepted;
    `eer` / `max_accuracy`: over all impostors together (mostly general ones).
    """
    if rule == TWIN_FAR_RULE:
        return vp.twin_far_threshold(scores, pairs.kind, target_twin_far)
    threshold = vm.select_threshold(scores, (pairs.kind == vp.GENUINE).astype(int), rule=rule)
    return threshold, f"{rule} over all {int((pairs.kind != vp.GENUINE).sum())} validation impostor pairs"


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


def twin_eer_by_family(scores: np.ndarray, kind: np.ndarray, family_a: np.ndarray,
                       family_b: np.ndarray) -> dict[str, Any]:
    """Each held-out twin family's own twin EER: its genuine pairs against its twin pairs.

    The pooled twin EER ranks the pairs of every family on one scale. One family whose
    twins the model cannot order (or whose genuine pairs all score low, such as photos
    taken years apart) raises it whatever the other families do; the per-family EERs show
    whether that is what happened. Families without twin pairs (people without a twin) are
    left out; `median_eer` is over the families with both kinds of pair."""
    same = family_a == family_b
    families: dict[str, Any] = {}
    for family in sorted(set(family_a[same & (kind == vp.TWIN)].tolist())):
        genuine = same & (family_a == family) & (kind == vp.GENUINE)
        twins = same & (family_a == family) & (kind == vp.TWIN)
        families[family] = {**trait_breakdown.subset_twin_eer(scores, genuine, twins),
                            "genuine_mean": float(scores[genuine].mean()) if genuine.any() else None,
                            "twin_mean": float(scores[twins].mean())}
    eers = [entry["eer"] for entry in families.values() if entry["eer"] is not None]
    return {"families": families, "median_eer": float(np.median(eers)) if eers else None}


def family_table(report: dict[str, Any]) -> str:
    """Plain-text table of `report["by_family"]`: one line per held-out twin family."""
    by_family = report["by_family"]
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"
    mean = lambda value: "n/a" if value is None else f"{value:.3f}"
    lines = [f"{'family':34s} {'genuine':>7s} {'twin':>6s} {'twin EER':>9s} {'global alone':>12s} "
             f"{'mean score: genuine / twin':>27s}"]
    for family, entry in by_family["combined"]["families"].items():
        alone = by_family["adaface"]["families"][family]
        lines.append(f"{family[:34]:34s} {entry['genuine_pairs']:7d} {entry['twin_pairs']:6d} "
                     f"{percent(entry['eer']):>9s} {percent(alone['eer']):>12s} "
                     f"{mean(entry['genuine_mean']) + ' / ' + mean(entry['twin_mean']):>27s}")
    lines.append(f"{'median over families':34s} {'':7s} {'':6s} {percent(by_family['combined']['median_eer']):>9s} "
                 f"{percent(by_family['adaface']['median_eer']):>12s}")
    return "\n".join(lines)


def pair_rows(split_name: str, index: FaceDataIndex, data: dict[str, Any], global_label: str) -> list[list[Any]]:
    pairs, numbers, scores = data["pairs"], data["numbers"], data["scores"]
    rows = []
    for k in range(len(pairs)):
        a, b = index.images[numbers[pairs.first[k]]], index.images[numbers[pairs.second[k]]]
        rows.append([split_name, f"{a.person}/{a.key}", f"{b.person}/{b.key}", a.person, b.person,
                     vp.KIND_NAMES[int(pairs.kind[k])], f"{scores['combined'][k]:.6f}", f"{scores['adaface'][k]:.6f}",
                     global_label, f"{scores['marks'][k]:.6f}" if "marks" in scores else ""])
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
        # pairs turned away by the recogniser's gate score below −1 (vp.GATED_OFFSET)
        low = min(-1.0, float(test["scores"][name].min(initial=-1.0)))
        for kind, colour in vp.KIND_COLOURS.items():
            values = test["scores"][name][kinds == kind]
            if len(values):
                panel.hist(values, bins=40 if low == -1.0 else 80, range=(low, 1), density=True, alpha=0.5,
                           color=colour, label=f"{vp.KIND_NAMES[kind]} ({len(values)})")
        panel.set(title=labels[name], xlabel="cosine similarity" if low == -1.0 else
                  "cosine similarity (below −1: turned away by the recogniser's gate)")
        panel.legend(fontsize=7)
    save_figure(figure, output / "score_histograms.png")


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table of the headline numbers; each model by its full label."""
    width = max(len(entry["label"]) for entry in report["models"].values())
    lines = [f"{'model':{width}s} {'impostors':9s} {'EER':>7s} {'EER 95% CI':>15s} {'AUC':>6s} "
             f"{'TAR@1e-2':>9s} {'accuracy':>8s} {'FAR':>7s}   (accuracy and FAR at the model's threshold)"]
    for name in report["models"]:
        for kind in KINDS:
            entry = report["models"][name]["test"][kind]
            if entry is None:
                lines.append(f"{report['models'][name]['label']:{width}s} {kind:9s}   (no pairs)")
                continue
            tar = entry["tar_at_far"]["1e-02"]
            tar_text = f"{100 * tar['tar']:8.2f}%" if tar["reliable"] else "  too few"
            ci = (report["models"][name]["bootstrap"] or {}).get(kind) or {}
            eer_ci = ci.get("eer", {})
            ci_text = f"{100 * eer_ci['low']:5.1f}–{100 * eer_ci['high']:5.1f}%" if "low" in eer_ci else "n/a"
            accuracy_text = f"{100 * entry['accuracy']:7.2f}%" if "accuracy" in entry else "n/a"
            far_text = f"{100 * entry['far_at_threshold']:6.2f}%" if "far_at_threshold" in entry else "n/a"
            lines.append(f"{report['models'][name]['label']:{width}s} {kind:9s} {100 * entry['eer']:6.2f}% "
                         f"{ci_text:>15s} {entry['auc']:6.3f} {tar_text:>9s} {accuracy_text:>8s} {far_text:>7s}")
    return "\n".join(lines)


def evaluate(checkpoint_path: Path, output: Path, jpg_dataset: Path | None = None, twin_pairs: Path | None = None,
             adaface_checkpoint: str | None = None, threshold_rule: str = TWIN_FAR_RULE, bootstrap: int = 1000,
             store_threshold: bool = True, device: str = "auto", workers: int = 2,
             progress: bool = True, target_twin_far: float | None = None,
             trust_checkpoint: bool = False, parts_only: bool = False,
             by_trait: Path | None = None) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (also written to OUTPUT/report.json).

    `target_twin_far` (for the `twin_far` rule) defaults to the one training used. `parts_only`
    scores the twin model with its global input zeroed (and never stores a threshold).
    `by_trait`: a simulator's traits.json, to break the twin EER down by kind of mark."""
    traits = trait_breakdown.load_traits(by_trait) if by_trait is not None else None
    sources = trait_breakdown.load_sources(by_trait) if by_trait is not None else None
    context = distributed.Context(device=distributed.resolve_device(device, 0))
    checkpoint = read_checkpoint(checkpoint_path)
    missing = [k for k in ("config", "part_crop_size") if k not in checkpoint]
    if missing or not isinstance(checkpoint.get("config"), dict):
        raise CheckpointMismatchError(f"{checkpoint_path}: lacks {missing or ['a config dict']}; evaluation "
                                      "needs the best.pth that training writes (checkpoints/best.pth)")
    try:
        config = TrainConfig.from_dict(checkpoint["config"], str(checkpoint_path))
    except ConfigError as error:
        raise CheckpointMismatchError(str(error)) from None
    target_twin_far = config.target_twin_far if target_twin_far is None else target_twin_far
    config = replace(config, num_workers=workers, device=device, progress=progress)
    try:
        model = TwinVerificationModel.from_checkpoint(checkpoint, adaface_checkpoint,
                                                      trust_checkpoint=trust_checkpoint).to(context.device)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{checkpoint_path}: {error}") from None
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
        split = load_split(run_dir / "split.json", index)
        if not split["test"]:
            raise DataIndexError(f"{run_dir / 'split.json'} has no test identities (trained with test_split 0); "
                                 "evaluate on a separate --jpg-dataset instead")
    needed = np.array(sorted(i for p in split["val"] + split["test"] for i in index.images_of[p]), dtype=np.int64)
    run_cache = None if jpg_dataset is not None else run_dir / "cache" / "global_embeddings.pt"
    global_all = global_embeddings_of(model, index, needed, config, context.device, run_cache)
    test = split_embeddings(model, index, split["test"], global_all, config, context, parts_only)
    val = split_embeddings(model, index, split["val"], global_all, config, context, parts_only) if split["val"] else None

    # The recogniser's gate and its weight in the decision score (training's rules, on this
    # validation; else the checkpoint's): pairs the gate takes for different people score below
    # every pair it lets through. The parts-only scores show the parts by themselves, so they
    # are neither mixed nor gated.
    # The mark comparison (mark_comparison.py) where the checkpoint has it: its similarities join
    # the decision at the mark weight (chosen like the recogniser's), and are scored alone too.
    gate, weight, mark_weight = None, 0.0, 0.0
    marks_stored = None if parts_only else checkpoint.get("mark_comparison")
    mark_face = mc.CanonicalFace.from_state(marks_stored["face"]) if marks_stored else None
    if not parts_only:
        if val is not None:
            gate = vp.recogniser_gate(val["scores"]["adaface"], val["pairs"].kind, config.recogniser_gate)
        else:
            gate = checkpoint.get("recogniser_gate")
        for data in (d for d in (val, test) if d is not None and mark_face is not None):
            folders = [mc.extracted_folder(index.images[n]) for n in data["numbers"]]
            data["marks"] = mc.marks_of_pairs(mark_face, folders, data["pairs"], data["scores"]["adaface"], gate,
                                              marks_stored["scale"])[0]
        if val is not None:
            val["scores"]["combined"], weight, mark_weight = vp.decision_with_marks(
                val["scores"]["combined"], val["scores"]["adaface"], val.get("marks"), val["pairs"].kind, gate,
                fixed_weight(config.recogniser_weight), fixed_weight(config.mark_weight),
                index.family_ids_of_images(val["numbers"][val["pairs"].first]))
        else:
            weight = float(checkpoint.get("recogniser_weight") or 0.0)
            mark_weight = float(checkpoint.get("mark_weight") or 0.0) if mark_face is not None else 0.0
        test["scores"]["combined"] = vp.decision_with_marks(test["scores"]["combined"], test["scores"]["adaface"],
                                                            test.get("marks"), test["pairs"].kind, gate, weight,
                                                            mark_weight)[0]
    if model.config.decision_embedding != "combined":  # the part embeddings compared, the recogniser as gate
        compared = "parts" if model.config.decision_embedding == "parts" else "parts and projection"
        twin_label = f"twin model ({compared}" + (f", behind the gate of {model.global_branch_label}"
                                                  if gate is not None else "")
    else:
        twin_label = f"twin model ({model.global_branch_label} + parts" + (", behind its gate" if gate is not None else "")
    twin_label += (f"; recogniser weight {weight:.2f}" if weight else "") + (
        f"; mark weight {mark_weight:.2f}" if mark_weight else "") + ")"
    labels = {"combined": "twin model, parts only (global input zeroed)" if parts_only else twin_label,
              "adaface": f"global alone: {model.global_branch_label}"}
    if "marks" in test:  # scored alone, behind the same gate (pairs it turns away are not compared)
        labels["marks"] = "mark comparison alone" + (f" (behind the gate of {model.global_branch_label})"
                                                      if gate is not None else "")
        for data in (d for d in (val, test) if d is not None):
            data["scores"]["marks"] = vp.gated_scores(data["marks"], data["scores"]["adaface"], gate)
    family_a = index.family_ids_of_images(test["numbers"][test["pairs"].first])  # resampled together
    family_b = index.family_ids_of_images(test["numbers"][test["pairs"].second])
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_path), "global_branch": model.global_branch_label,
        "test_identities": len(split["test"]), "test_images": len(test["numbers"]),
        "pairs": {vp.KIND_NAMES[k]: int((test["pairs"].kind == k).sum()) for k in vp.KIND_NAMES},
        "general_impostor_pairs_existing": test["pairs"].general_total,
        "threshold_source": (f"chosen on {len(split['val'])} validation identities ({threshold_rule})" if val
                             else "stored in the checkpoint (from training validation)"),
        "target_twin_far": target_twin_far if threshold_rule == TWIN_FAR_RULE and val else None,
        "recogniser_gate": gate, "recogniser_weight": weight, "mark_weight": mark_weight,
        "models": {}}
    for name in labels:
        if val is not None:
            threshold, rule = choose_threshold(val["scores"][name], val["pairs"], threshold_rule, target_twin_far)
        elif name == "combined":
            if checkpoint.get("threshold") is None:
                raise CheckpointMismatchError(f"{checkpoint_path}: holds no decision threshold (its validation had "
                                              "no impostor pairs); evaluate on the run's own split instead")
            threshold, rule = float(checkpoint["threshold"]), checkpoint.get("threshold_rule")
        else:
            threshold, rule = None, None
        metrics = vp.metrics_by_impostor_kind(test["scores"][name], test["pairs"].kind, threshold)
        report["models"][name] = {
            "label": labels[name], "threshold": threshold, "threshold_rule": rule, "test": metrics,
            "bootstrap": bootstrap_intervals(test["scores"][name], test["pairs"], family_a, family_b, bootstrap,
                                             config.seed) if bootstrap else None}
    report["by_family"] = {name: twin_eer_by_family(test["scores"][name], test["pairs"].kind, family_a, family_b)
                           for name in MODELS}
    if traits is not None:
        persons_a = [index.images[test["numbers"][i]].person for i in test["pairs"].first]
        persons_b = [index.images[test["numbers"][i]].person for i in test["pairs"].second]
        # The simulator makes twin pairs; a larger sibling group has no single pair of marks.
        tested = set(split["test"])
        twin_of = {p: siblings[0] for p, siblings in index.siblings_of.items() if p in tested and len(siblings) == 1}
        report["by_trait"] = {name: trait_breakdown.twin_eer_by_trait(test["scores"][name], test["pairs"].kind,
                                                                     persons_a, persons_b, twin_of, traits)
                              for name in MODELS}
        if sources is not None:
            keys = [[(index.images[test["numbers"][i]].person, index.images[test["numbers"][i]].key) for i in side]
                    for side in (test["pairs"].first, test["pairs"].second)]
            for name in MODELS:
                report["by_trait"][name]["photos"] = trait_breakdown.twin_eer_by_photo(
                    test["scores"][name], test["pairs"].kind, *keys, twin_of, sources)
        write_json_atomic(output / "by_trait.json", {"traits": str(by_trait), **report["by_trait"]})
    write_json_atomic(output / "report.json", report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "image_a", "image_b", "person_a", "person_b", "kind", "score_combined", "score_global",
                     "global_model", "score_marks"])
    writer.writerows(pair_rows("test", index, test, model.global_branch_label))
    write_text_atomic(output / "pairs.csv", buffer.getvalue())
    write_plots(test, labels, output)
    if store_threshold and val is not None and not parts_only:
        checkpoint["threshold"] = report["models"]["combined"]["threshold"]
        checkpoint["threshold_rule"] = f"{report['models']['combined']['threshold_rule']} (evaluate.py)"
        checkpoint["recogniser_gate"] = gate
        checkpoint["recogniser_weight"] = weight
        checkpoint["mark_weight"] = mark_weight
        torch_save_atomic(checkpoint, checkpoint_path)
    return report


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a twin model and its global model alone on unseen "
                                     "identities.")
    parser.add_argument("--checkpoint", type=Path, default=Path("twin_verification_training/checkpoints/best.pth"))
    parser.add_argument("--output-dir", type=Path, help="default: RUN_DIR/evaluation (or next to the checkpoint)")
    parser.add_argument("--jpg-dataset", type=Path, help="evaluate on these photos instead of the run's test split")
    parser.add_argument("--twin-pairs", type=Path, help="twin pairs of --jpg-dataset")
    parser.add_argument("--adaface-checkpoint", help="where the global model file (AdaFace .ckpt or .onnx) is, if "
                        "not where training had it; its sha256 must match")
    parser.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default=TWIN_FAR_RULE,
                        help="how the decision threshold is chosen on validation pairs: twin_far accepts at "
                             "most --target-twin-far of the twin impostors; eer and max_accuracy balance over "
                             "all impostors, mostly general ones (default: twin_far)")
    parser.add_argument("--target-twin-far", type=float, help="for twin_far (default: the training run's, "
                        "target_twin_far in its config)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of twin families for the "
                        "confidence intervals; 0 = none (default: 1000)")
    parser.add_argument("--no-store-threshold", action="store_true", help="leave the checkpoint untouched")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of an AdaFace file that weights-only loading refuses "
                             "(only for a file from a source you trust: it can run code)")
    parser.add_argument("--parts-only", action="store_true", help="score the twin model with its global input "
                        "zeroed: what the part encoders contribute by themselves (never stores a threshold)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default: 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--by-trait", type=Path, metavar="TRAITS_JSON",
                        help="the simulator's traits.json: also break the twin EER down by mark kind and region")
    args = parser.parse_args(argv)
    output = args.output_dir or args.checkpoint.resolve().parent.parent / "evaluation"
    if args.bootstrap < 0 or args.workers < 0:
        parser.error("--bootstrap and --workers must be 0 or more")
    report = evaluate(args.checkpoint, output, args.jpg_dataset, args.twin_pairs, args.adaface_checkpoint,
                      args.threshold_rule, args.bootstrap, not args.no_store_threshold, args.device,
                      args.workers, not args.no_progress, args.target_twin_far, args.trust_checkpoint,
                      args.parts_only, args.by_trait)
    print(f"{report['test_identities']} test identities, {report['test_images']} images; pairs: "
          f"{report['pairs']['genuine']} genuine, {report['pairs']['twin']} twin impostor, "
          f"{report['pairs']['general']} general impostor (of {report['general_impostor_pairs_existing']}); "
          f"threshold {report['threshold_source']}")
    print(summary_table(report))
    print(family_table(report))
    if "by_trait" in report:
        print(trait_breakdown.table(report["by_trait"]))
    print(f"report, pairs.csv and plots in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
