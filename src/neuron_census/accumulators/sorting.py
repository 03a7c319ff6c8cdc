"""Sorts of integer keys, the data-dependent core of the sparse tables and of top-k on a CPU.

On a CPU these go through numpy's sort, whose SIMD kernels sort int32 and int64 values 4-8x faster than
`torch.sort`; an order is obtained by sorting keys packed with their indices, so no argsort runs. On other
devices they are torch's own ops. Results are identical either way.
"""

from __future__ import annotations

import numpy as np
import torch


def count_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct `keys` (1-D integers) and how often each occurs (int64): `torch.unique`'s result.
    On a CPU `keys` itself is sorted in place (callers pass keys they just built)."""
    if keys.device.type != "cpu" or len(keys) == 0:
        return torch.unique(keys, return_counts=True)
    ordered = keys.numpy()
    ordered.sort()
    new = np.empty(len(ordered), dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    if len(starts) == len(ordered):
        return keys, torch.ones(len(keys), dtype=torch.int64)
    return torch.from_numpy(ordered[starts]), torch.from_numpy(np.diff(starts, append=len(ordered)))


def stable_order(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """Indices that sort non-negative 1-D int64 `keys` (all below `bound`) ascending, equal keys in index
    order: `torch.argsort(keys, stable=True)`. On a CPU, where each key and its index pack into one int64,
    the packed values are sorted instead."""
    index_bits = max(1, (len(keys) - 1).bit_length())
    if keys.device.type != "cpu" or bound > (1 << (63 - index_bits)):
        return torch.argsort(keys, stable=True)
    packed = np.sort((keys.numpy() << index_bits) | np.arange(len(keys), dtype=np.int64))
    return torch.from_numpy(packed & ((1 << index_bits) - 1))
