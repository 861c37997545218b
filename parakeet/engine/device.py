"""Device facts shared by every model of the engine: the precision setting's dtype, the /health device record, and
the one wrapper that turns torch's out-of-memory error into the pipeline's `DeviceOutOfMemory`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import torch

from parakeet.core.engine import CPU_DEVICE, DeviceInfo
from parakeet.core.errors import DeviceOutOfMemory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Map the `precision` setting ("auto", "fp32", "bf16", "fp16") to a dtype: auto -> bf16 on CUDA, fp32 on CPU.

    Raises:
        KeyError: an unknown precision (the settings validate it first).
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[precision]


@contextlib.contextmanager
def out_of_memory_as_domain_error(device: torch.device, message: str) -> Iterator[None]:
    """Run a piece of device work; `torch.OutOfMemoryError` inside becomes `DeviceOutOfMemory(message)` after the
    CUDA cache is emptied, so that the caller (the batcher, the diarization queue) can split the batch and retry.

    Raises:
        DeviceOutOfMemory: the work did not fit on `device`.
    """
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise DeviceOutOfMemory(message) from exc


def pinned_cuda_device(device: torch.device) -> torch.device:
    """Make `device` this thread's current CUDA device and return it with its index ("cuda" alone gets the current
    one: `torch.cuda.set_device` wants an index, seen with torch 2.11). A CPU device is returned as it is."""
    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def device_info(device: torch.device, cuda_graphs: bool, cuda_graphs_reason: str) -> DeviceInfo:
    """GPU index, name and memory (bytes, read now) and the decoder's CUDA graphs, for /health; the CPU has name
    "cpu" and no memory figures."""
    if device.type != "cuda":
        return replace(CPU_DEVICE, cuda_graphs_reason=cuda_graphs_reason)
    free, total = torch.cuda.mem_get_info(device)
    return DeviceInfo(
        type="cuda",
        index=device.index,
        name=torch.cuda.get_device_name(device),
        memory_used_bytes=int(total - free),
        memory_total_bytes=int(total),
        cuda_graphs=cuda_graphs,
        cuda_graphs_reason=cuda_graphs_reason,
    )
