"""Part encoders: one CNN per face region (the five parts with ResNet50 by default), each giving a 128-D
embedding. The region list (`cutout.REGION_LANDMARK_PAIRS` names) is part of the model's config.

Input contract (see `part_encoder_input`): **RGB** crops, `float` in `[0, 1]` after
division by 255, normalised with the ImageNet mean and std, channels first. That is
what torchvision's ImageNet weights were trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from cutout import PART_NAMES, parse_regions

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


class PartEncoder(nn.Module):
    """One CNN trunk and a linear layer to the part embedding."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none"):
        super().__init__()
        self.trunk, width = build_trunk(backbone)
        load_trunk_weights(self.trunk, backbone, weights)
        self.head = nn.Linear(width, embedding_dim)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(crops))


class FacePartsModel(nn.Module):
    """One part encoder per region; output is the concatenation in `regions` order."""

    def __init__(self, backbone: str = "resnet50", embedding_dim: int = 128, weights: str = "none",
                 regions: tuple[str, ...] = PART_NAMES):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.regions = parse_regions(regions)
        self.encoders = nn.ModuleDict({part: PartEncoder(backbone, embedding_dim, weights)
                                       for part in self.regions})

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
