"""Count the device work a piece of code issues, on any device, CPU included.

On a GPU, capture's cost beyond the forward pass is kernel launches and host synchronisations, not
arithmetic. Both can be counted on a CPU: every aten op that reaches the dispatcher would be (at least) one
launch, and a few ops force the host to wait for the device: reading a value (`item`, `bool`, `int`),
ops whose output size depends on the data (`nonzero`, `unique`, masked selection) and copies to the host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose result the host must wait for on CUDA (data-dependent output size, or a value read back)
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",
        "aten.is_nonzero.default",
        "aten.equal.default",
        "aten.nonzero.default",
        "aten.nonzero_numpy.default",
        "aten.nonzero.out",
        "aten._unique.default",
        "aten._unique2.default",
        "aten.unique_dim.default",
        "aten.unique_consecutive.default",
        "aten.masked_select.default",
        "aten.repeat_interleave.Tensor",
    }
)
HOST_READS = ("numpy", "tolist", "cpu")  # Tensor methods that copy device memory to the host


def _bool_index(func: Any, args: tuple[Any, ...]) -> bool:
    """`x[mask]` and `x[mask] = y`: indexing by a boolean tensor runs a `nonzero` inside the op."""
    if func not in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class DispatchCounter(TorchDispatchMode):
    """Counts aten ops (`ops`, by name in `by_op`) and those that force a host synchronisation (`syncs`)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = str(func)
        self.by_op[name] += 1
        if name in SYNC_OPS or _bool_index(func, args):
            self.syncs += 1
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())


@contextmanager
def counting_host_reads() -> Iterator[Counter[str]]:
    """Count calls of the Tensor methods that copy to the host (`HOST_READS`): on a CPU they copy nothing
    and dispatch no op, so the dispatch mode cannot see them."""
    counts: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name: str, original: Any) -> Any:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
