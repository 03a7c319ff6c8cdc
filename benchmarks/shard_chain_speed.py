"""What does making token shard k of a long text dataset cost, as k grows? One tokenize job's work, three ways.

A dataset of local JSONL files (`files`, xz-compressed) and the same files read through Hugging Face
`datasets` (`hf`, the `json` builder, uncompressed), cut into shards of `--seq-per-shard` x `--seq-len`
GPT-2 BPE tokens. For shard k, timed in one process, alternating:

  from_start   no previous shard: every earlier document is read and tokenized again (as before shards chained)
  counted      the previous shard's cursor without its source position: earlier documents are read and
               skipped by count, only this shard's are tokenized (`bundled` datasets work this way)
  positioned   the previous shard's cursor with its position: the source goes on from the file (`files`)
               or stream state (`hf`) where the previous shard ended, what the tokenize rule does now

Every way must give the same tokens (checked). The text is the bundled corpus, repeated `--repeat` times
across `--files` files.

    python benchmarks/shard_chain_speed.py --shards 0 7 15 --out results/benchmarks/shard-chain-speed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import ROOT, write_results  # noqa: E402

WAYS = ("from_start", "counted", "positioned")


def write_files(folder: Path, n_files: int, repeat: int) -> list[str]:
    """The bundled corpus's documents, `repeat` times, as `n_files` JSONL files (plain and .xz); their names."""
    from neuron_census.data.corpus import iter_documents

    documents = list(iter_documents({"source": "bundled", "split": "all"}, ROOT)) * repeat
    per_file = -(-len(documents) // n_files)
    for f in range(n_files):
        lines = "".join(json.dumps({"text": doc}) + "\n" for doc in documents[f * per_file : (f + 1) * per_file])
        (folder / f"part{f:03d}.jsonl").write_text(lines)
        (folder / f"part{f:03d}.jsonl.xz").write_bytes(lzma.compress(lines.encode()))
    return [f"part{f:03d}.jsonl" for f in range(n_files)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[0, 7, 15])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seq-per-shard", type=int, default=64)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sources", nargs="+", default=["files", "hf"], choices=["files", "hf"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from neuron_census.data import corpus
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("gpt2", {"source": "gpt2_bpe"}, ROOT)
    n_shards = max(args.shards) + 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = write_files(folder, args.files, args.repeat)
        specs = {
            "files": {"source": "files", "paths": ["part*.jsonl.xz"]},
            "hf": {"source": "hf", "hf": {"path": "json", "data_files": names, "split": "train"}},
        }
        for source in args.sources:
            spec = {**specs[source], "split": "all", "seq_len": args.seq_len,
                    "sequences_per_shard": args.seq_per_shard, "n_shards": n_shards}
            cursors = [corpus.StreamCursor()]  # cursors[k]: where shard k starts
            for shard in range(n_shards):
                cursors.append(corpus.text_shard(spec, tokenizer, shard, folder, name=source, cursor=cursors[-1]).end)
            for round_ in range(args.rounds):
                for shard in args.shards:
                    starts = {
                        "from_start": corpus.StreamCursor(),
                        "counted": dataclasses.replace(cursors[shard], source=None),
                        "positioned": cursors[shard],
                    }
                    results = {}
                    for way, cursor in starts.items():
                        began = time.perf_counter()
                        tokens = corpus.text_shard(spec, tokenizer, shard, folder, name=source, cursor=cursor).tokens
                        seconds = time.perf_counter() - began
                        results[way] = tokens
                        rows.append({"source": source, "shard": shard, "way": way, "round": round_, "seconds": seconds,
                                     "file": json.loads(cursors[shard].source)["file"] if source == "files" and shard else 0})
                    assert all(np.array_equal(results["from_start"], t) for t in results.values()), (source, shard)
                    print(source, shard, {r["way"]: round(r["seconds"], 2) for r in rows[-3:]}, flush=True)

    lines = [
        f"shards of {args.seq_per_shard} x {args.seq_len} GPT-2 BPE tokens; bundled corpus x {args.repeat} in "
        f"{args.files} files; seconds to make shard k (median of {args.rounds} rounds; every way gave the same tokens)",
        "",
        "| source | shard k | " + " | ".join(WAYS) + " |",
        "|---|---:|" + "---:|" * len(WAYS),
    ]
    for source in args.sources:
        for shard in args.shards:
            cells = [
                float(np.median([r["seconds"] for r in rows if (r["source"], r["shard"], r["way"]) == (source, shard, way)]))
                for way in WAYS
            ]
            lines.append(f"| {source} | {shard} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
