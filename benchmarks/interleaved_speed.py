"""Capture speed against the bare forward, TransformerLens and nnsight, timed in one process, interleaved.

`capture_speed.py` runs each mode in a process of its own, one after the other, so that each one's peak
memory is its own; on a host whose speed drifts, runs minutes apart differ by more than the costs being
compared. Here the modes share one process: capture and the bare forward share a model, TransformerLens and
nnsight get their own copies of the same seeded model, and each round times every mode once, in turn, so
drift reaches all of them alike. Each mode's ratio to the bare forward is taken within each round; the
median over rounds is reported with every round's. Memory is not measured here.

    python benchmarks/interleaved_speed.py --architecture opt-125m --rounds 5 --fire-rate 0.05 \
        --out results/benchmarks/interleaved-opt-125m-fire5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import (  # noqa: E402
    DEFAULT_MODES,
    MODES,
    _sync,
    add_setting_arguments,
    corpus_tokens,
    load_model,
    matmul_peak_gflops,
    mode_runner,
    write_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    add_setting_arguments(parser)
    args = parser.parse_args()
    if "bare" not in args.modes:
        parser.error("--modes must include bare: ratios are taken against it")

    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.device, getattr(torch, args.dtype))
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    shared = load_model(args, tokens)  # the bare forward and both captures (capture removes its hooks)
    runs = {
        mode: mode_runner(mode, args, load_model(args, tokens) if mode in ("transformer_lens", "nnsight") else shared)
        for mode in args.modes
    }
    for run in runs.values():
        run(tokens[: args.batch_size])  # warm-up
    seconds: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(args.rounds):
        for mode, run in runs.items():
            _sync(args.device)
            start = time.perf_counter()
            run(tokens)
            _sync(args.device)
            seconds[mode].append(time.perf_counter() - start)
        print(json.dumps({mode: times[-1] for mode, times in seconds.items()}), flush=True)

    meta = {key: value for key, value in vars(args).items() if key != "out"} | {"matmul_peak_gflops": peak}
    table = markdown(seconds, meta, int(tokens.size))
    print(table)
    write_results(args.out, table, {"meta": meta, "seconds": seconds, "tokens": int(tokens.size)})


def markdown(seconds: dict[str, list[float]], meta: dict[str, Any], n_tokens: int) -> str:
    """Median and best tokens/s of each mode, and its ratios to the bare forward of the same round."""
    fire_rate = meta["fire_rate"] if meta["fire_rate"] is not None else "of random weights"
    lines = [
        f"{meta['architecture']}, device {meta['device']}, {meta['threads']} threads, {meta['dtype']}, "
        f"{meta['n_seq']} sequences x {meta['seq_len']} tokens, batch {meta['batch_size']}, {meta['rounds']} "
        f"interleaved rounds; matmul peak {meta['matmul_peak_gflops']:.0f} GFLOP/s; fire rate {fire_rate}; "
        f"ngram_capacity {meta['ngram_capacity']}, token_capacity {meta['token_capacity'] or 'none (exact)'}.",
        "",
        "| mode | tokens/s (median) | x bare (median of rounds) | x bare (best of each) | x bare in each round |",
        "|---|---:|---:|---:|---|",
    ]
    for mode, times in seconds.items():
        ratios = [bare / own for bare, own in zip(seconds["bare"], times)]
        lines.append(
            f"| {mode} | {n_tokens / statistics.median(times):.0f} | {statistics.median(ratios):.2f} | "
            f"{min(seconds['bare']) / min(times):.2f} | {' / '.join(f'{r:.2f}' for r in ratios)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
