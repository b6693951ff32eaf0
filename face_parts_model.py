"""Part encoders: one CNN per face part (five ResNet50 by default), each giving a 128-D embedding.

Input contract (see `part_encoder_input`): **RGB** crops, `float` in `[0, 1]` after
division by 255, normalised with the ImageNet mean and std, channels first. That is
what torchvision's ImageNet weights were trained on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from cutout import PART_NAMES

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
PART_BACKBONES = ("resnet50", "resnet34", "resnet18", "tiny")
TINY_MAP_CHANNELS, TINY_MAP_SIZE = 8, 8  # the tiny encoder's spatial output: 8 × 8 × 8
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
    mean = torch.tensor(IMAGENET_MEAN_RGB, device=crops_rgb.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB, device=crops_rgb.device).view(3, 1, 1)
    return (crops_rgb.float() / 255.0 - mean) / std


def imagenet_weights_file(backbone: str) -> Path:
    """The torchvision ImageNet weight file for `backbone` in the local torch cache.

    Any released version present is used (the newest first). The files cannot be
    downloaded from inside this program: a missing one is an error saying where it goes.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    versions = list(_TORCHVISION_WEIGHTS[backbone])[::-1]
    for version in versions:
        candidate = checkpoints / os.path.basename(version.url)
        if candidate.is_file():
            return candidate
    expected = checkpoints / os.path.basename(versions[0].url)
    raise PartWeightsError(
        f"ImageNet weights for {backbone} not found: put {versions[0].url} at {expected} "
        "(torchvision's cache), or choose --part-weights none or a weight file path")


def build_trunk(backbone: str) -> tuple[nn.Module, int]:
    """A feature extractor without its classifier, and its output width."""
    if backbone == "tiny":  # ~0.15 M parameters: for tests and quick demos on CPU
        layers, channels = [], 3
        for width, stride in ((32, 2), (64, 2), (64, 1), (128, 2)):
            layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        # Keep *where* features are: crops are aligned by landmarks, so one skin spot sits at
        # one place in every photo of a face, and a mole changes the embedding where it is.
        # (A global pool would let the nostrils' darkness hide a mole's.)
        layers += [nn.Conv2d(channels, TINY_MAP_CHANNELS, 1), nn.AdaptiveAvgPool2d(TINY_MAP_SIZE), nn.Flatten()]
        return nn.Sequential(*layers), TINY_MAP_CHANNELS * TINY_MAP_SIZE ** 2
    if backbone not in _TORCHVISION_WEIGHTS:
        raise ValueError(f"unknown part backbone {backbone!r}; choose one of {', '.join(PART_BACKBONES)}")
    trunk = getattr(torchvision.models, backbone)(weights=None)
    width = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, width


def load_trunk_weights(trunk: nn.Module, backbone: str, weights: str) -> None:
    """Initialise a trunk: `imagenet`, `none` (random) or a path to a state-dict file."""
    if weights == "none":
        return
    if weights == "imagenet":
        if backbone == "tiny":
            raise PartWeightsError("the tiny backbone has no ImageNet weights; use --part-weights none")
        path = imagenet_weights_file(backbone)
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

    A torchvision ResNet splits into its stem and its four stages; other trunks stay whole.
    """
    if isinstance(trunk, torchvision.models.ResNet):
        stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        return [stem, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4,
                nn.Sequential(trunk.avgpool, nn.Flatten(1), trunk.fc)]
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


class PartEncoder(nn.Module):
    """One CNN trunk and a linear layer to the part embedding."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none"):
        super().__init__()
        self.trunk, width = build_trunk(backbone)
        load_trunk_weights(self.trunk, backbone, weights)
        self.head = nn.Linear(width, embedding_dim)
        self.activation_checkpointing = False

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return self.head(run_checkpointed(trunk_segments(self.trunk), crops))
        return self.head(self.trunk(crops))


class FacePartsModel(nn.Module):
    """Five separate part encoders; output is the concatenation in `PART_NAMES` order."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none"):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.encoders = nn.ModuleDict({part: PartEncoder(backbone, embedding_dim, weights)
                                       for part in PART_NAMES})

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory in training: each trunk keeps only its stage boundaries and
        recomputes the rest in the backward pass (about a third more compute, a fraction of the
        activation memory), so larger family batches fit on one GPU."""
        for encoder in self.encoders.values():
            encoder.activation_checkpointing = enabled

    @property
    def output_dim(self) -> int:
        return self.embedding_dim * len(PART_NAMES)

    def forward(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """`parts`: part name → `B×3×S×S` from `part_encoder_input`. Returns `B×(5·D)`;
        each part's embedding is L2-normalised so no part outweighs another by scale."""
        missing = [part for part in PART_NAMES if part not in parts]
        if missing:
            raise KeyError(f"face parts missing from the input: {missing}; expected {list(PART_NAMES)}")
        embeddings = [nn.functional.normalize(self.encoders[part](parts[part]), dim=1)
                      for part in PART_NAMES]
        return torch.cat(embeddings, dim=1)
