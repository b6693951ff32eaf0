"""AdaFace IR networks, compatible with the official AdaFace checkpoints."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cli_errors import ExpectedError
from face_images import adaface_input_array

ADAFACE_INPUT_SIZE = 112
ADAFACE_EMBEDDING_DIM = 512
# Units per stage, as in the official `get_blocks`; the official code calls IR-100 "ir_101".
ADAFACE_STAGE_UNITS = {
    "ir_18": (2, 2, 2, 2),
    "ir_34": (3, 4, 6, 3),
    "ir_50": (3, 4, 14, 3),
    "ir_100": (3, 13, 30, 3),
}
ADAFACE_ARCHS = tuple(ADAFACE_STAGE_UNITS)
STAGE_CHANNELS = (64, 128, 256, 512)
DROPOUT_P = 0.4
# Four stride-2 stages take 112 px to 7 px before the flattening linear layer.
FINAL_MAP_SIZE_PX = ADAFACE_INPUT_SIZE // 2 ** len(STAGE_CHANNELS)

# The one default location of the AdaFace file: `pretrained/` beside this code.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "pretrained" / "adaface_ir50_ms1mv2.ckpt"
LIGHTNING_BACKBONE_PREFIX = "model."
# Lightning 1.0–1.4 (AdaFace's release pinned 1.4.4) keys the `callbacks` state by the
# callback *class*, so the pickle names this class; it is never instantiated. Every
# other part of such a file (hyper_parameters, optimizer and scheduler state) is plain.
LIGHTNING_CLASS_NAMES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_KEYS_SHOWN = 5


def adaface_input_tensor(aligned_bgr: np.ndarray) -> torch.Tensor:
    """AdaFace's input contract as a tensor: `face_images.adaface_input_array` (which says it)."""
    return torch.from_numpy(adaface_input_array(aligned_bgr))


def _key_sample(keys: set[str]) -> str:
    shown = ", ".join(sorted(keys)[:_KEYS_SHOWN])
    return f"{len(keys)} ({shown}{', …' if len(keys) > _KEYS_SHOWN else ''})"


def _arch_with_keys(keys: set[str]) -> str | None:
    """The architecture whose state-dict keys are exactly `keys`, if any (built on meta: free)."""
    with torch.device("meta"):
        for arch in ADAFACE_ARCHS:
            if set(build_adaface(arch).state_dict()) == keys:
                return arch
    return None


