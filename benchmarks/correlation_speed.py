"""How close the correlation update of universal neurons comes to the machine's matmul peak, and what a
study of two GPT-2-small-shaped models over 100M tokens needs, by number of blocks.

One update = centring each model's batch rows, one float32 product [rows, d_a]^T [rows, d_b] per other
model, its float64 addition, and the within-layer products of the other model. Its useful work is the
cross product's 2 * rows * d_a * d_b flops (plus the within-layer ones); the ratio to the measured matmul
peak is the share of the device the update uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from capture_speed import matmul_peak_gflops

from neuron_census.accumulators.correlation import NeuronCorrelation
from neuron_census.capture.sources import PairedActivations, TokenBatch


def time_update(width: int, n_layers: int, rows: int, repeats: int, device: str) -> tuple[float, float]:
    """Seconds of one batch's update (best of `repeats`) and its flops, one other model."""
    layers = tuple(range(n_layers))
    correlation = NeuronCorrelation("a", ["b"], layers, layers, width, torch.device(device))
    seq_len = 512
    n_seq = rows // seq_len
    tokens = torch.zeros(n_seq, seq_len, dtype=torch.int64, device=device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    acts = {name: torch.randn(n_seq, seq_len, width, device=device) for name in ("a", "b")}
    best = float("inf")
    for index in range(repeats + 1):
        batch = TokenBatch(index, tokens, torch.arange(n_seq, device=device), mask, 0, 0, False)
        start = time.perf_counter()
        for layer in layers:
            correlation.update(PairedActivations(batch, layer, acts, {"a": None, "b": None}))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if index:  # the first allocates the running sums
            best = min(best, time.perf_counter() - start)
    d = width * n_layers
    flops = 2 * rows * d * d + 2 * rows * width * width * n_layers
    return best, flops


def plan(n_tokens: float, width: int, n_layers: int, rows: int, gflops: float, blocks: int) -> dict[str, float]:
    """One block job of a two-model study: memory from `NeuronCorrelation.memory`, time from the measured
    update rate, for the whole study (blocks x blocks jobs)."""
    group = -(-n_layers // blocks)
    memory = NeuronCorrelation.memory(width, group, width, group, 1, rows)
    d = width * n_layers
    flops = 2 * n_tokens * d * d + 2 * n_tokens * width * width * n_layers * blocks  # within-layer redone per block
    return {"blocks": blocks, "jobs": blocks * blocks, "memory_gb_per_job": sum(memory.values()) / 1e9, "hours": flops / (gflops * 1e9) / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=2, help="layers per side timed here")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/correlation-speed"))
    args = parser.parse_args()
    peak = matmul_peak_gflops(args.device, torch.float32)
    seconds, flops = time_update(args.width, args.layers, args.rows, args.repeats, args.device)
    achieved = flops / seconds / 1e9
    plans = [plan(100e6, 3072, 12, args.rows, achieved, blocks) for blocks in (1, 2, 3, 4, 6, 12)]
    result = {"device": args.device, "threads": torch.get_num_threads(), "peak_gflops": peak, "update_seconds": seconds,
              "update_gflops": achieved, "share_of_peak": achieved / peak, "plans": plans, **vars(args) | {"out": str(args.out)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(
        f"{args.device}, {torch.get_num_threads()} threads, float32: update of {args.layers} x {args.width} neurons per side, "
        f"{args.rows} rows: {seconds:.3f} s, {achieved:.0f} GFLOP/s = {achieved / peak:.0%} of the matmul peak ({peak:.0f})\n"
    )
    print("| blocks | jobs | memory per job (GB) | hours, whole study at this rate |\n|---:|---:|---:|---:|")
    for row in plans:
        print(f"| {row['blocks']} | {row['jobs']} | {row['memory_gb_per_job']:.1f} | {row['hours']:.0f} |")


if __name__ == "__main__":
    main()
