"""Export the twin embedding model to ONNX as two graphs, and check both against PyTorch.

    python export_onnx.py --checkpoint best.pth --output-dir onnx/ [--adaface-checkpoint P] [--opset N]

    twin_global.onnx  face B×3×112×112 (BGR, (x/255−0.5)/0.5: `net.adaface_input_tensor`)
                      → feature B×G (unit length), norm B×1 (its L2 norm before normalising)
    twin_local.onnx   one input per face region the checkpoint records, named after it (the five
                      parts left_eye, right_eye, nose, mouth, chin by default), B×3×S×S (RGB,
                      ImageNet mean/std: `face_parts_model.part_encoder_input`)
                      + global_embedding B×G (`feature`)
                      → embedding B×D (unit length; the checkpoint's decision embedding: the part
                        embeddings, D = regions × part size, the projection's, or both side by
                        side, D = the sum; a pair is the
                        same person when its cosine similarity ≥ threshold and the global
                        features' similarity ≥ the recogniser gate)
    twin_onnx.json    crop size, regions, threshold, recogniser gate, global model and the input contracts

Two graphs because the global branch is frozen: a deployment can run it once per photo
and reuse its feature, as training does. The batch dimension is dynamic. When the global
model is an ONNX recogniser, `twin_global.onnx` is that file's graph with the input
conversion in front (AdaFace's tensor → the recogniser's colour order and scaling) and the
normalisation behind, so both kinds of model share one face-input contract.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), the default
and recommended one since torch 2.9; it takes the dynamic batch as a `torch.export.Dim`.
The TorchScript-based exporter (`dynamo=False`) still runs in torch 2.14 but warns that
it is deprecated and due for removal, so it is not used.

Each graph is run with onnxruntime (CPU) on the same random inputs as PyTorch, for
batches of 1 and 3; the run fails (exit 1) when a difference exceeds `--tolerance` or is NaN
(weights that hold NaN or infinity are refused before export).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from atomic_files import write_bytes_atomic, write_json_atomic
from cli_errors import ExpectedError, cli_main
from combined_model import TwinVerificationModel
from face_parts_model import part_encoder_input
from global_branch import ADAFACE_INPUT, InputConvention, OnnxRecogniser
from net import ADAFACE_INPUT_SIZE

GLOBAL_GRAPH, LOCAL_GRAPH, METADATA_FILE = "twin_global.onnx", "twin_local.onnx", "twin_onnx.json"
GLOBAL_INPUTS, GLOBAL_OUTPUTS = ("face",), ("feature", "norm")
LOCAL_OUTPUTS = ("embedding",)
DEFAULT_TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)
EXAMPLE_BATCH = 2  # torch.export specialises a dimension whose example size is 0 or 1


class OnnxCheckError(ExpectedError, RuntimeError):
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
    """Part encoders (+ projection): one normalised tensor per region and the global feature → the compared embedding.

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


def random_inputs(batch: int, crop_size: int, generator: torch.Generator, global_dim: int,
                  regions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Inputs of both graphs under their contracts: face in [−1, 1], parts from random uint8 crops,
    a unit-length global embedding."""
    inputs = {"face": torch.rand(batch, 3, ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE, generator=generator) * 2 - 1}
    for part in regions:
        crops = torch.randint(0, 256, (batch, 3, crop_size, crop_size), generator=generator, dtype=torch.uint8)
        inputs[part] = part_encoder_input(crops)
    inputs["global_embedding"] = nn.functional.normalize(
        torch.randn(batch, global_dim, generator=generator), dim=1)
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


def _conversion_graph(recogniser, opsets, convention: InputConvention, input_name: str, output_name: str):
    """`face` (AdaFace's BGR `(x − 127.5)/127.5`) → the recogniser's input, as ONNX nodes."""
    from onnx import TensorProto, helper

    face_shape = ["batch", 3, ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE]
    # pixels = face·127.5 + 127.5 (BGR), then (pixels − mean)/std: one multiply and one add.
    scale = ADAFACE_INPUT.std / convention.std
    shift = (ADAFACE_INPUT.mean - convention.mean) / convention.std
    initialisers = [helper.make_tensor("conversion_scale", TensorProto.FLOAT, [], [scale]),
                    helper.make_tensor("conversion_shift", TensorProto.FLOAT, [], [shift])]
    nodes, source = [], "face"
    if convention.colour == "rgb":
        initialisers.append(helper.make_tensor("bgr_to_rgb", TensorProto.INT64, [3], [2, 1, 0]))
        nodes.append(helper.make_node("Gather", ["face", "bgr_to_rgb"], ["face_rgb"], axis=1))
        source = "face_rgb"
    nodes += [helper.make_node("Mul", [source, "conversion_scale"], ["face_scaled"]),
              helper.make_node("Add", ["face_scaled", "conversion_shift"], [output_name])]
    graph = helper.make_graph(nodes, "input_conversion",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, face_shape)],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, face_shape)],
                              initialisers)
    return helper.make_model(graph, opset_imports=opsets, ir_version=recogniser.ir_version)


def _normalisation_graph(recogniser, opsets, dim: int, input_name: str):
    """raw `B×G` embedding → `feature` (unit length) and `norm` (`B×1`), with opset-stable nodes."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", [input_name, input_name], ["squares"]),
             helper.make_node("MatMul", ["squares", "ones"], ["squared_norm"]),
             helper.make_node("Sqrt", ["squared_norm"], ["norm"]),
             helper.make_node("Div", [input_name, "norm"], ["feature"])]
    graph = helper.make_graph(nodes, "normalisation",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("feature", TensorProto.FLOAT, ["batch", dim]),
                               helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["batch", 1])],
                              [helper.make_tensor("ones", TensorProto.FLOAT, [dim, 1], [1.0] * dim)])
    return helper.make_model(graph, opset_imports=opsets, ir_version=recogniser.ir_version)


