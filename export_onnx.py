"""Export the twin embedding model to ONNX as two graphs, and check both against PyTorch.

    python export_onnx.py --checkpoint best.pth --output-dir onnx/ [--adaface-checkpoint P] [--opset N]

    twin_global.onnx  face B×3×112×112 (BGR, (x/255−0.5)/0.5: `net.adaface_input_tensor`)
                      → feature B×512 (unit length), norm B×1 (its L2 norm before normalising)
    twin_local.onnx   one input per face region the checkpoint records, named after it (the five
                      parts left_eye, right_eye, nose, mouth, chin by default), B×3×S×S (RGB,
                      ImageNet mean/std: `face_parts_model.part_encoder_input`)
                      + global_embedding B×512 (`feature`)
                      → embedding B×D (unit length; cosine similarity ≥ threshold: same person)
    twin_onnx.json    crop size, regions, threshold, global branch and the input contracts

Two graphs because the global branch is the frozen AdaFace: a deployment can run it once
per photo and reuse its feature, as training does. The batch dimension is dynamic.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), the default
and recommended one since torch 2.9; it takes the dynamic batch as a `torch.export.Dim`.
The TorchScript-based exporter (`dynamo=False`) still runs in torch 2.14 but warns that
it is deprecated and due for removal, so it is not used.

Each graph is run with onnxruntime (CPU) on the same random inputs as PyTorch, for
batches of 1 and 3; the run fails (exit 1) when a difference exceeds `--tolerance`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from atomic_files import write_bytes_atomic, write_json_atomic
from combined_model import CheckpointMismatchError, TwinVerificationModel
from face_parts_model import part_encoder_input
from net import ADAFACE_EMBEDDING_DIM, ADAFACE_INPUT_SIZE, AdaFaceCheckpointError

GLOBAL_GRAPH, LOCAL_GRAPH, METADATA_FILE = "twin_global.onnx", "twin_local.onnx", "twin_onnx.json"
GLOBAL_INPUTS, GLOBAL_OUTPUTS = ("face",), ("feature", "norm")
LOCAL_OUTPUTS = ("embedding",)
DEFAULT_TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)
EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1


class OnnxCheckError(RuntimeError):
    """An exported graph that does not reproduce PyTorch's outputs."""


class GlobalBranch(nn.Module):
    """AdaFace alone: `face` → (`feature`, `norm`)."""

    def __init__(self, model: TwinVerificationModel):
        super().__init__()
        self.adaface = model.adaface

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adaface(face)


def local_inputs(model: TwinVerificationModel) -> tuple[str, ...]:
    """The local graph's input names: the model's regions in order, then `global_embedding`."""
    return (*model.config.regions, "global_embedding")


class LocalBranch(nn.Module):
    """Part encoders + projection: one normalised tensor per region and AdaFace's feature → embedding.

    Inputs are positional, in `local_inputs(model)` order, so one graph fits any region list.
    """

    def __init__(self, model: TwinVerificationModel):
        super().__init__()
        self.model = model
        self.regions = model.config.regions

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *crops, global_embedding = inputs
        parts = dict(zip(self.regions, crops))
        return self.model(None, parts, global_embedding=global_embedding).embedding


def random_inputs(batch: int, crop_size: int, generator: torch.Generator,
                  regions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Inputs of both graphs under their contracts: face in [−1, 1], parts from random uint8 crops,
    a unit-length global embedding."""
    inputs = {"face": torch.rand(batch, 3, ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE, generator=generator) * 2 - 1}
    for part in regions:
        crops = torch.randint(0, 256, (batch, 3, crop_size, crop_size), generator=generator, dtype=torch.uint8)
        inputs[part] = part_encoder_input(crops)
    inputs["global_embedding"] = nn.functional.normalize(
        torch.randn(batch, ADAFACE_EMBEDDING_DIM, generator=generator), dim=1)
    return inputs


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: Sequence[str],
            output_names: Sequence[str], path: Path, opset: int | None, variadic: bool = False) -> None:
    """`variadic`: the module's forward takes `*inputs` (torch.export wants their shapes as one group)."""
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in args)
    with warnings.catch_warnings():
        # Every input shares the one batch dimension, about which the exporter warns once per input.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(module, args, input_names=list(input_names), output_names=list(output_names),
                                    dynamic_shapes=(shapes,) if variadic else shapes, opset_version=opset,
                                    dynamo=True, verbose=False)
    # Serialised in memory (weights inside: the models are well under protobuf's 2 GB) and
    # written to a temporary name beside `path`, then renamed: never half a graph on disk.
    write_bytes_atomic(path, program.model_proto.SerializeToString())


