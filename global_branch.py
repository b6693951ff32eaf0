"""The frozen global branch: AdaFace IR, or any ArcFace-aligned ONNX face recogniser.

Both take the 112×112 face aligned by the ArcFace five-point similarity transform. The
pipeline carries every aligned face as AdaFace's input tensor (**BGR**, `(x − 127.5)/127.5`,
i.e. `(x/255 − 0.5)/0.5`, `net.adaface_input_tensor`); an ONNX recogniser turns it into its
own convention (`InputConvention`: channel order, mean, std; InsightFace's models take
**RGB**, `(x − 127.5)/127.5`) before it runs. Either way the branch returns the unit-length
embedding and its norm, as AdaFace does.

Which file: the path a run is given, else `$TWIN_ADAFACE_CHECKPOINT`, else
`pretrained/adaface_ir50_ms1mv2.ckpt` beside this code. Checkpoints record the file's
absolute path, sha256 and input convention; loading looks for a file with that hash in
the given path, `$TWIN_ADAFACE_CHECKPOINT`, `pretrained/` beside the code, then the
recorded path (`locate_recorded_file`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atomic_files import sha256_of_file
from cli_errors import ExpectedError
from net import ADAFACE_INPUT_SIZE, DEFAULT_CHECKPOINT

ADAFACE_CHECKPOINT_ENV = "TWIN_ADAFACE_CHECKPOINT"  # overrides the default location
PRETRAINED = Path(__file__).resolve().parent / "pretrained"
ONNX_SUFFIX = ".onnx"
COLOUR_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class InputConvention:
    """How a recogniser wants the aligned face: channel order, then `(x − mean)/std` on 0..255."""

    colour: str = "rgb"
    mean: float = 127.5
    std: float = 127.5

    def __post_init__(self) -> None:
        if self.colour not in COLOUR_ORDERS:
            raise ValueError(f"colour order {self.colour!r}: choose one of {', '.join(COLOUR_ORDERS)}")
        if not self.std > 0:
            raise ValueError(f"input std {self.std!r} must be positive")

    def describe(self) -> str:
        return f"{self.colour.upper()}, (x - {self.mean:g})/{self.std:g}, Bx3x112x112"


ADAFACE_INPUT = InputConvention("bgr", 127.5, 127.5)      # (x/255 − 0.5)/0.5, as AdaFace trained
INSIGHTFACE_INPUT = InputConvention("rgb", 127.5, 127.5)  # InsightFace's ArcFace models


class GlobalModelError(ExpectedError, RuntimeError):
    """A global-branch file that is missing, unreadable, or not the one a model was trained with."""


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def default_global_model() -> Path:
    """Where the global model is looked for unless told: `$TWIN_ADAFACE_CHECKPOINT`, else AdaFace in
    `pretrained/` beside the code. Absolute."""
    return Path(os.environ.get(ADAFACE_CHECKPOINT_ENV) or DEFAULT_CHECKPOINT).expanduser().resolve()


def aligned_face_input(aligned_bgr: np.ndarray, convention: InputConvention) -> torch.Tensor:
    """A recogniser's input contract: aligned BGR uint8 `…×112×112×3` → float `…×3×112×112` in
    `convention`'s channel order, `(x − mean)/std`."""
    array = np.asarray(aligned_bgr)
    if array.dtype != np.uint8 or array.shape[-3:] != (ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE, 3):
        raise ValueError(f"expected uint8 …×112×112×3 BGR, got {array.dtype} {array.shape}")
    ordered = array[..., ::-1] if convention.colour == "rgb" else array
    scaled = (ordered.astype(np.float32) - convention.mean) / convention.std
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(scaled, -1, -3)))


def from_adaface_input(face: torch.Tensor, convention: InputConvention) -> torch.Tensor:
    """AdaFace input tensors (`B×3×112×112`, BGR, `(x − 127.5)/127.5`) in another convention.

    The same values as `aligned_face_input` on the aligned face they were made from (up to
    float rounding): the pipeline stores only the AdaFace tensor of each face.
    """
    pixels = face * ADAFACE_INPUT.std + ADAFACE_INPUT.mean  # BGR, 0..255
    if convention.colour == "rgb":
        pixels = pixels.flip(-3)
    return (pixels - convention.mean) / convention.std


