"""Train the twin verification model with twin-aware triplets.

    python train_twin_verification.py --face-parts-dataset-path extracted_face_parts/face_parts_dataset.json \\
        --tensor-dataset-path extracted_face_parts/tensor_dataset.json --twin-pairs-path twin_pairs.json
    torchrun --nproc_per_node 8 train_twin_verification.py ...     # several GPUs, same flags

Re-running the same command resumes from OUTPUT_DIR/checkpoints/latest.pth (the folder may be
named differently or moved in between); a finished epoch is never run twice. One run holds
OUTPUT_DIR at a time (a lock that dies with its process). Errors are one line on stderr with
the exit codes of `cli_errors` (1 bad input, 2 bad config, 4 folder in use). OUTPUT_DIR holds split.json (identities per split, twins
together), checkpoints/latest.pth (everything to resume), checkpoints/best.pth (what
inference needs; chosen by validation twin EER), logs/ (TensorBoard and
metrics.jsonl) and cache/ (AdaFace embeddings: the frozen branch runs once per image).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import device_augment
import distributed
import model_runner as runner
import verification_pairs as vp
from atomic_files import torch_save_atomic, write_json_atomic, write_text_atomic
from cli_errors import ExpectedError, cli_main
from combined_model import CheckpointMismatchError, TwinVerificationModel, non_finite_keys, read_checkpoint
import mark_comparison as mc
import mining
from family_batches import FamilyBatchDataset, epoch_family_batches, family_batch_positions
from run_folder import locked_run_folder, same_folder
from train_config import (DATA_PATH_KEYS, LEGACY_DEFAULTS, RUN_CONTROL_KEYS, ConfigError, TrainConfig, fixed_weight,
                          parse_config)
from triplet_dataset import (DataIndexError, FaceDataIndex, TripletDataset, curriculum_stage, draw_triplets,
                             epoch_triplets, load_or_make_split, read_crop_rgb)

CHECKPOINT_FORMAT = 1
ROLES = ("anchor", "positive", "negative")
RESUME_KEYS = ("config", "model_state_dict", "optimizer", "scheduler", "scaler", "rng", "epoch", "global_step",
               "history", "best", "epochs_without_improvement", "finished")
TIME_TO_TWIN_EER = (0.2, 0.1)  # validation twin EER levels whose first crossing is recorded
# What a step adds to the epoch's sums: loss·triplets, active triplets, triplets, the share of twin
# negatives (families: of anchors whose hardest negative is the twin), 1 where that share is
# defined, images encoded
STEP_STATISTICS = ("loss_sum", "active", "triplets", "twin_negative_share", "twin_steps", "images")


class NonFiniteLossError(ExpectedError, RuntimeError):
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


def rank_positions(triplet_count: int, rank: int, world_size: int) -> np.ndarray:
    """The triplets one process trains on: every `world_size`-th, with the remainder dropped so
    that every process runs the same number of steps."""
    return np.arange(rank, triplet_count - triplet_count % world_size, world_size)


def epoch_steps(triplet_count: int, world_size: int, batch_size: int) -> int:
    """Optimiser steps per epoch on each process: batches of `rank_positions` (the last may be short)."""
    return -(-(triplet_count // world_size) // batch_size)


def record_time_to_accuracy(state: dict[str, Any], twin_eer: float | None, epoch: int) -> None:
    """Note the first epoch at which the validation twin EER (of the twin model by itself: what
    training improves) fell below each level of `TIME_TO_TWIN_EER`, with the images encoded and
    seconds (training + validation) until then."""
    for level in TIME_TO_TWIN_EER:
        key = str(level)
        if twin_eer is not None and twin_eer < level and state["time_to_twin_eer"][key] is None:
            state["time_to_twin_eer"][key] = {"epoch": epoch, "images_encoded": state["images_encoded"],
                                              "seconds": round(state["seconds"], 3)}


def selection_metric(validation: dict[str, Any], prefix: str = "") -> tuple[str, float]:
    """What best.pth follows: the validation twin EER plus the general EER (of the decision
    scores; with `prefix="twin_model_"`, of the twin model by itself).

    The twin EER alone would pick, among epochs that tell twins apart equally well (or not
    at all, early on), whichever happens to be lowest by chance, however many unrelated
    people it confuses; the sum keeps both in view. Either alone when the other is missing."""
    twin, general = validation[f"{prefix}twin_eer"], validation[f"{prefix}general_eer"]
    if twin is not None and general is not None:
        return "val_twin_plus_general_eer", twin + general
    if twin is not None:
        return "val_twin_eer", twin
    return "val_general_eer", general


def note_progress(state: dict[str, Any], metric: float, twin_model_metric: float) -> bool:
    """Count the epochs without progress; True when `metric` (the decision's) is the best so far.

    Patience runs out only when neither the decision nor the twin model by itself got better:
    while the recogniser alone decides (`recogniser_weight`), the decision's EER stands still
    however much the twin model learns."""
    improved = state["best"] is None or metric < state["best"]["metric"]
    learning = state["best_twin_model"] is None or twin_model_metric < state["best_twin_model"]
    if learning:
        state["best_twin_model"] = twin_model_metric
    state["epochs_without_improvement"] = 0 if improved or learning else state["epochs_without_improvement"] + 1
    return improved


# ---- set-up ----------------------------------------------------------------------------

def global_cache(model: TwinVerificationModel, index: FaceDataIndex, config: TrainConfig,
                 context: distributed.Context, cache_dir: Path) -> torch.Tensor:
    """Global-branch embeddings `N×V×G` of every image (view 0 plain, then augmented views).

    Computed once (by the main process, in float32) and kept on disk: the branch is
    frozen, so they never change. The cache is keyed by the global file's hash and input
    convention, the images and the views (`model_runner.global_cache_key`), and recomputed
    if any of these differ.
    """
    key = runner.global_cache_key(model, index, 1 + (config.face_augment_views if config.augment else 0),
                                  config.seed)
    path = cache_dir / "global_embeddings.pt"
    embeddings = runner.load_global_cache(path, key) if context.is_main else None
    if context.is_main and embeddings is None:
        embeddings = runner.global_embeddings(model, index, np.arange(len(index.images)), key["views"] - 1,
                                              config.seed, context.device, config.num_workers, config.progress)
        torch_save_atomic({"key": key, "embeddings": embeddings}, path)
    distributed.barrier(context)
    # The main process keeps what it read or computed; the others read the file once it is there.
    return embeddings if embeddings is not None else torch.load(path, map_location="cpu", weights_only=True)["embeddings"]


# ---- one epoch of training --------------------------------------------------------------

def epoch_batches(index, persons: list[str], cache, config: TrainConfig, context: distributed.Context,
                  epoch: int):
    """This process's loader for one epoch, and its number of steps (a function of seed and epoch)."""
    device = context.device
    on_device = runner.on_for_device(config.augment_on_device, device)
    if config.sampler == "families":
        batches = epoch_family_batches(index, persons, config.families_per_batch, config.images_per_identity,
                                       config.seed, epoch, context.rank, context.world_size, config.virtual_twins)
        dataset = FamilyBatchDataset(index, batches, cache, config.augment, config.seed, epoch, config.augment_strength,
                                     on_device)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=family_batch_positions(batches),
                                             num_workers=config.num_workers, pin_memory=device.type == "cuda")
        return loader, len(batches)
    triplets = epoch_triplets(index, persons, config.negative_strategy, config.twin_negative_fraction,
                              config.curriculum_switch_epoch, config.seed, epoch)
    positions = rank_positions(len(triplets), context.rank, context.world_size)
    dataset = TripletDataset(index, triplets, cache, config.augment, config.seed, epoch, config.augment_strength,
                             on_device)
    loader = runner.make_loader(torch.utils.data.Subset(dataset, positions.tolist()), config.batch_size,
                                config.num_workers, device)
    return loader, epoch_steps(len(triplets), context.world_size, config.batch_size)


