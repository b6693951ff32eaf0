"""Part encoders: one CNN per face region (the five parts with ResNet50 by default), each giving a 128-D
embedding. The region list (`cutout.REGION_LANDMARK_PAIRS` names) is part of the model's config.

Input contract (see `part_encoder_input`): **RGB** crops, `float` in `[0, 1]` after
division by 255, normalised with the ImageNet mean and std, channels first. That is
what torchvision's ImageNet weights were trained on.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from cutout import PART_NAMES, parse_regions

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
PART_BACKBONES = ("resnet50", "resnet34", "resnet18", "tiny")
PART_HEADS = ("spatial", "pool")
PART_INPUTS = ("highpass", "rgb")
# Spatial head per backbone: (channels after the 1×1 convolution, side of the pooled grid).
SPATIAL_HEAD = {"tiny": (8, 8), "resnet18": (16, 7), "resnet34": (16, 7), "resnet50": (16, 7)}
_TORCHVISION_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet18": torchvision.models.ResNet18_Weights,
}


class PartWeightsError(FileNotFoundError):
    """Requested part-encoder weights that are not on this machine or do not fit."""


def part_encoder_input(crops_rgb: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The part encoders' input contract: RGB uint8 crops → ImageNet-normalised float.

    Accepts `uint8` `…×3×S×S` tensors (channels first, as the data loader yields them)
    or a NumPy `…×S×S×3` array (channels last, as images are decoded). **RGB** order.
    """
    if isinstance(crops_rgb, np.ndarray):
        crops_rgb = torch.from_numpy(np.ascontiguousarray(crops_rgb)).movedim(-1, -3)
    if crops_rgb.dtype != torch.uint8 or crops_rgb.shape[-3] != 3:
        raise ValueError(f"expected uint8 RGB crops …×3×S×S, got {crops_rgb.dtype} {tuple(crops_rgb.shape)}")
    mean, std = _imagenet_mean_std(crops_rgb.device)
    return (crops_rgb.float() / 255.0 - mean) / std


@functools.cache
def _imagenet_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's `3×1×1` mean and std on `device`, made once: a tensor made from host
    values is a blocking copy, which would make every training step wait for the GPU."""
    return (torch.tensor(IMAGENET_MEAN_RGB, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD_RGB, device=device).view(3, 1, 1))


def imagenet_state_dict(backbone: str, progress: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet weights for `backbone`, and where they came from.

    Through torchvision's weight API: a released version already in the torch cache
    (`$TORCH_HOME/hub/checkpoints`, newest first) is used as is; otherwise the default
    version is downloaded there, its sha256 checked against the file name's prefix.
    Without a connection the error says which file to put where.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    versions = list(_TORCHVISION_WEIGHTS[backbone])[::-1]
    cached = [v for v in versions if (checkpoints / os.path.basename(v.url)).is_file()]
    chosen = cached[0] if cached else _TORCHVISION_WEIGHTS[backbone].DEFAULT
    target = checkpoints / os.path.basename(chosen.url)
    try:
        state = chosen.get_state_dict(progress=progress, check_hash=True, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:  # no connection, refused, or a file with the wrong hash
        raise PartWeightsError(
            f"ImageNet weights for {backbone} could not be downloaded ({error}): put {chosen.url} at {target} "
            "(torchvision's cache), or choose --part-weights none or a weight file path") from None
    return state, str(target)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to its last stage: `B×C×h×w` maps (no pool, no classifier).

    The children keep torchvision's names, so ImageNet state dicts load as they are.
    """

    def __init__(self, backbone: str):
        super().__init__()
        network = getattr(torchvision.models, backbone)(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(network, name))
        self.out_channels = network.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_trunk(backbone: str) -> tuple[nn.Module, int]:
    """A feature-map extractor without pooling or classifier, and its channel count."""
    if backbone == "tiny":  # ~0.15 M parameters: for tests and quick demos on CPU
        layers, channels = [], 3
        for width, stride in ((32, 2), (64, 2), (64, 1), (128, 2)):
            layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        return nn.Sequential(*layers), channels
    if backbone not in _TORCHVISION_WEIGHTS:
        raise ValueError(f"unknown part backbone {backbone!r}; choose one of {', '.join(PART_BACKBONES)}")
    trunk = ResNetTrunk(backbone)
    return trunk, trunk.out_channels


def build_head_reducer(head: str, backbone: str, channels: int) -> tuple[nn.Module, int]:
    """The step from the trunk's map to a vector, and the vector's width.

    `pool`: global average pool (position is lost). `spatial`: a 1×1 convolution to a few
    channels, pooled to a fixed grid (7×7 for ResNets: their map at 224 px; 8×8 for the
    tiny encoder: its map at 64 px), then flattened, so the linear layer sees *where* a
    feature is. Crops are aligned by landmarks, so a mole sits at one place in every crop
    of a face; a global pool would mix it into the rest of the crop.
    """
    if head == "pool":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels
    if head == "spatial":
        map_channels, grid = SPATIAL_HEAD[backbone]
        return nn.Sequential(nn.Conv2d(channels, map_channels, 1), nn.AdaptiveAvgPool2d(grid), nn.Flatten()), \
            map_channels * grid * grid
    raise ValueError(f"unknown part head {head!r}; choose one of {', '.join(PART_HEADS)}")


