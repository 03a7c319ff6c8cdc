"""Does the shard merge's memory grow with the number of shards? Peak RSS of merging N and M stores.

Shard stores are real captures (a random-weight model with the exact architecture, `--fire-rate` of its
neurons firing, every accumulator, bounded token and n-gram tables as in the presets) of different
bundled sequences at full context length, where per-position firing counts are the largest array
(OPT-125m: 12 layers x 2048 positions x 3072 neurons x 8 bytes = 604 MB a store). Each merge runs in
its own subprocess, so each peak is its own:

  in_memory   every store read, then merged (`merge_states` of all of them at once), then written
  streaming   `merge_store_files`, what the merge rule runs: summed arrays a block of rows at a time,
              the other accumulators folded in one store at a time, each merged layer written by a
              writer thread while the next is merged
  streaming_inline  the same, each merged layer written before the next is merged (`write_behind=False`)

    python benchmarks/merge_memory.py --architecture opt-125m --shards 2 8 --out results/benchmarks/merge-memory
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import _peak_rss_mb, _rss_mb, corpus_tokens, set_fire_rate, write_results  # noqa: E402

METHODS = ("in_memory", "streaming", "streaming_inline")


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """What `write_shards` captures: the model, the shard size, the firing rate and the table capacities."""
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--seq-per-shard", type=int, default=1)
    parser.add_argument("--fire-rate", type=float, default=0.05)
    parser.add_argument("--capacity", type=int, default=2048, help="token_capacity and ngram_capacity (presets: 2048)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)


def write_shards(args: argparse.Namespace, folder: Path, n_shards: int) -> list[Path]:
    """Capture `n_shards` shards of `args.seq_per_shard` sequences each, one store per shard."""
    import torch

    from neuron_census.models.adapters import adapter_for
    from neuron_census.capture.engine import CaptureSettings, capture_tokens
    from neuron_census.capture.store import write_store
    from neuron_census.models.zoo import build_random_model

    torch.set_num_threads(args.threads)
    model = build_random_model(args.architecture, seed=0).eval().requires_grad_(False)
    adapter = adapter_for(model, name=args.architecture)
    tokens = corpus_tokens(n_shards * args.seq_per_shard, args.seq_len)
    set_fire_rate(model, tokens, args.fire_rate, "cpu")
    settings = CaptureSettings(
        batch_size=args.seq_per_shard, ngram_capacity=args.capacity, token_capacity=args.capacity
    )
    paths = []
    for shard in range(n_shards):
        rows = tokens[shard * args.seq_per_shard : (shard + 1) * args.seq_per_shard]
        layers, states = capture_tokens(
            model, adapter, rows, model_name=args.architecture, first_seq_id=shard * args.seq_per_shard,
            has_bos=True, settings=settings, device=torch.device("cpu"), progress=False,
        )
        attrs = {
            "model": args.architecture, "datasets": ["corpus"], "sources": [f"corpus/{shard}"], "layers": list(layers),
            "n_layers_total": adapter.n_layers, "n_neurons": adapter.n_neurons, "seq_len": args.seq_len,
            "vocab_size": adapter.vocab_size, "tokenizer": "gpt2", "tokenizer_fingerprint": "benchmark",
            "fire_rule": settings.fire_rule, "activation": adapter.activation, "has_bos": True, "top_k": settings.top_k,
        }
        path = folder / f"shard-{shard}.zarr"
        write_store(path, attrs, states)
        paths.append(path)
        print(f"wrote {path.name}", flush=True)
    return paths


def merge_one(method: str, paths: list[str], output: str) -> dict[str, Any]:
    """One merge in this process: its peak RSS over the RSS after imports."""
    from neuron_census.accumulators import merge_states
    from neuron_census.capture.store import StoreReader, merge_store_files, merged_attrs, read_store, write_store

    loaded = _rss_mb()
    start = time.perf_counter()
    if method == "in_memory":
        attrs = merged_attrs([StoreReader(path) for path in paths])
        write_store(output, attrs, merge_states([read_store(path)[1] for path in paths]))
    else:
        merge_store_files(paths, output, write_behind=method != "streaming_inline")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_loaded_mb": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser)
    parser.add_argument("--shards", nargs=2, type=int, default=[2, 8], help="the two shard counts compared")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=1, help="the methods run in turn, this many times")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "OUTPUT", "PATHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, output, paths = args.worker
        print(json.dumps(merge_one(method, paths.split(","), output)))
        return

    folder = Path(tempfile.mkdtemp(prefix="merge-memory-"))
    try:
        paths = write_shards(args, folder, max(args.shards))
        store_mb = sum(f.stat().st_size for f in paths[0].rglob("*") if f.is_file()) / 2**20
        results = []
        for n_shards in args.shards:
            for round_index in range(args.rounds):
                for method in args.methods:
                    output = folder / f"merged-{method}-{n_shards}.zarr"
                    command = [sys.executable, __file__, "--worker", method, str(output), ",".join(map(str, paths[:n_shards]))]
                    done = subprocess.run(command, check=True, capture_output=True, text=True)
                    run = json.loads(done.stdout.splitlines()[-1])
                    results.append({"method": method, "shards": n_shards, "round": round_index, **run})
                    shutil.rmtree(output)
                    print(results[-1], flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    low, high = args.shards
    lines = [
        f"{args.architecture}, {args.seq_per_shard} x {args.seq_len} tokens a shard, fire rate {args.fire_rate}, every "
        f"accumulator (token and n-gram capacity {args.capacity}); a store is {store_mb:.0f} MB on disk.",
        "",
        f"| merge | peak RSS MB, {low} shards | peak RSS MB, {high} shards | change | seconds, {low} / {high} shards |",
        "|---|---:|---:|---:|---|",
    ]
    for round_index in range(args.rounds):
        for method in args.methods:
            a, b = (
                next(r for r in results if r["method"] == method and r["shards"] == n and r["round"] == round_index)
                for n in (low, high)
            )
            change = 100 * (b["peak_rss_mb"] / a["peak_rss_mb"] - 1)
            lines.append(
                f"| {method} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | {change:+.1f}% "
                f"| {a['seconds']:.1f} / {b['seconds']:.1f} |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: v for k, v in vars(args).items() if k != "out"}, "results": results})


if __name__ == "__main__":
    main()