def step_statistics(device: torch.device, *values: torch.Tensor | float) -> torch.Tensor:
    """One step's `STEP_STATISTICS` as a float64 vector on `device`. Numbers are filled in there,
    not copied from the host, and tensors are not read: the step never waits for the device."""
    return torch.stack([v.detach().to(torch.float64) if isinstance(v, torch.Tensor)
                        else torch.full((), v, dtype=torch.float64, device=device) for v in values])


def step_tensor(batch: dict[str, torch.Tensor], key: str, sampler: str, device: torch.device) -> torch.Tensor:
    """A batch's `key` on `device`, for pre-drawn triplets the anchors', positives' and negatives' in turn."""
    if sampler == "families":
        return batch[key].to(device, non_blocking=True)
    return torch.cat([batch[f"{role}_{key}"].to(device, non_blocking=True) for role in ROLES])


def step_parts(batch: dict[str, torch.Tensor], sampler: str, device: torch.device) -> torch.Tensor:
    """The step's uint8 part crops `B×R×3×S×S` on `device`, augmented: there, when the loader sent
    each crop's parameters (`augment_params`), else already by the loader on the CPU.

    Only the part crops: the global branch's augmentation is a cached view of the aligned face."""
    parts = step_tensor(batch, "parts", sampler, device)
    if "augment_params" not in batch and "anchor_augment_params" not in batch:
        return parts
    # kept on the CPU: `augment_batch` reads them there without waiting for the device
    params = step_tensor(batch, "augment_params", sampler, torch.device("cpu"))
    return device_augment.augment_batch(parts.flatten(0, 1), params.flatten(0, 1)).view(parts.shape)


