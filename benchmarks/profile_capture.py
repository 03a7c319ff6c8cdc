"""Where one capture pass spends its time: PyTorch's profiler over `capture_tokens`, per operator and per accumulator.

Each accumulator's `update` and `state` run inside a profiler range named after it, so the table shows
what every accumulator costs on the host and on the device, next to the operators underneath. One warm-up
pass runs first (kernels and libraries load on first use).

    python benchmarks/profile_capture.py --architecture opt-125m --device cuda --dtype bfloat16 \
        --n-seq 64 --batch-size 32 --fire-rate 0.05 --token-capacity 2048 --out benchmarks/results/profile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import (  # noqa: E402
    add_setting_arguments,
    corpus_tokens,
    load_model,
    mode_runner,
    use_job_allocator,
    write_results,
)


def name_accumulator_ranges() -> None:
    """Wrap every accumulator class's `update` and `state` in a profiler range named `acc:<name>.<method>`."""
    import torch

    from neuron_census import accumulators

    for cls in vars(accumulators).values():
        if not (isinstance(cls, type) and hasattr(cls, "update") and hasattr(cls, "state") and hasattr(cls, "name")):
            continue
        for method in ("update", "state"):
            original = getattr(cls, method)

            def wrapped(self, *args, _original=original, _label=f"acc:{cls.name}.{method}"):
                with torch.profiler.record_function(_label):
                    return _original(self, *args)

            setattr(cls, method, wrapped)


def operators_per_range(events: list, per_range: int) -> str:
    """Markdown: for each `acc:` range, the operators with the most self host time inside it (all calls)."""
    from collections import defaultdict

    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("acc:"):
            parent = parent.cpu_parent
        if parent is not None:
            totals[parent.name][event.name] += event.self_cpu_time_total / 1000
    lines = ["Operators inside each accumulator range, by self host ms:", ""]
    for label, ops in sorted(totals.items(), key=lambda item: -sum(item[1].values())):
        top = sorted(ops.items(), key=lambda item: -item[1])[:per_range]
        lines.append(f"- {label} ({sum(ops.values()):.0f} ms): " + ", ".join(f"{name} {ms:.0f}" for name, ms in top))
    return "\n".join(lines) + "\n"


def synchronising_sites(run, tokens) -> str:
    """Markdown: where one capture pass makes the host wait for the GPU, counted by the line of this package's code.

    CUDA's sync debug mode warns on every synchronising call; each warning is attributed to the innermost frame
    inside `neuron_census`, so a site that waits once per (layer, batch) shows up with that many calls.
    """
    import traceback
    import warnings
    from collections import Counter

    import torch

    sites: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        frames = [f for f in traceback.extract_stack() if "neuron_census" in f.filename]
        where = frames[-1] if frames else None
        sites[f"{Path(where.filename).name}:{where.lineno} {where.name}" if where else f"{filename}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(tokens)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = [f"Synchronising calls in one pass: {sum(sites.values())}", "", "| site | calls |", "|---|---:|"]
    lines += [f"| {site} | {count} |" for site, count in sites.most_common()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--mode", default="capture", choices=("capture", "capture_dense_tokens", "capture_fire_pos"))
    parser.add_argument("--n-seq", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=25, help="operators listed per table")
    add_setting_arguments(parser)
    args = parser.parse_args()
    use_job_allocator(args)

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    name_accumulator_ranges()
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    run = mode_runner(args.mode, args, load_model(args, tokens))
    run(tokens)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        run(tokens)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    events = prof.key_averages()
    device_key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    ranges = [e for e in events if e.key.startswith("acc:")]
    lines = [
        f"{args.architecture}, {args.mode}, {args.device}, {args.dtype}, {args.n_seq} x {args.seq_len} tokens, "
        f"batch {args.batch_size}, fire rate {args.fire_rate}, token_capacity {args.token_capacity}; one profiled pass.",
        "",
        "| accumulator range | calls | host ms (incl. children) | device ms (incl. children) |",
        "|---|---:|---:|---:|",
    ]
    for event in sorted(ranges, key=lambda e: -e.cpu_time_total):
        device_ms = getattr(event, "device_time_total", 0.0) / 1000
        lines.append(f"| {event.key} | {event.count} | {event.cpu_time_total / 1000:.1f} | {device_ms:.1f} |")
    table = "\n".join(lines) + "\n\nOperators by self host time:\n\n```\n"
    table += events.table(sort_by="self_cpu_time_total", row_limit=args.rows) + "```\n"
    table += "\n" + operators_per_range(prof.events(), per_range=8)
    if args.device.startswith("cuda"):
        table += "\n" + synchronising_sites(run, tokens)
        table += "\nOperators by self device time:\n\n```\n" + events.table(sort_by=device_key, row_limit=args.rows) + "```\n"
    print(table)
    write_results(args.out, table)


if __name__ == "__main__":
    main()