def export_onnx(model: TwinVerificationModel, crop_size: int, output_dir: str | Path,
                opset: int | None = None) -> dict[str, Path]:
    """Write the global and local graphs of a CPU model (put in eval mode) to `output_dir`;
    returns `{"global": path, "local": path}`. `opset` None: the exporter's default."""
    output_dir = Path(output_dir)
    example = random_inputs(EXAMPLE_BATCH, crop_size, torch.Generator().manual_seed(0), model.config.regions)
    paths = {"global": output_dir / GLOBAL_GRAPH, "local": output_dir / LOCAL_GRAPH}
    _export(GlobalBranch(model).eval(), tuple(example[k] for k in GLOBAL_INPUTS), GLOBAL_INPUTS, GLOBAL_OUTPUTS,
            paths["global"], opset)
    names = local_inputs(model)
    _export(LocalBranch(model).eval(), tuple(example[k] for k in names), names, LOCAL_OUTPUTS, paths["local"], opset,
            variadic=True)
    return paths


def _max_difference(onnx_value: np.ndarray, torch_value: torch.Tensor) -> float:
    if onnx_value.shape != tuple(torch_value.shape):
        raise OnnxCheckError(f"ONNX output shape {onnx_value.shape} differs from PyTorch's {tuple(torch_value.shape)}")
    return float(np.abs(onnx_value - torch_value.numpy()).max())


@torch.no_grad()
def check_onnx(model: TwinVerificationModel, paths: dict[str, Path], crop_size: int,
               batch_sizes: Sequence[int] = CHECK_BATCH_SIZES, seed: int = 0) -> dict[str, float]:
    """Largest differences between onnxruntime (CPU) and PyTorch on the same random inputs:
    absolute for `feature` and `embedding`, relative for `norm` (whose scale is arbitrary),
    and `end_to_end` (both graphs chained against the whole PyTorch model)."""
    import onnxruntime

    model.eval()
    sessions = {name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    generator = torch.Generator().manual_seed(seed)
    worst = dict.fromkeys(("feature", "norm_relative", "embedding", "end_to_end"), 0.0)
    names = local_inputs(model)
    for batch in batch_sizes:
        inputs = random_inputs(batch, crop_size, generator, model.config.regions)
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        feature, norm = sessions["global"].run(list(GLOBAL_OUTPUTS), {k: feeds[k] for k in GLOBAL_INPUTS})
        embedding, = sessions["local"].run(list(LOCAL_OUTPUTS), {k: feeds[k] for k in names})
        feeds["global_embedding"] = feature
        chained, = sessions["local"].run(list(LOCAL_OUTPUTS), {k: feeds[k] for k in names})

        torch_feature, torch_norm = model.adaface(inputs["face"])
        parts = {part: inputs[part] for part in model.config.regions}
        differences = {
            "feature": _max_difference(feature, torch_feature),
            "norm_relative": _max_difference(norm, torch_norm) / float(torch_norm.abs().min()),
            "embedding": _max_difference(embedding, model(None, parts, inputs["global_embedding"]).embedding),
            "end_to_end": _max_difference(chained, model(inputs["face"], parts).embedding),
        }
        worst = {name: max(worst[name], differences[name]) for name in worst}
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pth from training")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--adaface-checkpoint", help="where the AdaFace file is, if not where training saw it")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest difference from PyTorch accepted (default %(default)g)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from inference import load_twin_checkpoint

    args = build_parser().parse_args(argv)
    try:
        model, info = load_twin_checkpoint(args.checkpoint, args.adaface_checkpoint, "cpu")
    except (OSError, CheckpointMismatchError, AdaFaceCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    crop_size = info["part_crop_size"]
    paths = export_onnx(model, crop_size, args.output_dir, args.opset)
    differences = check_onnx(model, paths, crop_size)
    for name, value in differences.items():
        print(f"max difference {name:<14} {value:.3g}")
    too_large = {name: value for name, value in differences.items() if not value <= args.tolerance}
    if too_large:
        (args.output_dir / METADATA_FILE).unlink(missing_ok=True)  # it vouches for the graphs beside it
        details = ", ".join(f"{name} {value:.3g}" for name, value in too_large.items())
        print(f"error: ONNX outputs differ from PyTorch beyond {args.tolerance:g} ({details}); "
              f"do not deploy {args.output_dir}", file=sys.stderr)
        return 1
    write_json_atomic(args.output_dir / METADATA_FILE, {
        "global_graph": GLOBAL_GRAPH, "local_graph": LOCAL_GRAPH, "part_crop_size": crop_size,
        "regions": list(model.config.regions),
        "threshold": info.get("threshold"), "threshold_rule": info.get("threshold_rule"),
        "global_branch": info.get("global_branch"), "embedding_dim": model.config.embedding_dim,
        "face_input": "BGR, (x/255 - 0.5)/0.5, Bx3x112x112 (net.adaface_input_tensor)",
        "part_inputs": "RGB, x/255 normalised by ImageNet mean/std, Bx3xSxS (part_encoder_input)",
        "max_differences": differences})
    print(f"ONNX graphs within {args.tolerance:g} of PyTorch: {paths['global']}, {paths['local']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