def load_trunk_weights(trunk: nn.Module, backbone: str, weights: str) -> None:
    """Initialise a trunk: `imagenet`, `none` (random) or a path to a state-dict file."""
    if weights == "none":
        return
    if weights == "imagenet":
        if backbone == "tiny":
            raise PartWeightsError("the tiny backbone has no ImageNet weights; use --part-weights none")
        state, path = imagenet_state_dict(backbone)
    else:
        path = Path(weights)
        if not path.is_file():
            raise PartWeightsError(f"{path}: part-encoder weight file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet classifier
    result = trunk.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PartWeightsError(
            f"{path} does not fit a {backbone} trunk: missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} "
            f"({len(result.unexpected_keys)})")


def trunk_segments(trunk: nn.Module) -> list[nn.Module]:
    """The trunk as a chain of segments, each a unit of activation checkpointing.

    A ResNet trunk splits into its stem and its four stages; other trunks stay whole.
    """
    if isinstance(trunk, ResNetTrunk):
        stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        return [stem, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]
    return [trunk]


@contextlib.contextmanager
def _batchnorm_statistics_frozen(module: nn.Module):
    """While a checkpointed segment is recomputed for the backward pass, its BatchNorm layers
    must not update their running statistics a second time (momentum 0 keeps them as they are)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(layer.momentum, None if layer.num_batches_tracked is None else layer.num_batches_tracked.clone())
             for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)


def run_checkpointed(segments: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Forward through `segments`, keeping only each segment's input for the backward pass; the
    activations inside a segment are recomputed when its gradients are needed."""
    for segment in segments:
        x = checkpoint(segment, x, use_reentrant=False,
                       context_fn=lambda segment=segment: (contextlib.nullcontext(),
                                                           _batchnorm_statistics_frozen(segment)))
    return x


def highpass_window(side: int) -> int:
    """The local-mean window of the `highpass` input: about a ninth of the crop side, odd
    (7 px at 64 px, 25 px at 224 px), so it spans the same share of the skin at any crop size."""
    return side // 9 | 1


def highpass(crops: torch.Tensor) -> torch.Tensor:
    """Each pixel less the mean of its neighbourhood (`highpass_window`), per channel.

    What stays is local detail: a mole, a scar, a freckle, the edge of a brow. What goes is
    what varies from photo to photo of one face and says little about which twin it is:
    the light's level, colour and gradient across the crop. The factor 3 brings the
    result near unit spread again for the first convolution."""
    window = highpass_window(crops.shape[-1])
    local_mean = nn.functional.avg_pool2d(crops, window, stride=1, padding=window // 2, count_include_pad=False)
    return (crops - local_mean) * 3


class PartEncoder(nn.Module):
    """One CNN trunk, a head reducer (`pool` or `spatial`) and a linear layer to the part embedding.

    `part_input`: what the trunk sees of the normalised crop, `highpass` (local detail only,
    see `highpass`) or `rgb` (the crop as it is)."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none",
                 head: str = "spatial", part_input: str = "highpass"):
        super().__init__()
        if part_input not in PART_INPUTS:
            raise ValueError(f"unknown part input {part_input!r}; choose one of {', '.join(PART_INPUTS)}")
        self.part_input = part_input
        self.trunk, channels = build_trunk(backbone)
        load_trunk_weights(self.trunk, backbone, weights)
        self.reduce, width = build_head_reducer(head, backbone, channels)
        self.head = nn.Linear(width, embedding_dim)
        self.activation_checkpointing = False

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if self.part_input == "highpass":
            crops = highpass(crops)
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return self.head(self.reduce(run_checkpointed(trunk_segments(self.trunk), crops)))
        return self.head(self.reduce(self.trunk(crops)))


class FacePartsModel(nn.Module):
    """One part encoder per region; output is the concatenation in `regions` order."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none",
                 head: str = "spatial", regions: tuple[str, ...] = PART_NAMES, part_input: str = "highpass"):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.regions = parse_regions(regions)
        self.encoders = nn.ModuleDict({part: PartEncoder(backbone, embedding_dim, weights, head, part_input)
                                       for part in self.regions})

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory in training: each trunk keeps only its stage boundaries and
        recomputes the rest in the backward pass (about a third more compute, a fraction of the
        activation memory), so larger family batches fit on one GPU."""
        for encoder in self.encoders.values():
            encoder.activation_checkpointing = enabled

    @property
    def output_dim(self) -> int:
        return self.embedding_dim * len(self.regions)

    def forward(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """`parts`: region name → `B×3×S×S` from `part_encoder_input`. Returns `B×(R·D)`;
        each region's embedding is L2-normalised so no region outweighs another by scale."""
        missing = [part for part in self.regions if part not in parts]
        if missing:
            raise KeyError(f"face regions missing from the input: {missing}; expected {list(self.regions)}")
        embeddings = [nn.functional.normalize(self.encoders[part](parts[part]), dim=1)
                      for part in self.regions]
        return torch.cat(embeddings, dim=1)