def file_record(path: str | os.PathLike, convention: InputConvention) -> dict[str, Any]:
    """What a checkpoint stores about a global-model file: kind, absolute path, sha256, input."""
    path = Path(path).resolve()
    return {"kind": "onnx" if is_onnx(path) else "adaface", "path": str(path), "sha256": sha256_of_file(path),
            "input": asdict(convention)}


def locate_recorded_file(recorded: dict[str, Any], given: str | os.PathLike | None = None) -> Path:
    """The file with the recorded sha256: the given path (which must match), else the first match
    among `$TWIN_ADAFACE_CHECKPOINT`, `pretrained/<recorded name>` beside the code and the
    recorded path."""
    wanted, name = recorded["sha256"], Path(recorded["path"]).name
    if given is not None:
        given = Path(given).expanduser()
        if not given.is_file():
            raise GlobalModelError(f"{given}: global model file not found")
        actual = sha256_of_file(given)
        if actual != wanted:
            raise GlobalModelError(
                f"{given} has sha256 {actual}, but the model was trained with {recorded['path']} (sha256 {wanted}); "
                f"give that file")
        return given.resolve()
    candidates = [Path(os.environ[ADAFACE_CHECKPOINT_ENV]).expanduser()] if os.environ.get(ADAFACE_CHECKPOINT_ENV) else []
    candidates += [PRETRAINED / name, Path(recorded["path"])]
    tried = []
    for candidate in candidates:
        if not candidate.is_file():
            tried.append(f"{candidate} (absent)")
            continue
        actual = sha256_of_file(candidate)
        if actual == wanted:
            return candidate.resolve()
        tried.append(f"{candidate} (sha256 {actual})")
    raise GlobalModelError(
        f"the model was trained with the global model {name} (sha256 {wanted}); no file with that hash at "
        f"{'; '.join(tried)}. Pass its path (--adaface-checkpoint), set {ADAFACE_CHECKPOINT_ENV}, or put it "
        f"into {PRETRAINED}")


class OnnxRecogniser(nn.Module):
    """A frozen ONNX face recogniser run by onnxruntime (CPU), with AdaFace's interface:
    AdaFace input tensors in, (`B×D` unit-length embedding, `B×1` norm) out."""

    def __init__(self, path: str | os.PathLike, convention: InputConvention = INSIGHTFACE_INPUT):
        super().__init__()
        self.path, self.convention = Path(path), convention
        self._start()

    def _start(self) -> None:
        import onnxruntime

        if not self.path.is_file():
            raise GlobalModelError(f"{self.path}: ONNX recogniser not found")
        options = onnxruntime.SessionOptions()
        # Errors only: InsightFace's files declare a batch of 1 for their output, and onnxruntime
        # warns on every larger batch although the graph computes it correctly.
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for a bad file
            raise GlobalModelError(f"{self.path}: not a usable ONNX model ({type(error).__name__}: {error})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [3, ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE]:
            shapes = [i.shape for i in inputs]
            raise GlobalModelError(f"{self.path}: expected one input of shape B×3×112×112, got {shapes}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        probe = self._run(np.zeros((2, 3, ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE), np.float32))
        if probe.ndim != 2 or probe.shape[0] != 2:
            raise GlobalModelError(f"{self.path}: expected a B×D embedding for a batch of 2, got {probe.shape}")
        self.embedding_dim = int(probe.shape[1])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def __getstate__(self) -> dict[str, Any]:  # an onnxruntime session does not pickle: rebuild it
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    @torch.no_grad()
    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`B×3×112×112` AdaFace input tensors → (`B×D` unit-length embedding, `B×1` norm)."""
        batch = from_adaface_input(face.detach().float().cpu(), self.convention).numpy()
        embedding = torch.from_numpy(self._run(np.ascontiguousarray(batch))).to(face.device)
        norm = torch.linalg.vector_norm(embedding, ord=2, dim=1, keepdim=True)
        return embedding / norm, norm

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.convention.describe()}, {self.embedding_dim}-D"
