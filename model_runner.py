"""Running the twin model over images: devices, precision, loaders and the embedding loops.

Training, evaluation and the benchmarks share this module. Functions take plain
arguments (device, autocast dtype, loader workers), never a whole run config, so any
script can call them with what it has.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import distributed
from combined_model import TwinVerificationModel
from face_parts_model import part_encoder_input
from triplet_dataset import DataIndexError, FaceDataIndex, FaceViewDataset, ImageDataset

GLOBAL_BATCH_SIZE = 32


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (`auto`, `fp32`, `bf16`, `fp16`) on `device`.

    `auto` is bf16 where the GPU computes it natively, fp16 (with a GradScaler) on GPUs that
    would only emulate bf16, and fp32 on the CPU. Emulated bf16 is slower than fp16 and
    gains nothing, so it is never chosen automatically.
    """
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast (its small range underflows gradients); off otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def on_for_device(setting: str, device: torch.device) -> bool:
    """An `on`/`off`/`auto` setting on `device`: `auto` is on for CUDA. Used for channels_last
    (cuDNN prefers NHWC) and for augmenting part crops on the device (a GPU warps a batch in a
    fraction of the time that loader processes need for it)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def make_loader(dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                      persistent_workers=False)


def parts_to_device(parts_uint8: torch.Tensor, device: torch.device, channels_last: bool,
                    regions: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """`B×R×3×S×S` uint8 RGB crops of `regions` → {region: normalised float B×3×S×S} on `device`."""
    if parts_uint8.shape[1] != len(regions):
        raise ValueError(f"{parts_uint8.shape[1]} crops per image for {len(regions)} regions {list(regions)}")
    parts_uint8 = parts_uint8.to(device, non_blocking=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return {name: part_encoder_input(parts_uint8[:, k]).contiguous(memory_format=memory_format)
            for k, name in enumerate(regions)}


def progress_bar(iterable, enabled: bool, description: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, disable=not enabled, dynamic_ncols=True, leave=False)


@torch.no_grad()
def global_embeddings(model: TwinVerificationModel, index: FaceDataIndex, numbers: np.ndarray,
                      augmented_views: int, seed: int, device: torch.device, workers: int,
                      progress: bool = False) -> torch.Tensor:
    """Frozen global-branch features `len(numbers)×(1+augmented_views)×D` of chosen images, float32."""
    views = 1 + augmented_views
    dataset = torch.utils.data.Subset(FaceViewDataset(index, augmented_views, seed), numbers.tolist())
    model.adaface.to(device)
    rows = [model.embed_global(faces.to(device).flatten(0, 1)).float().cpu().view(len(faces), views, -1)
            for faces in progress_bar(make_loader(dataset, GLOBAL_BATCH_SIZE, workers, device), progress,
                                      "global embeddings")]
    return torch.cat(rows) if rows else torch.zeros((0, views, model.global_dim))


@torch.no_grad()
def embed_images(model: TwinVerificationModel, index: FaceDataIndex, numbers: np.ndarray,
                 global_embeddings_all: torch.Tensor, context: distributed.Context, dtype: torch.dtype | None,
                 channels_last: bool, workers: int, batch_size: int = 64) -> np.ndarray:
    """Final embeddings of chosen images (each computed once; shared out over processes).

    `global_embeddings_all`: the cached global features of every image of `index`, row `i`
    for image `i`.
    """
    model.eval()
    device = context.device
    mine = numbers[context.rank::context.world_size]
    rows = []
    for batch in make_loader(ImageDataset(index, mine), batch_size, workers, device):
        parts = parts_to_device(batch["parts"], device, channels_last, index.regions)
        with autocast(device, dtype):
            rows.append(model(None, parts, global_embedding=global_embeddings_all[batch["image"]].to(device)).embedding)
    local = torch.cat(rows) if rows else torch.zeros((0, model.decision_dim), device=device)
    return distributed.gather_rows(local.float(), len(numbers), context).cpu().numpy()


def tensor_file_identity(path: Path) -> str:
    """`path size mtime` of a global-model input file; a missing file is named."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise DataIndexError(f"{path}: aligned-face input tensor missing; re-run the extractor") from None
    return f"{path.resolve()} {status.st_size} {status.st_mtime_ns}"


def global_cache_key(model: TwinVerificationModel, index: FaceDataIndex, views: int, seed: int) -> dict:
    """What a cache of global embeddings depends on: the global model file (hash and input
    convention), the images (path, size and modification time of each input tensor, so that
    re-extracting into the same paths is noticed) and, when augmented views are cached, their
    number and seed (plain embeddings do not depend on a seed)."""
    recorded = model.global_file
    key = {"adaface": f"{recorded['sha256']}:{recorded['input']}" if recorded
           else f"untrained:{model.config.adaface_arch}",
           "images": hashlib.sha256("\n".join(tensor_file_identity(r.tensor_path) for r in index.images)
                                    .encode()).hexdigest(),
           "views": views}
    if views > 1:
        key["seed"] = seed
    return key


def load_global_cache(path: str | Path, key: dict) -> torch.Tensor | None:
    """The cached `N×V×G` global embeddings at `path` if their key is `key`, else None."""
    if not Path(path).is_file():
        return None
    cached = torch.load(path, map_location="cpu", weights_only=True)
    return cached["embeddings"] if cached.get("key") == key else None


def build_model(config, trust_checkpoint: bool = False) -> TwinVerificationModel:
    """The model a training config describes (`config`: a `TrainConfig`), seeded by its seed.
    `trust_checkpoint` allows full unpickling of an AdaFace file that weights-only loading refuses."""
    torch.manual_seed(config.seed)  # the part encoders' and projection's initial weights
    return TwinVerificationModel(
        adaface_arch=config.adaface_arch, face_parts_embedding_dim=config.face_parts_embedding_dim,
        part_backbone=config.part_backbone, hidden_dim=config.hidden_dim, embedding_dim=config.embedding_dim,
        adaface_checkpoint=config.adaface_checkpoint_path, part_weights=config.part_weights,
        global_input_colour=config.global_input_colour_or_none, global_input_mean=config.global_input_mean,
        global_input_std=config.global_input_std, trust_checkpoint=trust_checkpoint, part_head=config.part_head,
        regions=config.region_names, global_skip=config.global_skip, part_input=config.part_input,
        decision_embedding=config.decision_embedding)
