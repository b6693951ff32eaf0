"""Several processes (GPUs or machines) with `torchrun`, and one process without it.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; the process group is started by
`start()` from a script's `main`, never at import. Without those variables everything
here degrades to a single process, so the same script serves both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cli_errors import EXIT_USAGE, ExpectedError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # the device names scripts accept


class DeviceError(ExpectedError, RuntimeError):
    """A device name that is unknown, or a device this machine does not have."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str | torch.device, local_rank: int) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda` or `cuda:N` as a torch device."""
    if isinstance(preference, torch.device):
        preference = str(preference)
    if DEVICE_PATTERN.fullmatch(preference) is None:
        raise DeviceError(f"device {preference!r} is unknown; choose auto, cpu, cuda or cuda:N")
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {preference!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def start(device_preference: str = "auto") -> Context:
    """Join the process group when launched by torchrun; otherwise a one-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def sum_across(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Element-wise sum over all processes (in place on a copy)."""
    values = values.detach().clone()
    if context.distributed:
        dist.all_reduce(values)
    return values


def gather_rows(local: torch.Tensor, total: int, context: Context) -> torch.Tensor:
    """Reassemble rows that were dealt out round-robin (`rows[rank::world_size]`)."""
    if not context.distributed:
        return local
    per_rank = -(-total // context.world_size)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    result = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for rank, rows in enumerate(gathered):
        count = len(range(rank, total, context.world_size))
        result[rank::context.world_size] = rows[:count]
    return result
