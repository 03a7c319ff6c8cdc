"""How fast statistics and hidden states leave the GPU: `.cpu()` (a new pageable host tensor), a copy into a
pageable tensor used before (as layerwise capture keeps each batch's hidden states between layers), and
`host_copies.host_tensors` (page-locked memory, copies queued, one wait), at the sizes capture hands over.

Each size is copied `--repeats` times in alternation, so both methods see the same machine; the first
copy of each method is reported apart (page-locked memory is allocated then, later copies reuse it as
capture does from its third layer on) and every copy is checked against the source.

    python benchmarks/host_copy_speed.py --sizes-mb 1 25 100 400 --out benchmarks/results/gpu-host-copies
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", nargs="+", type=float, default=[1, 25, 100, 400])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from neuron_census.capture.host_copies import host_tensors

    rows, data = [], {}
    for size_mb in args.sizes_mb:
        source = torch.arange(int(size_mb * 2**20) // 8, dtype=torch.int64, device="cuda")
        reused = source.cpu()
        methods = {
            "pageable, new (.cpu())": lambda t: t.cpu(),
            "pageable, used before (copy_)": lambda t, reused=reused: reused.copy_(t),
            "page-locked (host_tensors)": lambda t: host_tensors(t)[0],
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats + 1):
            for name, copy in methods.items():
                torch.cuda.synchronize()
                start = time.perf_counter()
                host = copy(source)
                times[name].append(time.perf_counter() - start)
                assert torch.equal(host[-4:], source[-4:].cpu()), name
                del host
        for name, seconds in times.items():
            later = statistics.median(seconds[1:])
            rows.append(f"| {size_mb:g} | {name} | {size_mb / 1024 / later:.1f} | {seconds[0] * 1000:.1f} | {later * 1000:.2f} |")
            data[f"{size_mb:g}MB {name}"] = seconds
    table = "\n".join(
        [
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}; int64 tensors, {args.repeats} timed copies each "
            "after the first, alternating.",
            "",
            "| MB | method | GB/s (median) | first copy ms | median ms |",
            "|---:|---|---:|---:|---:|",
            *rows,
        ]
    )
    print(table)
    write_results(args.out, table + "\n", data)


if __name__ == "__main__":
    main()
