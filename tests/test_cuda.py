"""Checks that need a CUDA GPU (`pytest -m cuda`, run by `scripts/gpu_check.sh`); skipped without one."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import device_augment as da
import model_runner as runner
from conftest import one_epoch_setup, tiny_train_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]


def test_device_augmentation_on_cuda_matches_the_cpu():
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 3, 224, 224), dtype=np.uint8))
    params = torch.from_numpy(da.draw_parameters(np.random.default_rng(1), len(crops)))
    on_cpu = da.augment_batch(crops, params)
    on_gpu = da.augment_batch(crops.cuda(), params).cpu()
    difference = (on_cpu.int() - on_gpu.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3  # rounding at .5 only


def test_auto_precision_is_native_bf16_or_fp16():
    dtype = runner.autocast_dtype("auto", torch.device("cuda"))
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert dtype == (torch.bfloat16 if native else torch.float16)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_resumes_on_cuda_exactly(synthetic_data, tmp_path, checkpointing):
    from train_twin_verification import run_training

    config = tiny_train_config(synthetic_data, tmp_path / "straight", num_epochs=2, device="cuda",
                               precision="bf16", activation_checkpointing=checkpointing)
    straight = run_training(config)
    interrupted = replace(config, output_dir=str(tmp_path / "resumed"), stop_after_epochs=1)
    assert run_training(interrupted)["epoch"] == 1
    resumed = run_training(replace(interrupted, stop_after_epochs=0))
    assert resumed["epoch"] == 2
    assert all(np.isfinite(r["train_loss"]) for r in resumed["history"])
    assert [r["train_loss"] for r in straight["history"]] == pytest.approx(
        [r["train_loss"] for r in resumed["history"]], rel=1e-3)


def test_an_epoch_waits_for_the_gpu_as_often_however_many_steps_it_has(synthetic_data, tmp_path):
    """CUDA's own count of synchronising calls (`set_sync_debug_mode`) is the same over an epoch of
    6 steps as over one of 2: only log steps and the epoch's end read values back. Device
    augmentation on, as CUDA's default."""
    import warnings

    import train_twin_verification as train

    config, model, optimizer, scheduler, scaler, loader = one_epoch_setup(
        synthetic_data, tmp_path, "cuda", precision="bf16", log_every_steps=1000)
    batch = next(iter(loader))
    assert "augment_params" in batch and batch["parts"].is_pinned()
    context = train.distributed.Context(device=torch.device("cuda"))
    epoch = lambda steps: train.train_one_epoch(model, optimizer, scheduler, scaler, [batch] * steps, config,
                                                context, 0, None, 0)
    epoch(2)  # warm-up: cuBLAS, cuDNN and the allocator start
    counts = []
    for steps in (2, 6):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                epoch(steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(warning.message) for warning in caught))
    assert counts[0] == counts[1], counts
