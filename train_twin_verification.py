"""Train the twin verification model with twin-aware triplets.

    python train_twin_verification.py --face-parts-dataset-path extracted_face_parts/face_parts_dataset.json \\
        --tensor-dataset-path extracted_face_parts/tensor_dataset.json --twin-pairs-path twin_pairs.json
    torchrun --nproc_per_node 8 train_twin_verification.py ...     # several GPUs, same flags

Re-running the same command resumes from OUTPUT_DIR/checkpoints/latest.pth; a finished
epoch is never run twice. OUTPUT_DIR holds split.json (identities per split, twins
together), checkpoints/latest.pth (everything to resume), checkpoints/best.pth (what
inference needs; chosen by validation twin EER), logs/ (TensorBoard and
metrics.jsonl) and cache/ (AdaFace embeddings: the frozen branch runs once per image).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import distributed
import model_runner as runner
import verification_pairs as vp
from atomic_files import torch_save_atomic, write_json_atomic, write_text_atomic
from combined_model import TwinVerificationModel
from cutout import PART_NAMES
from train_config import RUN_CONTROL_KEYS, ConfigError, TrainConfig, parse_config
from triplet_dataset import (DataIndexError, FaceDataIndex, FaceViewDataset, ImageDataset, TripletDataset, curriculum_stage,
                             draw_triplets, epoch_triplets, load_or_make_split, read_crop_rgb)

CHECKPOINT_FORMAT = 1
ROLES = ("anchor", "positive", "negative")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops, keeping the last good checkpoint."""


# ---- pure functions ------------------------------------------------------------------

