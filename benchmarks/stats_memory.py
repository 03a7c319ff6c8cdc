"""Peak memory of the stats job: every layer's states at once, against one layer at a time.

Shard stores are real captures, as in `merge_memory.py` (a random-weight model with the exact
architecture, `--fire-rate` of its neurons firing, every accumulator, bounded tables as in the presets),
merged by `merge_store_files` as the merge rule does. Each way of computing the statistics then runs in
its own subprocess on the merged store, so each peak is its own:

  all_layers  the merged state read whole, then `stats_tables` (how the stats job read it before)
  by_layer    `stats_tables_by_layer` over `merged_layer_state`: what the stats job runs

Both must give equal tables; the script checks it.

    python benchmarks/stats_memory.py --architecture opt-125m --out results/benchmarks/stats-memory-opt-125m
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
from capture_speed import _peak_rss_mb, _rss_mb, write_results  # noqa: E402
from merge_memory import add_shard_arguments, write_shards  # noqa: E402

METHODS = ("all_layers", "by_layer")


def stats_once(method: str, store: str, output: str) -> dict[str, Any]:
    """One statistics computation in this process; its tables go to `output` (parquet) for the comparison."""
    from neuron_census.analyses.tables import STATS_ACCUMULATORS, AnalysisSettings, stats_tables, stats_tables_by_layer
    from neuron_census.capture.store import StoreReader, merged_attrs, merged_layer_state

    loaded = _rss_mb()
    start = time.perf_counter()
    reader = StoreReader(store)
    attrs = merged_attrs([reader])
    names = [name for name in STATS_ACCUMULATORS if name in reader.names]
    strings = [f"t{token}" for token in range(int(attrs["vocab_size"]))]
    if method == "all_layers":
        stats, rates = stats_tables("m", attrs, {name: reader.state(name) for name in names}, AnalysisSettings(), strings)
    else:
        states = lambda slot: {name: merged_layer_state([reader], name, slot) for name in names}  # noqa: E731
        stats, rates = stats_tables_by_layer("m", attrs, states, AnalysisSettings(), strings)
    seconds = time.perf_counter() - start
    stats.write_parquet(output + "-stats.parquet")
    rates.write_parquet(output + "-rates.parquet")
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_loaded_mb": loaded,
        "positional": int(stats["positional"].sum()),
        "rate_rows": rates.height,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shard_arguments(parser)
    parser.add_argument("--shards", type=int, default=2, help="shard stores merged into the one the statistics read")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "STORE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(stats_once(*args.worker)))
        return

    import polars as pl

    from neuron_census.capture.store import merge_store_files

    folder = Path(tempfile.mkdtemp(prefix="stats-memory-"))
    try:
        merged = folder / "merged.zarr"
        merge_store_files(write_shards(args, folder, args.shards), merged)
        store_mb = sum(f.stat().st_size for f in merged.rglob("*") if f.is_file()) / 2**20
        results = []
        for method in METHODS:
            command = [sys.executable, __file__, "--worker", method, str(merged), str(folder / method)]
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            results.append({"method": method, **run})
            print(results[-1], flush=True)
        for suffix in ("-stats.parquet", "-rates.parquet"):
            tables = [pl.read_parquet(folder / f"{method}{suffix}") for method in METHODS]
            if not tables[0].equals(tables[1]):
                raise SystemExit(f"the two methods' {suffix[1:]} tables differ")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"{args.architecture}, {args.shards} shards of {args.seq_per_shard} x {args.seq_len} tokens merged, fire rate "
        f"{args.fire_rate}, token and n-gram capacity {args.capacity}; the merged store is {store_mb:.0f} MB on disk. "
        "Both methods gave equal tables.",
        "",
        "| statistics | peak RSS MB | RSS after imports MB | seconds | positional neurons | rows of position rates |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in results:
        lines.append(
            f"| {run['method']} | {run['peak_rss_mb']:.0f} | {run['rss_loaded_mb']:.0f} | {run['seconds']:.1f} "
            f"| {run['positional']} | {run['rate_rows']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: v for k, v in vars(args).items() if k != "out"}, "results": results})


if __name__ == "__main__":
    main()