def batch_loss(model, batch: dict[str, torch.Tensor], parts_uint8: torch.Tensor, config: TrainConfig,
               device: torch.device, dtype, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's loss and its `step_statistics`, for either sampler, from the step's augmented
    crops (`step_parts`). Every image is encoded once."""
    global_embedding = step_tensor(batch, "global", config.sampler, device)
    parts = runner.parts_to_device(parts_uint8, device, channels_last, config.region_names)
    with runner.autocast(device, dtype):
        output, embedding = model(None, parts, global_embedding=global_embedding, with_projection=True)
    # The mining loss trains the projection; where verification compares the parts
    # (decision_embedding), the parts loss below trains what is compared.
    images = len(parts_uint8)
    if config.sampler == "families":
        family = batch["family"].to(device, non_blocking=True)
        identity = batch["identity"].to(device, non_blocking=True)
        mined = mining.mined_loss(config.loss, embedding, identity, family, config.triplet_margin)
        loss = mined.loss
        if config.part_loss_weight > 0:
            loss = loss + config.part_loss_weight * parts_loss(output.parts_embedding, config, identity, family)
        if config.global_distillation > 0:
            loss = loss + config.global_distillation * mining.global_similarity_loss(embedding, global_embedding,
                                                                                     family)
        twin = mined.hardest_negative_is_twin  # NaN: no anchor had its twin in the batch
        return loss, step_statistics(device, loss * mined.triplets, mined.active_fraction * mined.triplets,
                                     mined.triplets, twin.nan_to_num(0.0), ~twin.isnan(), images)
    size = len(batch["twin_negative"])
    loss, per_triplet = triplet_loss(*embedding.split(size), margin=config.triplet_margin)
    twin_share = batch["twin_negative"].to(device, non_blocking=True).float().mean()
    return loss, step_statistics(device, loss * size, (per_triplet > 0).sum(), size, twin_share, 1, images)


def check_finite_loss(loss_sum: float, config: TrainConfig, epoch: int, first_step: int, last_step: int) -> None:
    """Stop when the loss of a step in `first_step..last_step` was NaN or infinite: the sum of
    loss·triplets is then non-finite (every loss is ≥ 0, and 0·NaN is NaN). Checked only where
    values are read anyway, so the weights are already spoilt: nothing is saved, and latest.pth
    stays the last good checkpoint."""
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, in global steps {first_step}..{last_step}; "
                                 f"the last good checkpoint is "
                                 f"{Path(config.output_dir) / 'checkpoints' / 'latest.pth'}")


def parts_loss(parts: torch.Tensor, config: TrainConfig, identity: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """The step's mining loss on the part embeddings alone (each region unit-length, concatenated,
    then unit-length again): the part encoders must tell the batch's identities apart by
    themselves, not only through the projection, which can learn the training twins by heart."""
    return mining.mined_loss(config.loss, torch.nn.functional.normalize(parts.float(), dim=1), identity, family,
                             config.triplet_margin).loss


def train_one_epoch(model, optimizer, scheduler, scaler, batches, config: TrainConfig,
                    context: distributed.Context, epoch: int, writer, global_step: int) -> dict[str, Any]:
    """Train on this process's batches of the epoch (from `epoch_batches`); returns the epoch's statistics.

    Values are read back to the host only every `log_every_steps` steps and at the end of the
    epoch; in between, a GPU runs as far ahead of the host as its queue allows.
    """
    device = context.device
    dtype = runner.autocast_dtype(config.precision, device)
    channels_last = runner.on_for_device(config.channels_last, device)
    model.train()
    totals = torch.zeros(len(STEP_STATISTICS), dtype=torch.float64, device=device)
    checked_step = global_step  # the losses of the steps after this one are not yet known to be finite
    data_seconds = compute_seconds = 0.0
    first_batch = True
    tick = time.perf_counter()
    for batch in runner.progress_bar(batches, config.progress, f"epoch {epoch + 1}/{config.num_epochs}"):
        ready = time.perf_counter()
        parts = step_parts(batch, config.sampler, device)
        loss, step = batch_loss(model, batch, parts, config, device, dtype, channels_last)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        global_step += 1
        totals += step
        if global_step % config.log_every_steps == 0:
            # every process reads the same all-reduced sums, so all of them stop together
            loss_sum, step_loss_sum = distributed.sum_across(torch.stack([totals[0], loss.detach().double()]),
                                                             context).tolist()
            check_finite_loss(loss_sum, config, epoch, checked_step + 1, global_step)
            checked_step = global_step
            if writer is not None:
                log_step(writer, step_loss_sum / context.world_size, step.tolist(), scheduler.get_last_lr()[0],
                         global_step)
        if writer is not None and first_batch:
            write_crop_grid(writer, parts if config.sampler == "families" else parts[:len(batch["twin_negative"])],
                            global_step)
            first_batch = False
        done = time.perf_counter()
        data_seconds += ready - tick
        compute_seconds += done - ready
        tick = done
    totals = distributed.sum_across(totals, context).tolist()
    compute_seconds += time.perf_counter() - tick  # the device's queued steps finish in that read
    check_finite_loss(totals[0], config, epoch, checked_step + 1, global_step)
    loss_sum, active, triplets, twin_negatives, twin_steps, images = totals
    count = max(1.0, triplets)
    elapsed = max(data_seconds + compute_seconds, 1e-9)
    return {"train_loss": loss_sum / count, "active_fraction": active / count,
            # triplets: share of twin negatives; families: share of anchors whose hardest negative is the twin
            "twin_negative_ratio": twin_negatives / max(1.0, twin_steps), "triplets": int(count),
            "triplets_per_second": count / elapsed, "images_encoded": int(images),
            "part_images_per_second": images * len(config.region_names) / elapsed,
            "data_wait_fraction": data_seconds / elapsed, "global_step": global_step}


def log_step(writer, step_loss: float, step: list[float], learning_rate: float, global_step: int) -> None:
    """A log step's batch scalars (`step`: its `STEP_STATISTICS`; the loss is the processes' mean)."""
    _loss_sum, active, triplets, twin_negatives, twin_steps, _images = step
    writer.add_scalar("train/batch_loss", step_loss, global_step)
    writer.add_scalar("train/learning_rate", learning_rate, global_step)
    writer.add_scalar("train/batch_active_fraction", active / max(1.0, triplets), global_step)
    if twin_steps:
        writer.add_scalar("train/batch_twin_negative_ratio", twin_negatives, global_step)


def write_crop_grid(writer, parts_uint8: torch.Tensor, step: int) -> None:
    """A few anchors' region crops as the model sees them, augmented, as one image (rows: images,
    columns: regions)."""
    import torchvision

    shown = parts_uint8[:8].cpu()
    grid = torchvision.utils.make_grid(shown.flatten(0, 1), nrow=parts_uint8.shape[1], padding=2)
    writer.add_image("train/part_crops", grid, step)


# ---- validation -----------------------------------------------------------------------------

class Validator:
    """Fixed validation pairs and triplets; scores the model on them every epoch."""

    def __init__(self, index: FaceDataIndex, persons: list[str], config: TrainConfig,
                 mark_face: mc.CanonicalFace | None = None):
        self.index, self.config, self.mark_face = index, config, mark_face
        self.marks: np.ndarray | None = None  # the pairs' mark similarities, made at the first call
        self.numbers = np.array(sorted(i for p in persons for i in index.images_of[p]), dtype=np.int64)
        position = {int(n): k for k, n in enumerate(self.numbers)}
        person_number = {p: k for k, p in enumerate(index.persons)}
        twin_numbers = {person_number[a]: [person_number[s] for s in siblings]
                        for a, siblings in index.siblings_of.items()}
        self.pairs = vp.verification_pairs(index.person_of_image[self.numbers], twin_numbers,
                                           config.max_general_impostor_pairs, np.random.default_rng([config.seed, 5]))
        # each pair's family (by its first image; a genuine or twin pair lies within one)
        self.families = index.family_ids_of_images(self.numbers[self.pairs.first])
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
            runner.on_for_device(config.channels_last, context.device), config.num_workers)
        result = {"val_loss": None}
        if self.triplets is not None:
            anchor, positive, negative = (torch.from_numpy(embeddings[c]) for c in self.triplets)
            result["val_loss"] = triplet_loss(anchor, positive, negative, self.config.triplet_margin)[0].item()
        recogniser_scores = vp.cosine_scores(global_embeddings[self.numbers].float().cpu().numpy(), self.pairs)
        result["recogniser_gate"] = vp.recogniser_gate(recogniser_scores, self.pairs.kind, config.recogniser_gate)
        twin_model_scores = vp.cosine_scores(embeddings, self.pairs)
        if self.mark_face is not None and self.marks is None:  # nothing learnt: the same every epoch
            folders = [mc.extracted_folder(self.index.images[n]) for n in self.numbers]
            self.marks, self.mark_scale = mc.marks_of_pairs(self.mark_face, folders, self.pairs, recogniser_scores,
                                                            result["recogniser_gate"])
        scores, result["recogniser_weight"], result["mark_weight"] = vp.decision_with_marks(
            twin_model_scores, recogniser_scores, self.marks, self.pairs.kind, result["recogniser_gate"],
            fixed_weight(config.recogniser_weight), fixed_weight(config.mark_weight), self.families)
        report = vp.metrics_by_impostor_kind(scores, self.pairs.kind)
        # The twin model by itself (behind the gate), whatever the recogniser's weight: what training
        # improves, so early stopping and the time to accuracy follow it too. At weight 0 it is the decision.
        own = report if result["recogniser_weight"] == 0 else vp.metrics_by_impostor_kind(
            vp.gated_scores(twin_model_scores, recogniser_scores, result["recogniser_gate"]), self.pairs.kind)
        for kind in ("twin", "general"):
            result[f"twin_model_{kind}_eer"] = own[kind]["eer"] if own[kind] else None
        for kind in ("twin", "general", "all"):
            result[f"{kind}_eer"] = report[kind]["eer"] if report[kind] else None
            result[f"{kind}_tar_at_far"] = report[kind]["tar_at_far"] if report[kind] else None
        # The stored decision threshold is set by the twins (the case this model exists for).
        result["threshold"], result["threshold_rule"] = vp.twin_far_threshold(scores, self.pairs.kind,
                                                                               config.target_twin_far)
        at_threshold = vp.metrics_by_impostor_kind(scores, self.pairs.kind, result["threshold"])
        for kind in ("twin", "general"):
            result[f"{kind}_far_at_threshold"] = at_threshold[kind]["far_at_threshold"] if at_threshold[kind] else None
        result["_scores"], result["_kinds"] = scores, self.pairs.kind
        return result

    def mark_comparison(self) -> dict[str, Any] | None:
        """What a checkpoint stores for the mark comparison: the canonical face and the scale."""
        if self.mark_face is None or self.marks is None:
            return None
        return {"face": self.mark_face.state(), "scale": self.mark_scale}


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

class ResumeError(ExpectedError, RuntimeError):
    """A latest.pth that cannot be resumed from."""


def read_resume_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """latest.pth, checked: readable, a resume checkpoint (not a best.pth), finite weights."""
    recover = (f"move it away (e.g. `mv {path} {path}.broken`) and rerun to start this run again from "
               "epoch 1, or use another --output-dir")
    try:
        saved = read_checkpoint(path, map_location)
    except CheckpointMismatchError as error:
        raise ResumeError(f"{error}; cannot resume from it: {recover}") from None
    missing = [k for k in RESUME_KEYS if k not in saved]
    if missing:
        looks = " (it looks like a best.pth, which holds no optimizer state)" if "part_crop_size" in saved else ""
        raise ResumeError(f"{path}: not a resume checkpoint, it lacks {missing}{looks}; {recover}")
    if not isinstance(saved["config"], dict):
        raise ResumeError(f"{path}: its config is not a dict; {recover}")
    bad = non_finite_keys(saved["model_state_dict"])
    if bad:
        raise ResumeError(f"{path}: {len(bad)} weight tensors hold NaN or infinity (e.g. {bad[0]}); {recover}")
    return saved


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that change what is computed. The run folder is compared by
    identity, not spelling: a relative path, a trailing slash or a moved folder still resumes."""
    if "output_dir" in saved and not same_folder(saved["output_dir"], config.output_dir):
        print(f"note: {path} was written in {saved['output_dir']}, which still exists; resuming this copy in "
              f"{config.output_dir}")
    # A key the saved config lacks was added later; the run did what that key's legacy value does.
    saved = {**TrainConfig().to_dict(), **LEGACY_DEFAULTS, **saved}
    # Runs from before paths were stored absolute hold them relative to the folder they ran in.
    saved = {**saved, **{k: str(Path(saved[k]).resolve()) for k in DATA_PATH_KEYS if isinstance(saved.get(k), str)}}
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in RUN_CONTROL_KEYS and k != "output_dir" and saved.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} → {getattr(config, k)!r}" for k in changed)
        raise ConfigError(f"{path} was written with different settings ({details}); re-run with the "
                          "original settings to resume, or use another --output-dir")


