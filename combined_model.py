"""The twin verification model: a frozen global recogniser + one part encoder per face region (local).

    global G (AdaFace IR-50: 512, or an ONNX recogniser's size; frozen, unit length)  ┐
    local R × 128 (one encoder per region)                                           ┴→ G + R·128 → 512 → 256, L2-normalised

R is the number of face regions in the model's config (`regions`; the five parts unless
chosen otherwise, 1152 inputs to the projection then with AdaFace). Checkpoints written
before regions were configurable have no `regions` key and load as the five parts.

With `global_skip` (the default) a linear map G → 256 of the global embedding is added to
the projection's output before normalising: training starts from the recogniser's
ranking of pairs, and the projection adds what the parts tell. Checkpoints from before
the skip have no `global_skip` key and load without it.

The output is unit length, so squared Euclidean distance is `2 − 2·cosine`: the
triplet loss (which uses Euclidean distance) and cosine-similarity scoring rank pairs
identically.

The global branch (`global_branch.py`: AdaFace, or any ArcFace-aligned ONNX recogniser)
is frozen for good: no gradients, always in eval mode (its BatchNorm statistics never
move, whatever `.train()` is called), and it is *not* part of this module's state dict.
Checkpoints carry the trainable weights, the config and the path, sha256 and input
convention of the global file they were trained with; the branch is loaded from that file.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from cli_errors import ExpectedError
from cutout import PART_NAMES, parse_regions
from face_parts_model import FacePartsModel
from global_branch import (ADAFACE_INPUT, INSIGHTFACE_INPUT, GlobalModelError, InputConvention, OnnxRecogniser,
                           default_global_model, file_record, is_onnx, locate_recorded_file)
from net import ADAFACE_EMBEDDING_DIM, build_adaface, load_adaface

# Without a global file the global branch is an *untrained* IR network, initialised
# from this seed so the same weights can be rebuilt from a checkpoint's config alone.
UNTRAINED_ADAFACE_SEED = 0
UNTRAINED_PREFIX = "UNTRAINED"


class _Default:
    def __repr__(self) -> str:
        return "<default global model>"


DEFAULT = _Default()


class CheckpointMismatchError(ExpectedError, RuntimeError):
    """A checkpoint that does not fit the model or the frozen files on this machine."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the architecture (stored in every checkpoint)."""

    adaface_arch: str = "ir_50"
    adaface_checkpoint: str | None = None  # global file: AdaFace .ckpt or .onnx; None: untrained IR
    face_parts_embedding_dim: int = 128
    part_backbone: str = "resnet50"
    hidden_dim: int = 512
    embedding_dim: int = 256
    global_input_colour: str = "bgr"        # the global model's input convention (AdaFace: bgr, 127.5, 127.5)
    global_input_mean: float = 127.5
    global_input_std: float = 127.5
    part_head: str = "spatial"  # how each part encoder turns its feature map into a vector
    regions: tuple[str, ...] = PART_NAMES  # face regions, in the order of the part encoders
    global_skip: bool = True  # a linear path from the global embedding straight to the output
    part_input: str = "highpass"  # what the part trunks see: local detail (highpass) or the crop (rgb)
    decision_embedding: str = "combined"  # what verification compares: the projection's output, the parts', both

    @property
    def global_input(self) -> InputConvention:
        return InputConvention(self.global_input_colour, self.global_input_mean, self.global_input_std)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CheckpointMismatchError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        # Checkpoints from before part heads were configurable pooled their feature maps, and
        # had no path from the global embedding past the projection, and their part trunks
        # saw the crop as it is.
        values = {"part_head": "pool", "global_skip": False, "part_input": "rgb", **values}
        if "regions" in values:
            try:
                values["regions"] = parse_regions(values["regions"])
            except ValueError as error:
                raise CheckpointMismatchError(f"model config: {error}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (a list for the regions), for `torch.load(weights_only=True)`."""
        return {**asdict(self), "regions": list(self.regions)}


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file as a dict, loaded weights-only (tensors and plain containers, never code).

    A missing, empty, truncated or unsafe file is a `CheckpointMismatchError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: checkpoint not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        reason = " ".join(text.split()).split(". ")[0][:200]
        raise CheckpointMismatchError(f"{path}: refused by weights-only loading, so it is damaged or not a "
                                      f"checkpoint of this project ({reason})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        reason = " ".join(str(error).split()).split(". ")[0][:160]
        detail = "the file is empty" if path.stat().st_size == 0 else f"{type(error).__name__}: {reason}"
        raise CheckpointMismatchError(f"{path}: not a readable checkpoint: empty, truncated or damaged "
                                      f"({detail})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def non_finite_keys(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `state_dict` that hold NaN or infinity."""
    return [key for key, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type != "meta"
            and not bool(torch.isfinite(value).all())]


def check_finite_weights(state_dict: dict[str, Any]) -> None:
    bad = non_finite_keys(state_dict)
    if bad:
        raise CheckpointMismatchError(f"{len(bad)} weight tensors hold NaN or infinity (e.g. {bad[0]}); "
                                      "the model is unusable: use an earlier checkpoint or train again")


DECISION_EMBEDDINGS = ("combined", "parts", "both")


class TwinOutput(NamedTuple):
    embedding: torch.Tensor          # B×decision_dim, unit length: what verification compares
    global_embedding: torch.Tensor   # B×G, the global branch's unit-length feature
    parts_embedding: torch.Tensor    # B×(R·D), per-region unit-length features, concatenated
    combined: torch.Tensor           # B×(G + R·D), the projection's input


def global_input_for(checkpoint: str | None, colour: str | None = None, mean: float | None = None,
                     std: float | None = None) -> InputConvention:
    """The input convention of a global file: AdaFace's is fixed (BGR); an ONNX recogniser's comes
    from the arguments, each defaulting to InsightFace's (RGB, (x − 127.5)/127.5)."""
    if checkpoint is not None and is_onnx(checkpoint):
        base = INSIGHTFACE_INPUT
        return InputConvention(colour or base.colour, base.mean if mean is None else mean,
                               base.std if std is None else std)
    asked = InputConvention(colour or ADAFACE_INPUT.colour, ADAFACE_INPUT.mean if mean is None else mean,
                            ADAFACE_INPUT.std if std is None else std)
    if asked != ADAFACE_INPUT:
        raise CheckpointMismatchError(f"the AdaFace input is fixed ({ADAFACE_INPUT.describe()}); input "
                                      f"{asked.describe()} applies only to an ONNX recogniser")
    return ADAFACE_INPUT


def build_global_branch(arch: str, checkpoint: str | None, convention: InputConvention = ADAFACE_INPUT,
                        trust_checkpoint: bool = False) -> nn.Module:
    """The ONNX recogniser or AdaFace from its file, or a seeded untrained IR when `checkpoint` is None."""
    if checkpoint is not None and is_onnx(checkpoint):
        return OnnxRecogniser(checkpoint, convention)
    if checkpoint is not None:
        return load_adaface(checkpoint, arch, trust_checkpoint=trust_checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_ADAFACE_SEED)
        return build_adaface(arch).eval()


def arch_name(arch: str) -> str:
    return arch.upper().replace("_", "-")  # ir_50 → IR-50


class TwinVerificationModel(nn.Module):
    def __init__(self, adaface_arch: str = "ir_50", face_parts_embedding_dim: int = 128,
                 part_backbone: str = "resnet50", hidden_dim: int = 512, embedding_dim: int = 256,
                 adaface_checkpoint: str | None | _Default = DEFAULT, part_weights: str = "none",
                 trust_checkpoint: bool = False, global_input_colour: str | None = None,
                 global_input_mean: float | None = None, global_input_std: float | None = None,
                 part_head: str = "spatial", regions: tuple[str, ...] = PART_NAMES, global_skip: bool = True,
                 part_input: str = "highpass", decision_embedding: str = "combined"):
        """`adaface_checkpoint`: the global file, an AdaFace `.ckpt` or an ArcFace-aligned `.onnx`
        recogniser (default: `$TWIN_ADAFACE_CHECKPOINT`, else AdaFace in `pretrained/`); None builds
        an untrained IR (demos). `global_input_*`: an ONNX recogniser's input convention (default
        InsightFace's: RGB, mean 127.5, std 127.5). `part_weights` only initialises the part
        encoders (`none`, `imagenet` or a file); `part_head` is how each turns its map into a
        vector, and `part_input` what its trunk sees of the crop (`highpass`: local detail only);
        `regions` are the face regions, one part encoder each. `global_skip` adds a
        linear path from the global embedding to the output, so that training starts from the
        recogniser's geometry and the projection adds what the parts tell (see `forward`).
        `decision_embedding` is what verification compares: `combined`, the projection's output;
        `parts`, the part embeddings alone (each region unit-length, concatenated, unit-length
        again), the recogniser's own gate telling strangers apart (the projection then only trains);
        `both`: the two, each unit-length, concatenated (their cosine similarities averaged)."""
        super().__init__()
        if decision_embedding not in DECISION_EMBEDDINGS:
            raise ValueError(f"decision_embedding={decision_embedding!r}: choose one of {', '.join(DECISION_EMBEDDINGS)}")
        if adaface_checkpoint is DEFAULT:
            adaface_checkpoint = default_global_model()
        checkpoint = None if adaface_checkpoint is None else str(Path(adaface_checkpoint).resolve())
        convention = global_input_for(checkpoint, global_input_colour, global_input_mean, global_input_std)
        self.config = ModelConfig(adaface_arch, checkpoint, face_parts_embedding_dim, part_backbone, hidden_dim,
                                  embedding_dim, convention.colour, convention.mean, convention.std, part_head,
                                  parse_regions(regions), global_skip, part_input, decision_embedding)
        self.adaface = build_global_branch(adaface_arch, checkpoint, convention, trust_checkpoint)
        self.adaface.requires_grad_(False)
        self.adaface.eval()
        # Recorded once: path, sha256 and input convention of the frozen file (None: untrained).
        self.global_file = None if checkpoint is None else file_record(checkpoint, convention)
        self.face_parts = FacePartsModel(part_backbone, face_parts_embedding_dim, part_weights, part_head,
                                         regions=self.config.regions, part_input=part_input)
        self.projection = nn.Sequential(
            nn.Linear(self.global_dim + self.face_parts.output_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, embedding_dim))
        self.global_skip = None
        if global_skip:
            # Rows orthonormal, scaled so a unit-length global embedding keeps (on average) unit
            # length: the recogniser's cosine similarities survive the map closely. The projection
            # starts small beside it, so at first the twin model ranks pairs as the recogniser does.
            self.global_skip = nn.Linear(self.global_dim, embedding_dim, bias=False)
            nn.init.orthogonal_(self.global_skip.weight)
            with torch.no_grad():
                self.global_skip.weight.mul_((self.global_dim / embedding_dim) ** 0.5
                                             if embedding_dim < self.global_dim else 1.0)
                self.projection[-1].weight.mul_(0.1)
                self.projection[-1].bias.mul_(0.1)

    @property
    def global_dim(self) -> int:
        """Width of the global embedding: AdaFace's 512, or what the ONNX recogniser returns."""
        return getattr(self.adaface, "embedding_dim", ADAFACE_EMBEDDING_DIM)

    @property
    def decision_dim(self) -> int:
        """Width of the embedding that verification compares (`TwinOutput.embedding`)."""
        return {"combined": self.config.embedding_dim, "parts": self.face_parts.output_dim,
                "both": self.config.embedding_dim + self.face_parts.output_dim}[self.config.decision_embedding]

    @property
    def global_branch_label(self) -> str:
        """The global model by name: `AdaFace IR-50`, the ONNX file's name, or `UNTRAINED IR-50 …`."""
        if self.config.adaface_checkpoint is None:
            return f"{UNTRAINED_PREFIX} {arch_name(self.config.adaface_arch)} (random weights)"
        if is_onnx(self.config.adaface_checkpoint):
            return Path(self.config.adaface_checkpoint).name
        return f"AdaFace {arch_name(self.config.adaface_arch)}"

    def train(self, mode: bool = True) -> "TwinVerificationModel":
        super().train(mode)
        self.adaface.eval()  # frozen: BatchNorm statistics and dropout stay as released
        return self

    @torch.no_grad()
    def embed_global(self, face_tensor: torch.Tensor) -> torch.Tensor:
        """The global branch's unit-length `B×G` feature for `B×3×112×112` inputs from
        `adaface_input_tensor` (an ONNX recogniser converts them to its own convention)."""
        features, _norms = self.adaface(face_tensor)
        return features

    def forward(self, face_tensor: torch.Tensor | None, face_parts_dict: dict[str, torch.Tensor],
                global_embedding: torch.Tensor | None = None, *,
                with_projection: bool = False) -> TwinOutput | tuple[TwinOutput, torch.Tensor]:
        """`face_tensor`: AdaFace inputs (BGR, `(x/255−0.5)/0.5`, B×3×112×112), may be None
        when `global_embedding` (B×G, precomputed by `embed_global`) is given.
        `face_parts_dict`: region name → B×3×S×S from `part_encoder_input` (RGB, ImageNet norm),
        one entry per region of `config.regions`. `with_projection` (training) returns the
        projection's unit-length output too (the training's mining loss is on it), which is
        `embedding` where `decision_embedding` is `combined`."""
        if global_embedding is None:
            if face_tensor is None:
                raise ValueError("give either face_tensor or a precomputed global_embedding")
            global_embedding = self.embed_global(face_tensor)
        parts = self.face_parts(face_parts_dict)
        combined = torch.cat([global_embedding.to(parts.dtype), parts], dim=1)
        projected = self.projection(combined).float()
        if self.global_skip is not None:
            # In float32 even under autocast: the parts' small additions to the recogniser's
            # large term would otherwise be rounded away at bf16's 8-bit precision.
            with torch.autocast(projected.device.type, enabled=False):
                projected = projected + self.global_skip(global_embedding.float())
        projected = nn.functional.normalize(projected, dim=1)
        embedding = projected
        if self.config.decision_embedding != "combined":
            # each region is unit-length already (the concatenation has length √R); normalised again
            # in float32, as the training's parts loss sees it
            embedding = nn.functional.normalize(parts.float(), dim=1)
            if self.config.decision_embedding == "both":  # cosine: the mean of the two cosines
                embedding = torch.cat([embedding, projected], dim=1) / 2 ** 0.5
        output = TwinOutput(embedding, global_embedding, parts, combined)
        return (output, projected) if with_projection else output

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

    def frozen_files(self) -> dict[str, dict[str, Any] | None]:
        """The frozen files this model depends on: path, sha256 and input convention (for checkpoints)."""
        return {"global": self.global_file}

    def deployable_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """What inference needs: trainable weights, config, frozen-file hashes (+ `extra`)."""
        return {"model_state_dict": self.state_dict(), "model_config": self.config.to_dict(),
                "frozen_files": self.frozen_files(), **extra}

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | dict, adaface_checkpoint: str | None = None,
                        map_location: str | torch.device = "cpu",
                        trust_checkpoint: bool = False) -> "TwinVerificationModel":
        """Rebuild a trained model. The global file is the one with the recorded sha256: at
        `adaface_checkpoint` when given (refused when its hash differs), else the first found among
        `$TWIN_ADAFACE_CHECKPOINT`, `pretrained/` beside the code and the recorded path. Weights
        that hold NaN or infinity, or that do not fit the architecture, are refused."""
        if not isinstance(checkpoint, dict):
            checkpoint = read_checkpoint(checkpoint, map_location)
        missing = [k for k in ("model_state_dict", "model_config", "frozen_files") if k not in checkpoint]
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks {missing}; is it a best.pth from training?")
        if not isinstance(checkpoint["model_config"], dict) or not isinstance(checkpoint["model_state_dict"], dict):
            raise CheckpointMismatchError("checkpoint's model_config and model_state_dict must be dicts")
        check_finite_weights(checkpoint["model_state_dict"])
        config = ModelConfig.from_dict(checkpoint["model_config"])
        frozen = checkpoint["frozen_files"]
        if not isinstance(frozen, dict):
            raise CheckpointMismatchError("checkpoint's frozen_files must be a dict")
        recorded = frozen["global"] if "global" in frozen else frozen.get("adaface")  # older checkpoints
        if recorded is not None:
            recorded_input = InputConvention(**recorded.get("input", asdict(ADAFACE_INPUT)))
            if recorded_input != config.global_input:
                raise CheckpointMismatchError(
                    f"the checkpoint's model_config gives the global input {config.global_input.describe()} but its "
                    f"frozen_files record {recorded_input.describe()} for {recorded['path']}")
            try:
                found = locate_recorded_file(recorded, adaface_checkpoint)
            except GlobalModelError as error:
                raise CheckpointMismatchError(str(error)) from None
            config = replace(config, adaface_checkpoint=str(found))
        model = cls(**asdict(config), trust_checkpoint=trust_checkpoint)
        try:
            model.load_state_dict(checkpoint["model_state_dict"])
        except RuntimeError as error:  # strict loading: weights that do not fit the architecture
            raise CheckpointMismatchError(f"its weights do not fit the model its model_config builds with this "
                                          f"code: {' '.join(str(error).split())[:300]} …") from None
        return model.eval()
