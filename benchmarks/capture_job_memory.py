"""Peak memory of a whole capture job (`jobs.census.capture_job`: load, capture, write the store), per strategy,
for the code of one or more source trees side by side.

The job runs as the workflow runs it, in a subprocess of its own (its peak is its own), on a
random-weight model with an exact architecture (`source: random`, about half of its neurons fire, so the
bounded token and n-gram tables fill) and bundled held-out text in GPT-2 BPE at full context length,
where per-position firing counts are the largest dense array. `--src NAME=PATH` puts a source tree first
on the job's `PYTHONPATH` (a checkout of an earlier commit, to compare against this one), and
`--write-behind on off` runs each with and without the writer thread; every store must hold the same
states as the first one, which the script checks. Besides the peak and the job's time, each run reports how
long the capture thread spent handing states to the store: writing them itself, or waiting for the writer
thread to finish the previous layer.

    git worktree add /tmp/old <commit>
    python benchmarks/capture_job_memory.py --src before=/tmp/old/src --src after=src \
        --out results/benchmarks/capture-job-memory-opt-125m
    # on a GPU host: does writing behind hide the store from a layerwise capture of a larger model?
    python benchmarks/capture_job_memory.py --architecture opt-1.3b --strategies layerwise resident --device cuda \
        --dtype bfloat16 --n-seq 16 --batch-size 8 --write-behind on off --out results/benchmarks/gpu-write-behind
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import ROOT, write_results  # noqa: E402

TOKENIZER = {"source": "gpt2_bpe", "bos": "<|endoftext|>"}

JOB = """
import json, sys, threading, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from capture_speed import _peak_rss_mb
from neuron_census.capture import layer_states
from neuron_census.jobs.census import capture_job
from neuron_census.jobs.common import ModelJob

stalled = [0.0]  # seconds the capture thread spends handing states to the store (writing, or waiting for a write)
depth = [0]

def timed(method):
    def run(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread() or depth[0]:
            return method(*args, **kwargs)
        start = time.perf_counter()
        depth[0] += 1
        try:
            return method(*args, **kwargs)
        finally:
            depth[0] -= 1
            stalled[0] += time.perf_counter() - start
    return run

for cls, names in ((layer_states.LayeredStates, ("add_layers", "add_whole")),
                   (getattr(layer_states, "WriteBehind", None), ("add_layers", "add_whole", "close"))):
    for name in names:
        if cls is not None and hasattr(cls, name):
            setattr(cls, name, timed(getattr(cls, name)))
start = time.perf_counter()
capture_job(ModelJob("m", {model!r}, "gpt2", {tokenizer!r}, {settings!r}, threads={threads}), {shard!r}, {store!r})
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(), "store_seconds": stalled[0]}}))
"""


def write_shard(args: argparse.Namespace, path: Path) -> None:
    from neuron_census.data.corpus import shard_sequences, write_token_shard
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("gpt2", TOKENIZER, ROOT)
    spec = {"source": "bundled", "split": "heldout", "seq_len": args.seq_len, "sequences_per_shard": args.n_seq, "n_shards": 1}
    tokens = shard_sequences(spec, tokenizer, 0, ROOT, dataset="corpus")
    write_token_shard(path, tokens, tokenizer=tokenizer, dataset="corpus", shard=0)


def run_job(src: Path, strategy: str, write_behind: bool, args: argparse.Namespace, shard: Path, store: Path) -> dict[str, Any]:
    settings = {
        "write_behind": write_behind,
        "strategy": strategy,
        "batch_size": args.batch_size,
        "token_capacity": args.capacity,
        "ngram_capacity": args.capacity,
        "top_k": 32,
        "device": args.device,
        "dtype": args.dtype,
    }
    model = {"source": "random", "architecture": args.architecture}
    code = JOB.format(
        bench=str(Path(__file__).parent), model=model, tokenizer=TOKENIZER, settings=settings, shard=str(shard),
        store=str(store), threads=args.threads,
    )
    env = {**os.environ, "PYTHONPATH": f"{src.resolve()}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"capture job ({src}, {strategy}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_states(first: Path, other: Path) -> bool:
    import numpy as np

    from neuron_census.capture.store import read_store

    _, want = read_store(first)
    _, got = read_store(other)
    return sorted(got) == sorted(want) and all(
        sorted(got[name]) == sorted(want[name]) and all(np.array_equal(got[name][k], want[name][k]) for k in want[name])
        for name in want
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", action="append", default=[], help="NAME=PATH of a source tree (repeatable)")
    parser.add_argument("--strategies", nargs="+", default=["resident", "layerwise"])
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=2048, help="token_capacity and ngram_capacity (presets: 2048)")
    parser.add_argument("--rounds", type=int, default=1, help="the sources run in turn, this many times")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="capture.device: cpu, or cuda on a GPU host")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--write-behind", nargs="+", default=["on"], choices=["on", "off"],
        help="capture.write_behind settings to run (each source with each)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sources = [tuple(item.split("=", 1)) for item in args.src] or [("this", "src")]
    variants = [(name, src, behind == "on") for name, src in sources for behind in args.write_behind]

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_shard(args, folder / "shard.zarr")
        for strategy in args.strategies:
            for round_index in range(args.rounds):
                for name, src, behind in variants:
                    store = folder / f"{strategy}-{name}-{behind}-{round_index}.zarr"
                    result = run_job(Path(src), strategy, behind, args, folder / "shard.zarr", store)
                    reference = folder / f"{strategy}-{variants[0][0]}-{variants[0][2]}-0.zarr"
                    result |= {
                        "strategy": strategy, "source": name, "write_behind": behind, "round": round_index,
                        "same_states": same_states(reference, store),
                    }
                    runs.append(result)
                    print(json.dumps(result), flush=True)
                    if store != reference:
                        shutil.rmtree(store)

    lines = [
        f"capture job peak memory, {args.architecture} shapes, random weights, {args.n_seq} x {args.seq_len} tokens, "
        f"batch {args.batch_size}, capacities {args.capacity}, {args.device}, {args.dtype}, {time.strftime('%Y-%m-%d')}",
        "",
        "| strategy | source | write_behind | round | peak RSS MB | seconds | capture waiting for the store, s "
        "| store equals the first run's |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['strategy']} | {run['source']} | {'on' if run['write_behind'] else 'off'} | {run['round']} "
            f"| {run['peak_rss_mb']:.0f} | {run['seconds']:.1f} | {run['store_seconds']:.2f} "
            f"| {'yes' if run['same_states'] else 'NO'} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs})
    if not all(run["same_states"] for run in runs):
        raise SystemExit("stores differ between sources")


if __name__ == "__main__":
    main()