def onnx_recogniser_global_graph(recogniser: OnnxRecogniser):
    """The global graph of an ONNX recogniser: conversion → the recogniser's own graph → normalisation."""
    import onnx
    from onnx import compose

    original = onnx.load(str(recogniser.path))
    opsets = list(original.opset_import)
    prefix = "recogniser/"
    converted = compose.merge_models(
        _conversion_graph(original, opsets, recogniser.convention, "face", "recogniser_input"), original,
        io_map=[("recogniser_input", recogniser.input_name)], prefix2=prefix)
    return compose.merge_models(
        converted, _normalisation_graph(original, opsets, recogniser.embedding_dim, "raw_embedding"),
        io_map=[(prefix + recogniser.output_name, "raw_embedding")])


def export_onnx(model: TwinVerificationModel, crop_size: int, output_dir: str | Path,
                opset: int | None = None) -> dict[str, Path]:
    """Write the global and local graphs of a CPU model (put in eval mode) to `output_dir`;
    returns `{"global": path, "local": path}`. `opset` None: the exporter's default."""
    output_dir = Path(output_dir)
    example = random_inputs(EXAMPLE_BATCH, crop_size, torch.Generator().manual_seed(0), model.global_dim,
                            model.config.regions)
    paths = {"global": output_dir / GLOBAL_GRAPH, "local": output_dir / LOCAL_GRAPH}
    if isinstance(model.adaface, OnnxRecogniser):  # already a graph: put the input contract around it
        output_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(paths["global"], onnx_recogniser_global_graph(model.adaface).SerializeToString())
    else:
        _export(GlobalBranch(model).eval(), tuple(example[k] for k in GLOBAL_INPUTS), GLOBAL_INPUTS, GLOBAL_OUTPUTS,
                paths["global"], opset)
    names = local_inputs(model)
    _export(LocalBranch(model).eval(), tuple(example[k] for k in names), names, LOCAL_OUTPUTS, paths["local"], opset,
            variadic=True)
    return paths


def worse(a: float, b: float) -> float:
    """The larger difference, where NaN is the worst of all (`max(0.0, nan)` would be 0.0)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


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
        inputs = random_inputs(batch, crop_size, generator, model.global_dim, model.config.regions)
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
        worst = {name: worse(worst[name], differences[name]) for name in worst}
    return worst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pth from training")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--adaface-checkpoint", help="where the global model file (AdaFace .ckpt or .onnx) is, if "
                        "not where training saw it; its sha256 must match")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest difference from PyTorch accepted (default %(default)g)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of an AdaFace file that weights-only loading refuses "
                             "(only for a file from a source you trust: it can run code)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    from inference import load_twin_checkpoint

    args = build_parser().parse_args(argv)
    if not args.tolerance >= 0:
        build_parser().error("--tolerance must be a number ≥ 0")
    model, info = load_twin_checkpoint(args.checkpoint, args.adaface_checkpoint, "cpu", args.trust_checkpoint)
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
        # same person only if, too, the global graph's features have at least this cosine similarity
        "recogniser_gate": info.get("recogniser_gate"),
        # the decision score: (1 - w) * cosine of the local graph's embeddings + w * cosine of the global features
        "recogniser_weight": info.get("recogniser_weight") or 0.0,
        # then (1 - m) * that + m * the mark similarity, which no graph computes: it warps each photo's
        # skin face onto the checkpoint's canonical face (mark_comparison.py, inference.TwinVerifier);
        # with m > 0 the threshold above holds only for scores that include it
        "mark_weight": info.get("mark_weight") or 0.0,
        "global_branch": info.get("global_branch"), "global_model": model.frozen_files()["global"],
        "global_embedding_dim": model.global_dim, "embedding_dim": model.decision_dim,
        "decision_embedding": model.config.decision_embedding,  # what the local graph's embedding is
        "face_input": "BGR, (x/255 - 0.5)/0.5, Bx3x112x112 (net.adaface_input_tensor)",
        "part_inputs": "RGB, x/255 normalised by ImageNet mean/std, Bx3xSxS (part_encoder_input)",
        "max_differences": differences})
    print(f"ONNX graphs within {args.tolerance:g} of PyTorch: {paths['global']}, {paths['local']}")
    if info.get("mark_weight"):
        print(f"note: the decision gives the mark comparison a weight of {info['mark_weight']:.2f}, which the graphs "
              "do not compute (mark_comparison.py does, as inference.TwinVerifier); the stored threshold includes it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
