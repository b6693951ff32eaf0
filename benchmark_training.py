"""Print training throughput: triplets/s, time per step (data wait vs compute), peak memory.

    python benchmark_training.py                       # CPU, and CUDA when present
    python benchmark_training.py --devices cuda --batch-size 64 --sizes full

Steps run through the real training code (`train_one_epoch`: loader workers, crop
decoding, augmentation, autocast, optimiser) on crops written in the extractor's
format. "full" is the default model (five ResNet50 at 224 px, 1152 → 512 → 256); "small"
is the demo's (five tiny CNNs at 64 px). The frozen AdaFace is not part of a step: its
embeddings are cached once per image. On CUDA the share of peak is computed from
about 402 GFLOP per full-size triplet (forward + backward) and the GPU's bf16 peak.
"""

from __future__ import annotations

import argparse
import sys
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import distributed
from cli_errors import cli_main
from synthetic_extraction import write_synthetic_extraction
from train_config import TrainConfig
from model_runner import autocast_dtype, build_model, grad_scaler, make_loader, uses_channels_last
from train_twin_verification import train_one_epoch
from triplet_dataset import FaceDataIndex, TripletDataset, Triplets, draw_triplets

SIZES = {"full": dict(part_backbone="resnet50", crop=224), "small": dict(part_backbone="tiny", crop=64)}
FULL_TRIPLET_GFLOP = 402.0
PEAK_BF16_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0}


def repeated_triplets(index: FaceDataIndex, count: int) -> Triplets:
    base = draw_triplets(index, index.persons, "mixed", 0.5, np.random.default_rng(0))
    take = np.arange(count) % len(base)
    return Triplets(base.anchor[take], base.positive[take], base.negative[take], base.twin_negative[take])


def measure(size: str, device: torch.device, batch_size: int, steps: int, workers: int, folder: Path) -> dict:
    spec = SIZES[size]
    data = write_synthetic_extraction(folder / f"data{spec['crop']}", families=8, images_per_person=4,
                                      crop=spec["crop"])
    config = TrainConfig(adaface_checkpoint="none", part_backbone=spec["part_backbone"], part_weights="none",
                         batch_size=batch_size, num_workers=workers, progress=False, device=str(device),
                         output_dir=str(folder / "run"), **{k: str(v) for k, v in data.items()})
    index = FaceDataIndex.load(*(Path(data[k]) for k in ("face_parts_dataset_path", "tensor_dataset_path",
                                                         "twin_pairs_path")))
    context = distributed.Context(device=device)
    model = build_model(config).to(device)
    if uses_channels_last(config.channels_last, device):
        model.face_parts.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = grad_scaler(device, autocast_dtype(config.precision, device))
    cache = torch.randn(len(index.images), 1, 512)
    config = replace(config, augment=True, sampler="triplets", loss="triplet")
    loader = lambda count: make_loader(TripletDataset(index, repeated_triplets(index, count * batch_size), cache,
                                                      True, config.seed, 0), batch_size, workers, device)
    run = lambda count: train_one_epoch(model, optimizer, scheduler, scaler, loader(count), config, context, 0,
                                        None, 0)
    run(2)  # warm-up: allocator, cuDNN autotuning, first loader start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = run(steps)
    step_seconds = batch_size / stats["triplets_per_second"]
    result = {"size": size, "device": str(device), "batch": batch_size, "triplets_per_second": stats["triplets_per_second"],
              "step_ms": 1000 * step_seconds, "data_wait_ms": 1000 * step_seconds * stats["data_wait_fraction"],
              "compute_ms": 1000 * step_seconds * (1 - stats["data_wait_fraction"])}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if size == "full" and peak:
            result["share_of_peak"] = stats["triplets_per_second"] * FULL_TRIPLET_GFLOP / (peak * 1000)
    else:
        result["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # process peak RSS
    return result


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 4 on CPU, 30 on CUDA)")
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: 1 CPU, 8 CUDA)")
    args = parser.parse_args(argv)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads"
          + (f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    with tempfile.TemporaryDirectory() as folder:
        for device_name, size in ((d, s) for d in devices for s in args.sizes):
            device = torch.device(device_name)
            cuda = device.type == "cuda"
            started = time.perf_counter()
            result = measure(size, device, args.batch_size or (64 if cuda else 8), args.steps or (30 if cuda else 4),
                             args.workers if args.workers is not None else (8 if cuda else 1), Path(folder))
            share = f", {100 * result['share_of_peak']:.1f}% of bf16 peak" if "share_of_peak" in result else ""
            print(f"{size:5s} {result['device']:6s} batch {result['batch']:3d}: {result['triplets_per_second']:8.1f} "
                  f"triplets/s | step {result['step_ms']:8.1f} ms = data wait {result['data_wait_ms']:7.1f} + compute "
                  f"{result['compute_ms']:8.1f} | peak memory {result['peak_memory_gib']:.2f} GiB{share} "
                  f"({time.perf_counter() - started:.0f} s)")

    return 0


if __name__ == "__main__":
    sys.exit(main())
