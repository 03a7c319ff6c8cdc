"""Copies of accumulator tensors into host memory, as capture hands statistics to the store.

From a CUDA device, each tensor is copied into page-locked host memory, which the copy engine writes
directly, where a copy into ordinary (pageable) memory goes through a driver staging buffer and runs
several times slower; and every copy of one hand-over is queued before a single wait for the device. On
the CPU nothing is copied: the result is the tensor itself, as `.cpu()` gives it.
"""

from __future__ import annotations

import numpy as np
import torch


def host_tensors(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """CPU tensors holding the values of `tensors`, with one wait for the device for all of them."""
    hosts, streams = [], {}
    for tensor in tensors:
        if tensor.device.type != "cuda":
            hosts.append(tensor if tensor.device.type == "cpu" else tensor.cpu())
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        hosts.append(host)
        streams[tensor.device] = torch.cuda.current_stream(tensor.device)
    for stream in streams.values():
        stream.synchronize()
    return hosts


def host_arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    """`host_tensors` as NumPy arrays."""
    return [host.numpy() for host in host_tensors(*tensors)]


def host_array(tensor: torch.Tensor) -> np.ndarray:
    """One tensor's values as a NumPy array in host memory."""
    return host_arrays(tensor)[0]
