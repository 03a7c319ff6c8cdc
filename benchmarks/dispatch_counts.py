"""Device ops and host synchronisations that capture issues per (layer, batch), for one or more source trees.

On a GPU the cost of capture beyond the forward pass is kernel launches and waits for the device, not
arithmetic; both are counted here on any device with a dispatch counter (`benchmarks/dispatch_counter.py`).
Each tree given by `--engines NAME=SRC` (e.g. the current one and a checkout of an older revision) runs in a
process of its own on the same seeded random-weight model and tokens; its capture's counts minus those of the
bare forward pass, divided by layers x batches, are the engine's per (layer, batch) cost over one shard.

Both engines take other code paths on a CPU than on a GPU (before the redesign: SciPy tables, byte sums, a
sparse moments path; now: top-k candidates, lazily zeroed token rows); `NAME=SRC:gpu-path` runs a tree on
the CPU with the paths it takes on a CUDA device.

    git worktree add /tmp/before 99aee79
    python benchmarks/dispatch_counts.py --engines before=/tmp/before/src before-gpu-path=/tmp/before/src:gpu-path \
        now=src now-gpu-path=src:gpu-path --out results/benchmarks/dispatch-counts
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from capture_speed import set_fire_rate  # noqa: E402  (imports nothing of the package: runs on any source tree)


def _first_module(*names: str) -> Any:
    """The first of `names` that imports: module paths differ between source trees."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names}")


def take_gpu_paths() -> None:
    """Make the engine take, on the CPU, the code paths it takes on a CUDA device: the switch of today's
    engine, or the patches the engine before the redesign (modules `neuron_census.accumulators`,
    `count_tables`, `ngrams`) needs."""
    import dataclasses

    import torch

    try:
        importlib.import_module("neuron_census.accumulators.base").HOST_PATHS = False
        return
    except ModuleNotFoundError:
        pass
    accumulators = importlib.import_module("neuron_census.accumulators")
    count_tables = importlib.import_module("neuron_census.count_tables")
    ngrams = importlib.import_module("neuron_census.ngrams")
    accumulators.count_table = lambda rows, columns, capacity, device: count_tables.KeyTable(rows, columns, capacity, device)
    summed_rows = accumulators.summed_rows
    accumulators.summed_rows = lambda fires, as_bytes: summed_rows(fires, False)
    accumulators._weighted_squares = lambda weights, acts: weights @ (acts * acts)
    update = accumulators.Moments.update

    def dense_moments(self: Any, batch: Any) -> None:
        dense = dataclasses.replace(batch, fires_where_positive=False)  # the sparse path is taken on CPUs only
        dense._cache.update(batch._cache)
        update(self, dense)

    accumulators.Moments.update = dense_moments
    group_cuts = ngrams._group_cuts
    ngrams._group_cuts = lambda counts, starts, ends, capacity, narrow=None: group_cuts(counts, starts, ends, capacity, narrow=False)
    ngrams._occurrences = lambda values, size: torch.zeros(size, dtype=torch.int64).index_add_(0, values, torch.ones_like(values))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Counts in this process, for the source tree on `sys.path`."""
    import numpy as np
    import torch

    if args.gpu_path:
        take_gpu_paths()

    import dispatch_counter as counter
    zoo = _first_module("neuron_census.models.zoo", "neuron_census.zoo")
    adapters = _first_module("neuron_census.models.adapters", "neuron_census.adapters")
    engine = _first_module("neuron_census.capture.engine", "neuron_census.capture")

    torch.manual_seed(0)
    model = zoo.build_random_model(args.architecture, seed=0, dtype=torch.float32, device="cpu").eval()
    adapter = adapters.adapter_for(model, name=args.architecture)
    n_seq = args.batch_size * args.batches * 2  # a shard of `batches`, then one twice as long
    tokens = np.random.default_rng(0).integers(3, adapter.vocab_size, size=(n_seq, args.seq_len)).astype(np.int64)
    tokens[:, 0] = 2
    set_fire_rate(model, tokens, args.fire_rate, "cpu")
    settings = engine.CaptureSettings(batch_size=args.batch_size, token_capacity=args.token_capacity)

    def capture(rows: Any) -> None:
        engine.capture_tokens(
            model, adapter, rows, model_name=args.architecture, first_seq_id=0, has_bos=True,
            settings=settings, device=torch.device("cpu"), progress=False,
        )

    def bare(rows: Any) -> None:
        with torch.inference_mode():
            for start in range(0, len(rows), args.batch_size):
                model.base_model(input_ids=torch.from_numpy(rows[start : start + args.batch_size]), use_cache=False)

    capture(tokens[: args.batch_size])  # warm-up: lazily built state is not part of the count
    counts: dict[str, dict[str, Any]] = {}
    for size in (1, 2):
        rows = tokens[: n_seq * size // 2]
        for name, run in (("bare", bare), ("capture", capture)):
            with counter.counting_host_reads() as reads, counter.DispatchCounter() as mode:
                run(rows)
            counts[f"{name}-{size}"] = {"ops": mode.ops, "syncs": mode.syncs, "host_reads": sum(reads.values()), "by_op": dict(mode.by_op)}
    cells = adapter.n_layers * args.batches
    keys = ("ops", "syncs", "host_reads")
    shard = {key: (counts["capture-1"][key] - counts["bare-1"][key]) / cells for key in keys}
    marginal = {
        key: (counts["capture-2"][key] - counts["bare-2"][key] - counts["capture-1"][key] + counts["bare-1"][key]) / cells
        for key in keys
    }
    return {"per_layer_batch": shard, "marginal": marginal, "layers": adapter.n_layers, "batches": args.batches, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=[f"current={HERE.parent / 'src'}"], help="NAME=SRC_DIR ...")
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="a shard of the presets: 256 sequences in batches of 16")
    parser.add_argument("--fire-rate", type=float, default=0.05)
    parser.add_argument("--token-capacity", type=int, default=2048, help="as the OPT presets")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--gpu-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    results: dict[str, Any] = {}
    child_args = [
        f"--architecture={args.architecture}", f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}",
        f"--batches={args.batches}", f"--fire-rate={args.fire_rate}", f"--token-capacity={args.token_capacity}",
    ]
    for spec in args.engines:
        name, _, src = spec.partition("=")
        src, _, path = src.partition(":")
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
        extra = ["--gpu-path"] if path == "gpu-path" else []
        done = subprocess.run([sys.executable, __file__, *child_args, "--measure", *extra], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"engine {name} ({src}) failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [
        f"{args.architecture}, batch {args.batch_size} x {args.seq_len} tokens, {args.batches} batches, fire rate "
        f"{args.fire_rate}, token_capacity {args.token_capacity}; per (layer, batch), capture minus bare forward: "
        f"over a shard of {args.batches} batches (hand-overs and flushes included), and each (layer, batch) "
        f"more (a shard of {2 * args.batches} batches minus one of {args.batches})",
        "",
        "| engine | aten ops | sync-forcing ops | host reads | aten ops, marginal | sync-forcing, marginal | host reads, marginal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        per, more = result["per_layer_batch"], result["marginal"]
        lines.append(
            f"| {name} | {per['ops']:.1f} | {per['syncs']:.2f} | {per['host_reads']:.2f} "
            f"| {more['ops']:.1f} | {more['syncs']:.2f} | {more['host_reads']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
