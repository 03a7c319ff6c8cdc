"""Write and read speed and size of a capture store under several compressors.

A capture job (`jobs.census.capture_job`, as the capture rule runs it) writes a store on a random-weight model
with an exact architecture (about half of its neurons fire, so the token and n-gram tables reach their
capacities) over bundled text at full context length; its arrays are then written again, with the chunks
the store uses, under each compressor in turn, and read back. Rounds alternate the compressors, since
this host's speed drifts.

    python benchmarks/store_codecs.py --rounds 3 --out results/benchmarks/store-codecs-opt-125m
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_job_memory import TOKENIZER, write_shard  # noqa: E402
from capture_speed import write_results  # noqa: E402


def compressors() -> dict[str, Any]:
    from zarr.codecs import BloscCodec

    return {
        "zstd level 3 (zarr's default)": "auto",
        "blosc zstd level 1, byte shuffle (the stores')": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
        "blosc lz4 level 5, byte shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    }


def write_states(path: Path, states: dict, compressor: Any) -> float:
    import zarr

    from neuron_census.capture.store import _append_chunks

    start = time.perf_counter()
    group = zarr.open_group(path, mode="w")
    for name, state in states.items():
        sub = group.create_group(name)
        for key, array in state.items():
            if array.ndim == 0 or array.size < 1024:
                sub.create_array(key, data=array, compressors=compressor)
                continue
            target = sub.create_array(
                key, shape=array.shape, dtype=array.dtype, chunks=_append_chunks(array.shape, 0, array.itemsize),
                compressors=compressor,
            )
            target[...] = array
    return time.perf_counter() - start


def read_states(path: Path, states: dict) -> float:
    import numpy as np
    import zarr

    start = time.perf_counter()
    group = zarr.open_group(path, mode="r")
    for name, state in states.items():
        for key, array in state.items():
            if not np.array_equal(np.asarray(group[name][key][...]), array):
                raise SystemExit(f"{name}/{key} read back differs")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--capacity", type=int, default=2048, help="token_capacity and ngram_capacity (presets: 2048)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from neuron_census.jobs.census import capture_job
    from neuron_census.jobs.common import ModelJob
    from neuron_census.capture.store import read_store

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_shard(argparse.Namespace(seq_len=args.seq_len, n_seq=args.n_seq), folder / "shard.zarr")
        settings = {
            "strategy": "resident", "batch_size": 2, "token_capacity": args.capacity, "ngram_capacity": args.capacity,
            "top_k": 32, "device": "cpu", "dtype": "float32",
        }
        model = {"source": "random", "architecture": args.architecture}
        capture_job(ModelJob("m", model, "gpt2", TOKENIZER, settings, threads=args.threads), folder / "shard.zarr", folder / "store.zarr")
        _, states = read_store(folder / "store.zarr")
        raw = sum(array.nbytes for state in states.values() for array in state.values())
        for round_index in range(args.rounds):
            for name, compressor in compressors().items():
                path = folder / "copy.zarr"
                written = write_states(path, states, compressor)
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                read = read_states(path, states)
                rows.append({"compressor": name, "round": round_index, "write_s": written, "read_s": read, "size_mb": size / 1e6})
                print(rows[-1], flush=True)
                shutil.rmtree(path)
    lines = [
        f"a capture store of {args.architecture} shapes (random weights, {args.n_seq} x {args.seq_len} tokens, capacities "
        f"{args.capacity}), {raw / 1e6:.0f} MB raw, {time.strftime('%Y-%m-%d')}",
        "",
        "| compressor | round | write s | read s | size MB | write MB/s (raw) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['compressor']} | {row['round']} | {row['write_s']:.2f} | {row['read_s']:.2f} | {row['size_mb']:.1f} "
            f"| {raw / 1e6 / row['write_s']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "raw_bytes": raw})


if __name__ == "__main__":
    main()