def check_same_global_file(saved: dict[str, Any], model: TwinVerificationModel, path: Path) -> None:
    """A run resumes only with the global file (by hash and input convention) it started with."""
    frozen = saved.get("frozen_files") or {}
    before = frozen["global"] if "global" in frozen else frozen.get("adaface")
    now = model.global_file
    same = (before is None and now is None) or (
        before is not None and now is not None and before["sha256"] == now["sha256"]
        and before.get("input") == now["input"])
    if not same:
        describe = lambda r: "an untrained global branch" if r is None else f"{r['path']} (sha256 {r['sha256']})"
        raise ConfigError(f"{path} was trained with {describe(before)}, but this run resolves the global model to "
                          f"{describe(now)}; give the original file (--adaface-checkpoint or "
                          "TWIN_ADAFACE_CHECKPOINT) or use another --output-dir")


def write_metrics_log(history: list[dict[str, Any]], path: Path) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def run_training(config: TrainConfig, context: distributed.Context | None = None) -> dict[str, Any]:
    """Train (or resume) according to `config`; returns the final state summary.

    The main process holds OUTPUT_DIR's lock throughout: a second run there is refused.
    """
    config = config.with_absolute_data_paths()
    context = context or distributed.Context(device=distributed.resolve_device(config.device, 0))
    with locked_run_folder(config.output_dir) if context.is_main else contextlib.nullcontext():
        return _run_training(config, context)


