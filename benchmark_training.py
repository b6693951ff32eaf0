"""Print training throughput: triplets/s, part-images/s, time per step (data wait vs compute), peak memory.

    python benchmark_training.py                       # CPU, and CUDA when present
    python benchmark_training.py --devices cuda --batch-size 64 --sizes full --precision bf16
    python benchmark_training.py --devices cuda --sizes full --largest-batch   # doubles the batch until memory runs out
    python benchmark_training.py --devices cuda --sizes full --training-run 2  # whole epochs of run_training
    python benchmark_training.py --sizes full --loader-only --workers 2         # what the loader alone delivers
    python benchmark_training.py --devices cuda --sizes full --compile         # steps through torch.compile

Steps run through the real training code (`train_one_epoch`: loader workers, crop
decoding, augmentation (on the device on CUDA, as training does by default), autocast,
optimiser) on crops written in the extractor's format. "full" is the default model (five
ResNet50 at 224 px, 1152 → 512 → 256); "small" is the demo's (five tiny CNNs at 64 px).
With `--compile`, compilation happens in the untimed warm-up steps. The frozen AdaFace is not part of a step: its
embeddings are cached once per image. On CUDA the share of peak is computed from
about 402 GFLOP per full-size triplet (forward + backward) and the GPU's bf16 peak.
"""

from __future__ import annotations

import argparse
import functools
import sys
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import distributed
from cli_errors import EXIT_USAGE, ExpectedError, cli_main
from synthetic_extraction import write_synthetic_extraction
from train_config import PRECISIONS, TrainConfig
from train_twin_verification import epoch_batches, run_training
from model_runner import autocast_dtype, build_model, grad_scaler, make_loader, on_for_device
from train_twin_verification import train_one_epoch
from triplet_dataset import FaceDataIndex, TripletDataset, Triplets, draw_triplets

SIZES = {"full": dict(part_backbone="resnet50", crop=224), "small": dict(part_backbone="tiny", crop=64)}
FULL_TRIPLET_GFLOP = 402.0
PEAK_BF16_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0}


def repeated_triplets(index: FaceDataIndex, count: int) -> Triplets:
    base = draw_triplets(index, index.persons, "mixed", 0.5, np.random.default_rng(0))
    take = np.arange(count) % len(base)
    return Triplets(base.anchor[take], base.positive[take], base.negative[take], base.twin_negative[take])


class NeedsCudaError(ExpectedError, RuntimeError):
    """An option that only means something on a CUDA GPU was asked for without one."""

    exit_code = EXIT_USAGE


@functools.cache
def synthetic_data(folder: Path, crop: int) -> dict[str, Path]:
    """Crops in the extractor's format, written once per folder and crop size in a run."""
    return write_synthetic_extraction(folder, families=8, images_per_person=4, crop=crop)


def benchmark_config(size: str, device: torch.device, batch_size: int, workers: int, folder: Path,
                     precision: str = "auto", **overrides) -> TrainConfig:
    """A training config of `size` on synthetic crops written into `folder` (once per crop size)."""
    spec = SIZES[size]
    data = synthetic_data(folder / f"data{spec['crop']}", spec["crop"])
    return TrainConfig(**{**dict(adaface_checkpoint="none", part_backbone=spec["part_backbone"], part_weights="none",
                                 batch_size=batch_size, num_workers=workers, progress=False, device=str(device),
                                 precision=precision, output_dir=str(folder / "run"),
                                 **{k: str(v) for k, v in data.items()}), **overrides})


