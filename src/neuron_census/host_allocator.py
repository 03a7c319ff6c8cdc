"""Host memory allocator settings for a capture process that computes on the CPU.

glibc serves each block above its mapping threshold (at most 32 MB by default) with a fresh memory map and
unmaps it when freed, so every (layer, batch) of a CPU capture faults the pages of its large temporaries
(the firing matrix as floats, a batch's pair keys, merged tables) in again. Kept in the heap instead,
freed blocks are reused: a whole capture job on OPT-125m shapes ran 20-28% faster, for a 7-17% higher
peak (benchmarks/README.md, "Reusing freed memory on a CPU"). Worker threads (those merging host tables,
the store's writer) allocate from the same heap: in an arena of its own, a thread's every block above
64 MB would be mapped afresh. On a GPU those temporaries live in PyTorch's
own caching allocator on the device, so GPU jobs keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
HEAP_BLOCKS_UP_TO = 1 << 30  # blocks up to this size come from the heap (larger ones are still mapped)
FREE_KEPT = 256 << 20  # free memory at the top of the heap kept before any is returned to the system


def keep_freed_blocks() -> bool:
    """Ask glibc to serve blocks up to 1 GiB from its one heap, to every thread, and to keep freed memory for
    reuse.

    Process-wide, so called once by a capture job on the CPU (and by the benchmarks that time CPU capture).
    Returns False, changing nothing, where the C library has no `mallopt` (not glibc) or refuses a value.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(
        mallopt(parameter, value)
        for parameter, value in ((M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO), (M_TRIM_THRESHOLD, FREE_KEPT), (M_ARENA_MAX, 1))
    )