def _run_training(config: TrainConfig, context: distributed.Context) -> dict[str, Any]:
    output = Path(config.output_dir)
    checkpoints, logs = output / "checkpoints", output / "logs"
    latest_path = checkpoints / "latest.pth"
    if context.is_main:
        for folder in (checkpoints, logs, output / "cache"):
            folder.mkdir(parents=True, exist_ok=True)
    distributed.barrier(context)

    index = FaceDataIndex.load(Path(config.face_parts_dataset_path), Path(config.tensor_dataset_path),
                               Path(config.twin_pairs_path), config.region_names)
    if context.is_main:
        load_or_make_split(output / "split.json", index, config.train_split, config.test_split, config.seed)
    distributed.barrier(context)
    split = load_or_make_split(output / "split.json", index, config.train_split, config.test_split, config.seed)

    model = runner.build_model(config, trust_checkpoint=config.trust_checkpoint)
    cache = global_cache(model, index, config, context, output / "cache")
    model.to(context.device)
    model.face_parts.set_activation_checkpointing(config.activation_checkpointing)
    if runner.on_for_device(config.channels_last, context.device):
        model.face_parts.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = epoch_batches(index, split["train"], cache, config, context, 0)[1]
    total_steps = steps_per_epoch * config.num_epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps))
    scaler = runner.grad_scaler(context.device, runner.autocast_dtype(config.precision, context.device))

    state = {"epoch": 0, "global_step": 0, "history": [], "best": None, "best_twin_model": None,
             "epochs_without_improvement": 0, "finished": None, "images_encoded": 0, "seconds": 0.0,
             "time_to_twin_eer": {str(level): None for level in TIME_TO_TWIN_EER}}
    if latest_path.exists():
        # Read to the CPU whatever device wrote it: the model copies its weights to its own
        # device, the optimiser casts its state to its parameters' device, and the RNG state
        # must be a CPU ByteTensor.
        saved = read_resume_checkpoint(latest_path)
        check_resumable(saved["config"], config, latest_path)
        check_same_global_file(saved, model, latest_path)
        model.load_state_dict(saved["model_state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        state = {k: saved.get(k, state[k]) for k in state}
        if context.is_main:
            print(f"resuming from {latest_path}: {state['epoch']} of {config.num_epochs} epochs done")
    if state["finished"]:
        if context.is_main:
            print(f"{output}: training already finished ({state['finished']}); best model in {checkpoints / 'best.pth'}")
        return state

    # What the training steps call; validation and the checkpoints use `model` itself, so the
    # saved keys stay those of the model (no `module.` or `_orig_mod.` prefix)
    training_model = model
    if context.distributed:
        training_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    if config.compile:
        training_model = torch.compile(training_model)
    mark_face = None
    if config.mark_weight != "0":  # the mean face of the training photos, the same on every resume
        mark_face = mc.canonical_face_of(mc.extracted_folder(index.images[n])
                                         for p in split["train"] for n in index.images_of[p])
    validator = Validator(index, split["val"], config, mark_face)
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
            epoch_started = time.perf_counter()
            batches, _steps = epoch_batches(index, split["train"], cache, config, context, epoch)
            stats = train_one_epoch(training_model, optimizer, scheduler, scaler, batches, config, context, epoch,
                                    writer, state["global_step"])
            state["global_step"] = stats.pop("global_step")
            validation = validator(model, cache[:, 0], context)
            state["images_encoded"] += stats["images_encoded"]
            state["seconds"] += time.perf_counter() - epoch_started
            record_time_to_accuracy(state, validation["twin_model_twin_eer"], epoch + 1)
            scores, kinds = validation.pop("_scores"), validation.pop("_kinds")
            metric_name, metric = selection_metric(validation)
            improved = note_progress(state, metric, selection_metric(validation, "twin_model_")[1])
            row = {"epoch": epoch + 1, "stage": curriculum_stage(config.negative_strategy, epoch,
                                                                 config.curriculum_switch_epoch),
                   "learning_rate": scheduler.get_last_lr()[0], **stats, **validation,
                   "cumulative_images_encoded": state["images_encoded"], "cumulative_seconds": state["seconds"],
                   "time_to_twin_eer": {k: v and dict(v) for k, v in state["time_to_twin_eer"].items()}}
            state["history"].append(row)
            state["epoch"] = epoch + 1
            if improved:
                state["best"] = {"epoch": epoch + 1, "metric_name": metric_name, "metric": metric}
            if config.early_stopping_patience and state["epochs_without_improvement"] >= config.early_stopping_patience:
                state["finished"] = (f"early stop: no better {metric_name}, for the decision or the twin model by "
                                     f"itself, for {config.early_stopping_patience} epochs")
            elif state["epoch"] >= config.num_epochs:
                state["finished"] = f"completed {config.num_epochs} epochs"
            if context.is_main:
                log_epoch(writer, row, scores, kinds, state["global_step"], model.global_branch_label)
                write_metrics_log(state["history"], logs / "metrics.jsonl")
                if improved:
                    torch_save_atomic(model.deployable_checkpoint(
                        epoch=epoch + 1, config=config.to_dict(), validation=validation, part_crop_size=crop_size,
                        threshold=validation["threshold"], threshold_rule=validation["threshold_rule"],
                        recogniser_gate=validation["recogniser_gate"],
                        recogniser_weight=validation["recogniser_weight"],
                        mark_weight=validation["mark_weight"], mark_comparison=validator.mark_comparison(),
                        global_branch=model.global_branch_label), checkpoints / "best.pth")
                torch_save_atomic({"format_version": CHECKPOINT_FORMAT, **state, "config": config.to_dict(),
                                   "model_state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                   "rng": {"torch": torch.get_rng_state()},
                                   "frozen_files": model.frozen_files()}, latest_path)
                print(f"epoch {epoch + 1}/{config.num_epochs}: loss {row['train_loss']:.4f}, "
                      f"val loss {_number(row['val_loss'])}, twin EER {_pct(row['twin_eer'])}, general EER "
                      f"{_pct(row['general_eer'])}"
                      + (f" (recogniser weight {row['recogniser_weight']:.2f})" if row["recogniser_weight"] else "")
                      + (f" (mark weight {row['mark_weight']:.2f})" if row["mark_weight"] else "")
                      + f", {row['part_images_per_second']:.0f} part-images/s"
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
                "part_images_per_second", "data_wait_fraction", "stage", "learning_rate"):
        writer.add_scalar(f"train/{key}", row[key], step)
    for key in ("val_loss", "twin_eer", "general_eer", "all_eer", "recogniser_weight", "mark_weight"):
        if row[key] is not None:
            writer.add_scalar(f"val/{key}", row[key], step)
    for kind in ("twin", "general"):
        for far, entry in (row[f"{kind}_tar_at_far"] or {}).items():
            writer.add_scalar(f"val/{kind}_tar_at_far_{far}", entry["tar"], step)
    writer.add_figure("val/roc", roc_figure(scores, kinds, f"epoch {row['epoch']} ({label})"), step)
    writer.flush()


@cli_main
def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    context = distributed.start(config.device)
    try:
        run_training(config, context)
    finally:
        distributed.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
