"""How long a shard merge takes to fold two full bounded tables of one layer: `merge_summaries` (CSR tables
added row by row in compiled code, pruned in place) against `merge_summaries_by_sort` (every counter sorted).

Each table is what a shard of the presets' size leaves for one layer: every neuron holds `capacity`
distinct items (tokens of a 50k vocabulary) with heavy-tailed (Zipf) counts, as a busy neuron's summary
does after 524k tokens. The merge rule folds such a table per layer, table and shard, so this is the unit
its time grows with. Both results must be equal.

    python benchmarks/summary_merge_speed.py --neurons 3072 8192 --out benchmarks/results/summary-merge-speed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import tables_of_blocks, write_results  # noqa: E402

VOCAB = 50272


def full_table(n_neurons: int, capacity: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neuron, token, count) sorted by (neuron, token): `capacity` distinct tokens a neuron, Zipf counts."""
    rng = np.random.default_rng(seed)
    tokens = np.stack([np.sort(rng.choice(VOCAB, capacity, replace=False)) for _ in range(n_neurons)])
    neurons = np.repeat(np.arange(n_neurons, dtype=np.int64), capacity)
    counts = rng.zipf(1.5, size=n_neurons * capacity).clip(max=1 << 20).astype(np.int64)
    return neurons, tokens.reshape(-1).astype(np.int64), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", nargs="+", type=int, default=[3072, 8192], help="FFN widths (OPT-125m, OPT-1.3b)")
    parser.add_argument("--capacity", type=int, default=2048, help="token_capacity / ngram_capacity (presets: 2048)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--table-blocks", nargs="+", type=int, default=None,
        help="time the CSR fold with tables of each of these numbers of row blocks, merged on that many threads "
        "(default: one per thread, as a merge job)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from neuron_census.count_tables import merge_summaries
    from neuron_census.ngrams import merge_summaries_by_sort

    torch.set_num_threads(args.threads)
    rows = []
    for n_neurons in args.neurons:
        parts = [full_table(n_neurons, args.capacity, seed) for seed in (1, 2)]
        for round_index in range(args.rounds):
            csr: dict[int, float] = {}  # seconds by the tables' row blocks
            results = {}
            for blocks in args.table_blocks or (args.threads,):
                with tables_of_blocks(blocks):
                    start = time.perf_counter()
                    results[blocks] = merge_summaries(parts, args.capacity)
                    csr[blocks] = time.perf_counter() - start
            start = time.perf_counter()
            by_sort = merge_summaries_by_sort(parts, args.capacity)
            sort_seconds = time.perf_counter() - start
            equal = all(np.array_equal(a, b) for result in results.values() for a, b in zip(result, by_sort))
            rows.append(
                {"neurons": n_neurons, "round": round_index, "entries": int(len(parts[0][0])), "csr": csr,
                 "by_sort": sort_seconds, "equal": equal}
            )
            print(rows[-1], flush=True)
    lines = [
        f"fold of two full tables of one layer, capacity {args.capacity}, {args.threads} threads, {time.strftime('%Y-%m-%d')}",
        "",
        "| neurons | entries a table | round | CSR s (row blocks) | sort s | sort / fastest CSR | equal |",
        "|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        csr = ", ".join(f"{seconds:.2f} ({blocks} block{'s' * (blocks > 1)})" for blocks, seconds in row["csr"].items())
        lines.append(
            f"| {row['neurons']} | {row['entries']:,} | {row['round']} | {csr} | {row['by_sort']:.2f} "
            f"| {row['by_sort'] / min(row['csr'].values()):.1f}x | {'yes' if row['equal'] else 'NO'} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    if not all(row["equal"] for row in rows):
        raise SystemExit("the two merges differ")


if __name__ == "__main__":
    main()