def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean hinge `max(0, d(a,p) − d(a,n) + margin)` on Euclidean distances, and the per-triplet
    losses. Computed in float32 whatever the autocast dtype: with unit-length embeddings the
    distance differences that matter are far below bf16's resolution near 1."""
    anchor, positive, negative = anchor.float(), positive.float(), negative.float()
    per_triplet = torch.relu((anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1) + margin)
    return per_triplet.mean(), per_triplet


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total_steps` (a pure function of the step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def selection_metric(validation: dict[str, Any]) -> tuple[str, float]:
    """What early stopping and best.pth follow: the twin EER (general EER if there are no twins)."""
    if validation["twin_eer"] is not None:
        return "val_twin_eer", validation["twin_eer"]
    return "val_general_eer", validation["general_eer"]


# ---- set-up ----------------------------------------------------------------------------

def global_cache(model: TwinVerificationModel, index: FaceDataIndex, config: TrainConfig,
                 context: distributed.Context, cache_dir: Path) -> torch.Tensor:
    """AdaFace embeddings `N×V×512` of every image (view 0 plain, then augmented views).

    Computed once (by the main process, in float32) and kept on disk: the branch is
    frozen, so they never change. The cache is keyed by the AdaFace file's hash, the
    images and the views, and recomputed if any of these differ.
    """
    adaface = model.frozen_files()["adaface"]
    key = {"adaface": adaface["sha256"] if adaface else f"untrained:{config.adaface_arch}",
           "images": hashlib.sha256("\n".join(str(r.tensor_path.resolve()) for r in index.images)
                                    .encode()).hexdigest(),
           "views": 1 + (config.face_augment_views if config.augment else 0), "seed": config.seed}
    path = cache_dir / "global_embeddings.pt"
    if context.is_main:
        cached = torch.load(path, weights_only=True) if path.exists() else None
        if cached is None or cached["key"] != key:
            embeddings = runner.global_embeddings(model, index, np.arange(len(index.images)), key["views"] - 1,
                                                  config.seed, context.device, config.num_workers, config.progress)
            torch_save_atomic({"key": key, "embeddings": embeddings}, path)
    distributed.barrier(context)
    return torch.load(path, weights_only=True)["embeddings"]


# ---- one epoch of training --------------------------------------------------------------

def train_one_epoch(model, optimizer, scheduler, scaler, index, triplets, cache, config: TrainConfig,
                    context: distributed.Context, epoch: int, writer, global_step: int) -> dict[str, Any]:
    """Train on this process's share of the epoch's triplets; returns the epoch's statistics."""
    device = context.device
    dtype = runner.autocast_dtype(config.precision, device)
    channels_last = runner.uses_channels_last(config.channels_last, device)
    positions = np.arange(context.rank, len(triplets) - len(triplets) % context.world_size, context.world_size)
    dataset = TripletDataset(index, triplets, cache, config.augment, config.seed, epoch, config.augment_strength)
    batches = runner.make_loader(torch.utils.data.Subset(dataset, positions.tolist()), config.batch_size,
                                 config.num_workers, device)
    model.train()
    totals = torch.zeros(4, dtype=torch.float64)  # loss·n, active, twin negatives, n
    data_seconds = compute_seconds = 0.0
    first_batch = True
    tick = time.perf_counter()
    for batch in runner.progress_bar(batches, config.progress, f"epoch {epoch + 1}/{config.num_epochs}"):
        ready = time.perf_counter()
        size = len(batch["twin_negative"])
        parts = runner.parts_to_device(torch.cat([batch[f"{r}_parts"] for r in ROLES]), device, channels_last)
        global_embedding = torch.cat([batch[f"{r}_global"] for r in ROLES]).to(device, non_blocking=True)
        with runner.autocast(device, dtype):
            embedding = model(None, parts, global_embedding=global_embedding).embedding
        loss, per_triplet = triplet_loss(*embedding.split(size), margin=config.triplet_margin)
        step_loss = distributed.sum_across(loss.detach().reshape(1), context) / context.world_size
        if not torch.isfinite(step_loss).all():
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {global_step}; the last good "
                                     f"checkpoint is {Path(config.output_dir) / 'checkpoints' / 'latest.pth'}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        global_step += 1
        active = (per_triplet > 0).float()
        totals += torch.tensor([loss.item() * size, active.sum().item(), batch["twin_negative"].sum().item(), size],
                               dtype=torch.float64)
        if writer is not None and global_step % config.log_every_steps == 0:
            writer.add_scalar("train/batch_loss", step_loss.item(), global_step)
            writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], global_step)
            writer.add_scalar("train/batch_active_fraction", active.mean().item(), global_step)
        if writer is not None and first_batch:
            write_crop_grid(writer, batch["anchor_parts"], global_step)
            first_batch = False
        done = time.perf_counter()
        data_seconds += ready - tick
        compute_seconds += done - ready
        tick = done
    totals = distributed.sum_across(totals, context)
    count = max(1.0, totals[3].item())
    elapsed = data_seconds + compute_seconds
    return {"train_loss": totals[0].item() / count, "active_fraction": totals[1].item() / count,
            "twin_negative_ratio": totals[2].item() / count, "triplets": int(count),
            "triplets_per_second": count / max(elapsed, 1e-9),
            "data_wait_fraction": data_seconds / max(elapsed, 1e-9), "global_step": global_step}


def write_crop_grid(writer, parts_uint8: torch.Tensor, step: int) -> None:
    """A few anchors' five part crops as one image (rows: images, columns: parts)."""
    import torchvision

    shown = parts_uint8[:8]
    grid = torchvision.utils.make_grid(shown.flatten(0, 1), nrow=len(PART_NAMES), padding=2)
    writer.add_image("train/part_crops", grid, step)


# ---- validation -----------------------------------------------------------------------------

class Validator:
    """Fixed validation pairs and triplets; scores the model on them every epoch."""

    def __init__(self, index: FaceDataIndex, persons: list[str], config: TrainConfig):
        self.index, self.config = index, config
        self.numbers = np.array(sorted(i for p in persons for i in index.images_of[p]), dtype=np.int64)
        position = {int(n): k for k, n in enumerate(self.numbers)}
        person_number = {p: k for k, p in enumerate(index.persons)}
        twin_numbers = {person_number[a]: person_number[b] for a, b in index.twin_of.items()}
        self.pairs = vp.verification_pairs(index.person_of_image[self.numbers], twin_numbers,
                                           config.max_general_impostor_pairs, np.random.default_rng([config.seed, 5]))
        kinds = set(self.pairs.kind.tolist())
        if vp.GENUINE not in kinds or kinds == {vp.GENUINE}:
            raise DataIndexError(f"the validation split ({len(persons)} identities) has no genuine or no "
                                 "impostor pairs; give validation more identities (lower train_split)")
        try:
            triplets = draw_triplets(index, persons, "mixed", 0.5, np.random.default_rng([config.seed, 4]))
            self.triplets = [np.array([position[int(i)] for i in column])
                             for column in (triplets.anchor, triplets.positive, triplets.negative)]
        except DataIndexError:
            self.triplets = None  # too few people for a validation loss; the EERs remain

    def __call__(self, model, global_embeddings, context) -> dict[str, Any]:
        config = self.config
        embeddings = runner.embed_images(
            model, self.index, self.numbers, global_embeddings, context,
            runner.autocast_dtype(config.precision, context.device),
            runner.uses_channels_last(config.channels_last, context.device), config.num_workers)
        result = {"val_loss": None}
        if self.triplets is not None:
            anchor, positive, negative = (torch.from_numpy(embeddings[c]) for c in self.triplets)
            result["val_loss"] = triplet_loss(anchor, positive, negative, self.config.triplet_margin)[0].item()
        scores = vp.cosine_scores(embeddings, self.pairs)
        report = vp.metrics_by_impostor_kind(scores, self.pairs.kind)
        for kind in ("twin", "general", "all"):
            result[f"{kind}_eer"] = report[kind]["eer"] if report[kind] else None
            result[f"{kind}_tar_at_far"] = report[kind]["tar_at_far"] if report[kind] else None
        result["threshold"] = report["all"]["eer_threshold"] if report["all"] else None
        result["_scores"], result["_kinds"] = scores, self.pairs.kind
        return result


def roc_figure(scores: np.ndarray, kinds: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4))
    for kind, (far, tar) in vp.roc_by_impostor_kind(scores, kinds).items():
        axes.plot(far, tar, color=vp.KIND_COLOURS[kind], label=f"{vp.KIND_NAMES[kind]} impostors")
    axes.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="FAR", ylabel="TAR", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


# ---- checkpoints ------------------------------------------------------------------------------

def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    changed = sorted(k for k, v in config.to_dict().items() if k not in RUN_CONTROL_KEYS and saved.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ConfigError(f"{path} was written with different settings ({details}); re-run with the "
                          "original settings to resume, or use another --output-dir")


def write_metrics_log(history: list[dict[str, Any]], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def run_training(config: TrainConfig, context: distributed.Context | None = None) -> dict[str, Any]:
    """Train (or resume) according to `config`; returns the final state summary."""
    context = context or distributed.Context(device=distributed.resolve_device(config.device, 0))
    output = Path(config.output_dir)
    checkpoints, logs = output / "checkpoints", output / "logs"
    latest_path = checkpoints / "latest.pth"
    if context.is_main:
        for folder in (checkpoints, logs, output / "cache"):
            folder.mkdir(parents=True, exist_ok=True)
    distributed.barrier(context)

    index = FaceDataIndex.load(Path(config.face_parts_dataset_path), Path(config.tensor_dataset_path),
                               Path(config.twin_pairs_path))
    if context.is_main:
        load_or_make_split(output / "split.json", index, config.train_split, config.test_split, config.seed)
    distributed.barrier(context)
    split = load_or_make_split(output / "split.json", index, config.train_split, config.test_split, config.seed)

    model = runner.build_model(config)
    cache = global_cache(model, index, config, context, output / "cache")
    model.to(context.device)
    model.face_parts.set_activation_checkpointing(config.activation_checkpointing)
    if runner.uses_channels_last(config.channels_last, context.device):
        model.face_parts.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(epoch_triplets(index, split["train"], config.negative_strategy,
                                            config.twin_negative_fraction, config.curriculum_switch_epoch,
                                            config.seed, 0)) // context.world_size // config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler(context.device.type, 
                                enabled=runner.autocast_dtype(config.precision, context.device) == torch.float16)

    state = {"epoch": 0, "global_step": 0, "history": [], "best": None, "epochs_without_improvement": 0,
             "finished": None}
    if latest_path.exists():
        saved = torch.load(latest_path, map_location=context.device, weights_only=True)
        check_resumable(saved["config"], config, latest_path)
        model.load_state_dict(saved["model_state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        state = {k: saved[k] for k in state}
        if context.is_main:
            print(f"resuming from {latest_path}: {state['epoch']} of {config.num_epochs} epochs done")
    if state["finished"]:
        if context.is_main:
            print(f"{output}: training already finished ({state['finished']}); best model in {checkpoints / 'best.pth'}")
        return state

    ddp_model = model
    if context.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    validator = Validator(index, split["val"], config)
    crop_size = int(read_crop_rgb(index.images[0].part_paths[0]).shape[0])  # inference cuts crops this size
    writer = None
    if context.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(logs), purge_step=state["global_step"] or None)
        write_json_atomic(output / "config.json", config.to_dict())
        print(f"global branch: {model.global_branch_label}; {len(split['train'])} train / {len(split['val'])} val / "
              f"{len(split['test'])} test identities; {steps_per_epoch} steps per epoch; "
              f"TensorBoard: tensorboard --logdir {logs}")
        if index.unmatched_twins:
            print(f"note: {len(index.unmatched_twins)} identities in the twin pairs file have no extracted "
                  f"images ({index.unmatched_twins[:5]}); their twins train as people without a twin")
    invocation_epochs = 0
    try:
        while state["epoch"] < config.num_epochs:
            epoch = state["epoch"]
            triplets = epoch_triplets(index, split["train"], config.negative_strategy, config.twin_negative_fraction,
                                      config.curriculum_switch_epoch, config.seed, epoch)
            stats = train_one_epoch(ddp_model, optimizer, scheduler, scaler, index, triplets, cache, config,
                                    context, epoch, writer, state["global_step"])
            state["global_step"] = stats.pop("global_step")
            validation = validator(model, cache[:, 0], context)
            scores, kinds = validation.pop("_scores"), validation.pop("_kinds")
            metric_name, metric = selection_metric(validation)
            improved = state["best"] is None or metric < state["best"]["metric"]
            state["epochs_without_improvement"] = 0 if improved else state["epochs_without_improvement"] + 1
            row = {"epoch": epoch + 1, "stage": curriculum_stage(config.negative_strategy, epoch,
                                                                 config.curriculum_switch_epoch),
                   "learning_rate": scheduler.get_last_lr()[0], **stats, **validation}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            if improved:
                state["best"] = {"epoch": epoch + 1, "metric_name": metric_name, "metric": metric}
            if config.early_stopping_patience and state["epochs_without_improvement"] >= config.early_stopping_patience:
                state["finished"] = f"early stop: no better {metric_name} for {config.early_stopping_patience} epochs"
            elif state["epoch"] >= config.num_epochs:
                state["finished"] = f"completed {config.num_epochs} epochs"
            if context.is_main:
                log_epoch(writer, row, scores, kinds, state["global_step"], model.global_branch_label)
                write_metrics_log(state["history"], logs / "metrics.jsonl")
                if improved:
                    torch_save_atomic(model.deployable_checkpoint(
                        epoch=epoch + 1, config=config.to_dict(), validation=validation, part_crop_size=crop_size,
                        threshold=validation["threshold"], threshold_rule="validation EER, all impostors",
                        global_branch=model.global_branch_label), checkpoints / "best.pth")
                torch_save_atomic({"format_version": CHECKPOINT_FORMAT, **state, "config": config.to_dict(),
                                   "model_state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                   "rng": {"torch": torch.get_rng_state()},
                                   "frozen_files": model.frozen_files()}, latest_path)
                print(f"epoch {epoch + 1}/{config.num_epochs}: loss {row['train_loss']:.4f}, "
                      f"val loss {_number(row['val_loss'])}, twin EER {_pct(row['twin_eer'])}, general EER "
                      f"{_pct(row['general_eer'])}, {row['triplets_per_second']:.1f} triplets/s"
                      + (" (best)" if improved else ""))
            distributed.barrier(context)
            invocation_epochs += 1
            if state["finished"] or (config.stop_after_epochs and invocation_epochs >= config.stop_after_epochs):
                break
    finally:
        if writer is not None:
            writer.close()
    if context.is_main and state["finished"]:
        print(f"finished ({state['finished']}); best epoch {state['best']['epoch']} "
              f"({state['best']['metric_name']} {_pct(state['best']['metric'])}): {checkpoints / 'best.pth'}")
    return state


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def log_epoch(writer, row: dict[str, Any], scores: np.ndarray, kinds: np.ndarray, step: int, label: str) -> None:
    for key in ("train_loss", "active_fraction", "twin_negative_ratio", "triplets_per_second",
                "data_wait_fraction", "stage", "learning_rate"):
        writer.add_scalar(f"train/{key}", row[key], step)
    for key in ("val_loss", "twin_eer", "general_eer", "all_eer"):
        if row[key] is not None:
            writer.add_scalar(f"val/{key}", row[key], step)
    for kind in ("twin", "general"):
        for far, entry in (row[f"{kind}_tar_at_far"] or {}).items():
            writer.add_scalar(f"val/{kind}_tar_at_far_{far}", entry["tar"], step)
    writer.add_figure("val/roc", roc_figure(scores, kinds, f"epoch {row['epoch']} ({label})"), step)
    writer.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    context = distributed.start(config.device)
    try:
        run_training(config, context)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
