"""The twin verification model: frozen AdaFace (global) + one part encoder per face region (local).

    global 512 (AdaFace IR, frozen, unit length)  ┐
    local R × 128 (one encoder per region)        ┴→ 512 + R·128 → 512 → 256, L2-normalised

R is the number of face regions in the model's config (`regions`; the five parts unless
chosen otherwise, 1152 inputs to the projection then). Checkpoints written before regions
were configurable have no `regions` key and load as the five parts.

The output is unit length, so squared Euclidean distance is `2 − 2·cosine`: the
triplet loss (which uses Euclidean distance) and cosine-similarity scoring rank pairs
identically.

AdaFace is frozen for good: no gradients, always in eval mode (its BatchNorm statistics
never move, whatever `.train()` is called), and it is *not* part of this module's state
dict. Checkpoints carry the trainable weights, the config and the sha256 of the AdaFace
file they were trained with; AdaFace itself is loaded from that file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from atomic_files import sha256_of_file
from cutout import PART_NAMES, parse_regions
from face_parts_model import FacePartsModel
from net import ADAFACE_EMBEDDING_DIM, build_adaface, load_adaface

DEFAULT_ADAFACE_CHECKPOINT = str(Path(__file__).resolve().parent / "pretrained" / "adaface_ir50_ms1mv2.ckpt")
ADAFACE_CHECKPOINT_ENV = "TWIN_ADAFACE_CHECKPOINT"  # overrides the default location
# Without the AdaFace file the global branch is an *untrained* IR network, initialised
# from this seed so the same weights can be rebuilt from a checkpoint's config alone.
UNTRAINED_ADAFACE_SEED = 0
UNTRAINED_LABEL = "UNTRAINED global branch (random AdaFace weights)"


def default_adaface_checkpoint() -> str:
    """Where AdaFace is looked for unless told: `$TWIN_ADAFACE_CHECKPOINT`, else `pretrained/`."""
    return os.environ.get(ADAFACE_CHECKPOINT_ENV, DEFAULT_ADAFACE_CHECKPOINT)


class _Default:
    def __repr__(self) -> str:
        return "<default AdaFace checkpoint>"


DEFAULT = _Default()


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model or the frozen files on this machine."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the architecture (stored in every checkpoint)."""

    adaface_arch: str = "ir_50"
    adaface_checkpoint: str | None = None  # path of the AdaFace file; None: untrained global branch
    face_parts_embedding_dim: int = 128
    part_backbone: str = "resnet50"
    hidden_dim: int = 512
    embedding_dim: int = 256
    regions: tuple[str, ...] = PART_NAMES  # face regions, in the order of the part encoders

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointMismatchError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "regions" in values:
            try:
                values["regions"] = parse_regions(values["regions"])
            except ValueError as error:
                raise CheckpointMismatchError(f"model config: {error}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (a list for the regions), for `torch.load(weights_only=True)`."""
        return {**asdict(self), "regions": list(self.regions)}


class TwinOutput(NamedTuple):
    embedding: torch.Tensor          # B×embedding_dim, unit length: what verification compares
    global_embedding: torch.Tensor   # B×512, AdaFace's unit-length feature
    parts_embedding: torch.Tensor    # B×(R·D), per-region unit-length features, concatenated
    combined: torch.Tensor           # B×(512 + R·D), the projection's input


def build_global_branch(arch: str, checkpoint: str | None, trust_checkpoint: bool = False) -> nn.Module:
    """AdaFace from its checkpoint, or a seeded untrained network when `checkpoint` is None."""
    if checkpoint is not None:
        return load_adaface(checkpoint, arch, trust_checkpoint=trust_checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_ADAFACE_SEED)
        return build_adaface(arch).eval()


class TwinVerificationModel(nn.Module):
    def __init__(self, adaface_arch: str = "ir_50", face_parts_embedding_dim: int = 128,
                 part_backbone: str = "resnet50", hidden_dim: int = 512, embedding_dim: int = 256,
                 adaface_checkpoint: str | None | _Default = DEFAULT, part_weights: str = "none",
                 trust_checkpoint: bool = False, regions: tuple[str, ...] = PART_NAMES):
        """`part_weights` only initialises the part encoders (`none`, `imagenet` or a file);
        `adaface_checkpoint=None` builds an untrained global branch (demos without the file)."""
        super().__init__()
        if adaface_checkpoint is DEFAULT:
            adaface_checkpoint = default_adaface_checkpoint()
        self.config = ModelConfig(adaface_arch, None if adaface_checkpoint is None else str(adaface_checkpoint),
                                  face_parts_embedding_dim, part_backbone, hidden_dim, embedding_dim,
                                  parse_regions(regions))
        self.adaface = build_global_branch(adaface_arch, self.config.adaface_checkpoint, trust_checkpoint)
        self.adaface.requires_grad_(False)
        self.adaface.eval()
        self.face_parts = FacePartsModel(part_backbone, face_parts_embedding_dim, part_weights, self.config.regions)
        self.projection = nn.Sequential(
            nn.Linear(ADAFACE_EMBEDDING_DIM + self.face_parts.output_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embedding_dim))

    @property
    def global_branch_label(self) -> str:
        if self.config.adaface_checkpoint is None:
            return UNTRAINED_LABEL
        return f"AdaFace {self.config.adaface_arch} ({Path(self.config.adaface_checkpoint).name})"

    def train(self, mode: bool = True) -> "TwinVerificationModel":
        super().train(mode)
        self.adaface.eval()  # frozen: BatchNorm statistics and dropout stay as released
        return self

    @torch.no_grad()
    def embed_global(self, face_tensor: torch.Tensor) -> torch.Tensor:
        """AdaFace's unit-length 512-D feature for `B×3×112×112` inputs from `adaface_input_tensor`."""
        features, _norms = self.adaface(face_tensor)
        return features

    def forward(self, face_tensor: torch.Tensor | None, face_parts_dict: dict[str, torch.Tensor],
                global_embedding: torch.Tensor | None = None) -> TwinOutput:
        """`face_tensor`: AdaFace inputs (BGR, `(x/255−0.5)/0.5`, B×3×112×112), may be None
        when `global_embedding` (B×512, precomputed by `embed_global`) is given.
        `face_parts_dict`: region name → B×3×S×S from `part_encoder_input` (RGB, ImageNet norm),
        one entry per region of `config.regions`."""
        if global_embedding is None:
            if face_tensor is None:
                raise ValueError("give either face_tensor or a precomputed global_embedding")
            global_embedding = self.embed_global(face_tensor)
        parts = self.face_parts(face_parts_dict)
        combined = torch.cat([global_embedding.to(parts.dtype), parts], dim=1)
        embedding = nn.functional.normalize(self.projection(combined).float(), dim=1)
        return TwinOutput(embedding, global_embedding, parts, combined)

    # AdaFace is loaded from its own file, never from (or into) this model's checkpoints.
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(prefix + "adaface.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        carried = [k for k in state_dict if k.startswith("adaface.")]
        if carried:
            raise CheckpointMismatchError(
                f"state dict carries {len(carried)} AdaFace weights (e.g. {carried[0]}); AdaFace is frozen "
                "and loaded from its own checkpoint, so model_state_dict must not contain it")
        full = dict(state_dict)
        full.update({f"adaface.{k}": v for k, v in self.adaface.state_dict(keep_vars=True).items()})
        return super().load_state_dict(full, strict=strict, assign=assign)

    def frozen_files(self) -> dict[str, dict[str, str] | None]:
        """The frozen files this model depends on, with their sha256 (for checkpoints)."""
        path = self.config.adaface_checkpoint
        return {"adaface": None if path is None else {"path": path, "sha256": sha256_of_file(path)}}

    def deployable_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """What inference needs: trainable weights, config, frozen-file hashes (+ `extra`)."""
        return {"model_state_dict": self.state_dict(), "model_config": self.config.to_dict(),
                "frozen_files": self.frozen_files(), **extra}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | dict, adaface_checkpoint: str | None = None,
                        map_location: str | torch.device = "cpu") -> "TwinVerificationModel":
        """Rebuild a trained model. `adaface_checkpoint` overrides where the AdaFace file is
        (it must be the file the model was trained with: its sha256 is checked)."""
        if not isinstance(checkpoint, dict):
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: checkpoint not found")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        missing = [k for k in ("model_state_dict", "model_config", "frozen_files") if k not in checkpoint]
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks {missing}; is it a best.pth from training?")
        config = ModelConfig.from_dict(checkpoint["model_config"])
        recorded = checkpoint["frozen_files"]["adaface"]
        if recorded is not None and adaface_checkpoint is not None:
            config = ModelConfig.from_dict({**config.to_dict(), "adaface_checkpoint": str(adaface_checkpoint)})
        model = cls(**asdict(config))
        if recorded is not None:
            actual = model.frozen_files()["adaface"]["sha256"]
            if actual != recorded["sha256"]:
                raise CheckpointMismatchError(
                    f"{config.adaface_checkpoint} has sha256 {actual}, but the model was trained with "
                    f"{recorded['path']} (sha256 {recorded['sha256']}); give that file")
        model.load_state_dict(checkpoint["model_state_dict"])
        return model.eval()