def adaface_state_dict(checkpoint_obj: object) -> dict[str, torch.Tensor]:
    """Backbone weights, without the `model.` prefix, from a Lightning checkpoint or a state dict.

    `checkpoint_obj` is what `torch.load` returned: the official Lightning layout
    `{'state_dict': {'model.…': …, 'head.…': …}, …}` or a plain backbone state dict,
    with or without the `model.` prefix. Everything outside `model.` (the margin head,
    optimizer state, …) is dropped.
    """
    if not isinstance(checkpoint_obj, Mapping):
        raise AdaFaceCheckpointError(
            f"expected a checkpoint dict, got {type(checkpoint_obj).__name__}; "
            "pass an AdaFace Lightning .ckpt or a backbone state dict"
        )
    weights = checkpoint_obj.get("state_dict", checkpoint_obj)
    if not isinstance(weights, Mapping):
        raise AdaFaceCheckpointError(
            f"checkpoint field 'state_dict' is a {type(weights).__name__}, not a dict of tensors"
        )
    prefix = LIGHTNING_BACKBONE_PREFIX
    backbone = {key[len(prefix):]: value for key, value in weights.items() if str(key).startswith(prefix)}
    if not backbone:
        if weights is not checkpoint_obj:
            raise AdaFaceCheckpointError(
                f"checkpoint 'state_dict' has no '{prefix}…' keys; it does not hold an AdaFace backbone"
            )
        backbone = dict(weights)
    not_tensors = sorted(str(key) for key, value in backbone.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise AdaFaceCheckpointError(
            f"backbone entries that are not tensors: {', '.join(not_tensors[:_KEYS_SHOWN])}"
        )
    return backbone


def build_adaface(arch: str = "ir_50") -> IRBackbone:
    """A randomly initialised AdaFace IR backbone (`ir_18`, `ir_34`, `ir_50` or `ir_100`)."""
    if arch not in ADAFACE_STAGE_UNITS:
        raise ValueError(f"unknown AdaFace arch {arch!r}; choose one of {', '.join(ADAFACE_ARCHS)}")
    return IRBackbone(ADAFACE_STAGE_UNITS[arch])


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, from its error text."""
    text = str(error)
    found = _REFUSED_GLOBAL.search(text)
    if found:
        return f"global {found.group(1)}"
    reason = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
    return " ".join(reason.split())


def _unreadable(path: Path, error: Exception) -> AdaFaceCheckpointError:
    return AdaFaceCheckpointError(
        f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error}); download it again"
    )


def _read_checkpoint(path: Path, trust_checkpoint: bool) -> object:
    """`torch.load` restricted to tensors, plain containers and `LIGHTNING_CLASS_NAMES`."""
    allowed = [(LightningClassStandIn, name) for name in LIGHTNING_CLASS_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refusal_reason(error)
        if not trust_checkpoint:
            damaged = "" if refused.startswith("global ") else "; if the file is damaged, download it again"
            raise AdaFaceCheckpointError(
                f"{path}: weights-only loading refused {refused}. A checkpoint is a pickle; only "
                f"tensors, plain containers and {', '.join(LIGHTNING_CLASS_NAMES)} are allowed. "
                "If the file is an AdaFace checkpoint from a source you trust, rerun with "
                "--trust-checkpoint (a flag of train_twin_verification.py, evaluate.py, inference.py and "
                "export_onnx.py; trust_checkpoint=True from Python): full unpickling can run arbitrary "
                f"code{damaged}."
            ) from error
        warnings.warn(f"{path}: fully unpickling a trusted checkpoint ({refused})", stacklevel=3)
    except (RuntimeError, EOFError, OSError) as error:
        raise _unreadable(path, error) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        message = f"{path}: unpickling needs the module {error.name!r}; install it"
        raise AdaFaceCheckpointError(message) from error
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as error:
        raise _unreadable(path, error) from error


def load_adaface(path: str | Path, arch: str = "ir_50", trust_checkpoint: bool = False) -> IRBackbone:
    """An AdaFace backbone in eval mode, loaded strictly from an official `.ckpt` or a state dict.

    `trust_checkpoint` allows full unpickling when weights-only loading refuses a
    global in the file; only for files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise AdaFaceCheckpointError(
            f"AdaFace checkpoint not found at {path}. Download {DEFAULT_CHECKPOINT.name} (IR-50 "
            "trained on MS1MV2) from the AdaFace authors' release, linked under 'Pretrained "
            "Models' in the README of https://github.com/mk-minchul/AdaFace, and put it at "
            f"{DEFAULT_CHECKPOINT} or pass its path."
        )
    model = build_adaface(arch)  # an unknown arch fails before a large file is read
    checkpoint = _read_checkpoint(path, trust_checkpoint)
    try:
        weights = adaface_state_dict(checkpoint)
    except AdaFaceCheckpointError as error:
        raise AdaFaceCheckpointError(f"{path}: {error}") from error
    expected = set(model.state_dict())
    if set(weights) != expected:
        missing, unexpected = expected - set(weights), set(weights) - expected
        other_arch = _arch_with_keys(set(weights))
        hint = f" The keys match {other_arch}: pass arch={other_arch!r}." if other_arch else ""
        raise AdaFaceCheckpointError(
            f"{path}: {len(weights)} backbone keys, {arch} expects {len(expected)}. "
            f"Missing {_key_sample(missing)}; unexpected {_key_sample(unexpected)}.{hint}"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:  # right names, wrong shapes
        raise AdaFaceCheckpointError(f"{path}: weights do not fit {arch}: {error}") from error
    return model.eval()


class AdaFaceCheckpointError(ExpectedError, RuntimeError):
    """An AdaFace checkpoint is missing, unreadable, refused as unsafe, or does not fit the model."""


class LightningClassStandIn:
    """Inert stand-in for a Lightning class that a checkpoint names but inference never uses."""

    __slots__ = ()


class IRUnit(nn.Module):
    """Improved-residual unit: BN→conv3×3→BN→PReLU→conv3×3(stride)→BN, plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        # Registered before `res_layer` so state-dict keys come in the official order.
        if in_channels == out_channels:
            # A 1×1 max-pool is a parameter-free strided identity.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """AdaFace's IR-ResNet for 112×112 BGR faces; `forward` returns (unit embedding, its norm)."""

    def __init__(self, stage_units: Sequence[int]) -> None:
        super().__init__()
        width = STAGE_CHANNELS[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)
        )
        # The official module defines `output_layer` before `body`; the state-dict order follows.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(STAGE_CHANNELS[-1]),
            nn.Dropout(DROPOUT_P),
            nn.Flatten(),
            nn.Linear(STAGE_CHANNELS[-1] * FINAL_MAP_SIZE_PX**2, ADAFACE_EMBEDDING_DIM),
            nn.BatchNorm1d(ADAFACE_EMBEDDING_DIM, affine=False),
        )
        units = []
        for out_channels, unit_count in zip(STAGE_CHANNELS, stage_units, strict=True):
            for index in range(unit_count):
                units.append(IRUnit(width, out_channels, stride=2 if index == 0 else 1))
                width = out_channels
        self.body = nn.Sequential(*units)
        self._init_like_official()

    def _init_like_official(self) -> None:
        """Kaiming-normal (fan_out) convs and linears with zero bias, as AdaFace trains from."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`B×3×112×112` → (`B×512` unit-length embedding, `B×1` pre-normalisation L2 norm)."""
        embedding = self.output_layer(self.body(self.input_layer(x)))
        norm = torch.linalg.vector_norm(embedding, ord=2, dim=1, keepdim=True)
        # A plain division, not F.normalize (which clamps the norm), to match the original.
        return embedding / norm, norm
