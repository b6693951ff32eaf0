"""Code paths that only a GPU run takes, tested with CPU stand-ins (`meta` tensors, patched torch.cuda)."""


import pytest
import torch

import distributed
import model_runner as runner
import train_twin_verification as train
from conftest import tiny_train_config


@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_resume_on_another_device_loads_to_cpu_and_moves_the_states(synthetic_data, tmp_path, monkeypatch):
    """A run resumed on a device other than the CPU (here `meta`, standing in for CUDA) reads
    latest.pth to the CPU, restores the CPU RNG from it, and lets model and optimiser move
    their states to that device."""
    config = tiny_train_config(synthetic_data, tmp_path / "run", num_epochs=1)
    assert train.run_training(config)["finished"]
    load_locations, optimiser_devices = [], set()
    real_load, real_optimiser_load = torch.load, torch.optim.AdamW.load_state_dict

    def recording_load(path, *args, map_location=None, **kwargs):
        load_locations.append(map_location)
        return real_load(path, *args, map_location=map_location, **kwargs)

    def recording_optimiser_load(optimiser, state_dict):
        real_optimiser_load(optimiser, state_dict)
        optimiser_devices.update(v.device.type for s in optimiser.state.values() for v in s.values()
                                 if torch.is_tensor(v) and v.dim() > 0)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", recording_optimiser_load)
    state = train.run_training(config, distributed.Context(device=torch.device("meta")))
    assert state["epoch"] == 1 and state["finished"]
    assert "cpu" in [str(location) for location in load_locations]
    assert optimiser_devices == {"meta"}  # exp_avg and exp_avg_sq followed the parameters


def test_auto_precision_uses_native_bf16_only_and_scales_fp16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # A GPU that emulates bf16 (e.g. a V100 or T4): supported only when emulation counts.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    dtype = runner.autocast_dtype("auto", cuda)
    assert dtype == torch.float16
    assert runner.grad_scaler(cuda, dtype).is_enabled()
    # A GPU with native bf16 (A100, H100): bf16, and no loss scaling.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    dtype = runner.autocast_dtype("auto", cuda)
    assert dtype == torch.bfloat16 and not runner.grad_scaler(cuda, dtype).is_enabled()
    assert runner.autocast_dtype("auto", torch.device("cpu")) is None
    assert not runner.grad_scaler(torch.device("cpu"), None).is_enabled()


@pytest.mark.parametrize("triplets", [1, 7, 32, 33, 34, 35, 64, 101])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_steps_per_epoch_is_what_each_process_runs(triplets, world_size, batch_size):
    counts = {len(range(0, len(train.rank_positions(triplets, rank, world_size)), batch_size))
              for rank in range(world_size)}
    assert counts == {train.epoch_steps(triplets, world_size, batch_size)}


def test_steps_per_epoch_of_the_reported_case():
    assert train.epoch_steps(33, 2, 4) == 4  # 16 triplets per process