def measure(size: str, device: torch.device, batch_size: int, steps: int, workers: int, folder: Path,
            precision: str = "auto", compiled: bool = False, checkpointing: bool = False) -> dict:
    """Timed training steps; `compiled`: through `torch.compile`, as `--compile` trains;
    `checkpointing`: the part trunks recompute their activations, as `--activation-checkpointing`."""
    config = benchmark_config(size, device, batch_size, workers, folder, precision)
    data = {k: getattr(config, k) for k in ("face_parts_dataset_path", "tensor_dataset_path", "twin_pairs_path")}
    index = FaceDataIndex.load(*(Path(data[k]) for k in ("face_parts_dataset_path", "tensor_dataset_path",
                                                         "twin_pairs_path")))
    context = distributed.Context(device=device)
    model = build_model(config).to(device)
    model.face_parts.set_activation_checkpointing(checkpointing)
    if on_for_device(config.channels_last, device):
        model.face_parts.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = grad_scaler(device, autocast_dtype(config.precision, device))
    cache = torch.randn(len(index.images), 1, 512)
    config = replace(config, augment=True, sampler="triplets", loss="triplet")
    on_device = on_for_device(config.augment_on_device, device)
    loader = lambda count: make_loader(TripletDataset(index, repeated_triplets(index, count * batch_size), cache,
                                                      True, config.seed, 0, augment_on_device=on_device),
                                       batch_size, workers, device)
    stepped = torch.compile(model) if compiled else model
    run = lambda count: train_one_epoch(stepped, optimizer, scheduler, scaler, loader(count), config, context, 0,
                                        None, 0)
    run(2)  # warm-up: allocator, cuDNN autotuning, first loader start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = run(steps)
    step_seconds = batch_size / stats["triplets_per_second"]
    result = {"size": size, "device": str(device), "batch": batch_size, "precision": precision, "compiled": compiled,
              "checkpointing": checkpointing,
              "triplets_per_second": stats["triplets_per_second"],
              "part_images_per_second": stats["part_images_per_second"],
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


def largest_batch(size: str, device: torch.device, start: int, steps: int, workers: int, folder: Path,
                  precision: str, compiled: bool = False) -> dict:
    """Measure at `start`, doubling the batch until the GPU runs out of memory; the largest that ran."""
    if device.type != "cuda":
        raise NeedsCudaError(f"--largest-batch needs a CUDA device (got {device}): it doubles the batch until "
                             "GPU memory runs out")
    best, batch = None, start
    while True:
        try:
            best = measure(size, device, batch, steps, workers, folder, precision, compiled)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if best is None:
                raise
            return {**best, "out_of_memory_at": batch}
        print(f"  batch {batch}: {best['part_images_per_second']:.0f} part-images/s, "
              f"{best['peak_memory_gib']:.1f} GiB", flush=True)
        batch *= 2


def training_run(size: str, device: torch.device, batch_size: int, workers: int, folder: Path, precision: str,
                 epochs: int, compiled: bool = False) -> dict:
    """`epochs` whole epochs of `run_training` (validation and checkpoints included) on synthetic crops."""
    config = benchmark_config(size, device, batch_size, workers, folder, precision, num_epochs=epochs,
                              output_dir=str(folder / f"training_run_{size}"), early_stopping_patience=0,
                              compile=compiled)
    started = time.perf_counter()
    history = run_training(config)["history"]
    return {"size": size, "device": str(device), "epochs": len(history), "seconds": time.perf_counter() - started,
            "part_images_per_second": history[-1]["part_images_per_second"], "train_loss": history[-1]["train_loss"]}


def loader_throughput(size: str, batch_size: int, workers: int, folder: Path, epochs: int = 3) -> dict:
    """Part-images per second that the training loader alone delivers (default sampler, decoding
    and augmentation included, no model), over `epochs` epochs after a warm-up batch."""
    config = benchmark_config(size, torch.device("cpu"), batch_size, workers, folder)
    index = FaceDataIndex.load(*(Path(getattr(config, k)) for k in ("face_parts_dataset_path", "tensor_dataset_path",
                                                                     "twin_pairs_path")))
    cache = torch.randn(len(index.images), 1, 512)
    context = distributed.Context(device=torch.device("cpu"))
    part_images, seconds = 0, 0.0
    for epoch in range(epochs):
        batches = iter(epoch_batches(index, index.persons, cache, config, context, epoch)[0])
        next(batches)  # warm-up: loader processes start, first files opened
        started = time.perf_counter()
        for batch in batches:
            parts = batch["parts"] if "parts" in batch else batch["anchor_parts"]
            part_images += parts.shape[0] * parts.shape[1] * (1 if "parts" in batch else 3)
        seconds += time.perf_counter() - started
    rate = part_images / max(seconds, 1e-9)
    return {"size": size, "workers": workers, "part_images_per_second": rate,
            "per_process": rate / max(1, workers), "part_images": part_images}


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "full"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 4 on CPU, 30 on CUDA)")
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: 1 CPU, 8 CUDA)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision, as in training (default: auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--largest-batch", action="store_true",
                        help="CUDA only: double the batch from --batch-size until memory runs out; report the largest")
    parser.add_argument("--loader-only", action="store_true",
                        help="time the training loader alone (decoding and augmentation, no model): part-images/s")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile, as training's --compile (timed steps, --largest-batch and "
                             "--training-run; compilation is in the warm-up, or in the first epoch of a run)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="timed steps with the part trunks' activations recomputed in the backward pass, as "
                             "training's --activation-checkpointing (less memory, more compute)")
    parser.add_argument("--training-run", type=int, metavar="EPOCHS",
                        help="instead of timed steps, run this many whole epochs of training (validation and "
                             "checkpoints included) and report their time")
    args = parser.parse_args(argv)
    if args.training_run is not None and args.training_run < 1:
        parser.error("--training-run must be at least 1")
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads"
          + (f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    with tempfile.TemporaryDirectory() as folder:
        for device_name, size in ((d, s) for d in devices for s in args.sizes):
            device = torch.device(device_name)
            cuda = device.type == "cuda"
            started = time.perf_counter()
            batch = args.batch_size or (64 if cuda else 8)
            steps = args.steps or (30 if cuda else 4)
            workers = args.workers if args.workers is not None else (8 if cuda else 1)
            if args.loader_only:
                run = loader_throughput(size, batch, workers, Path(folder))
                print(f"{size:5s} loader alone, {workers} loader process(es): {run['part_images_per_second']:.0f} "
                      f"part-images/s ({run['per_process']:.0f} part-images/s per core, one loader process per "
                      f"core) over {run['part_images']} part-images")
                continue
            if args.training_run is not None:
                run = training_run(size, device, batch, workers, Path(folder), args.precision, args.training_run,
                                   args.compile)
                print(f"{size:5s} {run['device']:6s} training run: {run['epochs']} epochs in {run['seconds']:.1f} s, "
                      f"{run['part_images_per_second']:.0f} part-images/s in the last, train loss "
                      f"{run['train_loss']:.4f}")
                continue
            if args.largest_batch:
                result = largest_batch(size, device, batch, steps, workers, Path(folder), args.precision,
                                       args.compile)
            else:
                result = measure(size, device, batch, steps, workers, Path(folder), args.precision, args.compile,
                                 args.activation_checkpointing)
            share = f", {100 * result['share_of_peak']:.1f}% of bf16 peak" if "share_of_peak" in result else ""
            limit = f" (out of memory at {result['out_of_memory_at']})" if "out_of_memory_at" in result else ""
            compiled = (" compiled" if result["compiled"] else "") + (" activation-checkpointed"
                                                                       if result["checkpointing"] else "")
            print(f"{size:5s} {result['device']:6s} {result['precision']}{compiled} batch {result['batch']:3d}{limit}: "
                  f"{result['triplets_per_second']:8.1f} triplets/s, {result['part_images_per_second']:8.0f} "
                  f"part-images/s | step {result['step_ms']:8.1f} ms = data wait {result['data_wait_ms']:7.1f} + "
                  f"compute {result['compute_ms']:8.1f} | peak memory {result['peak_memory_gib']:.2f} GiB{share} "
                  f"({time.perf_counter() - started:.0f} s)")

    return 0


if __name__ == "__main__":
    sys.exit(main())
