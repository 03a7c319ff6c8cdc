"""Does capture's memory grow with the number of tokens? Peak RSS at N and at 10 x N tokens.

Each (accumulator set, token count) runs in its own subprocess on the same random-weight model, so each
peak is its own. Reported: peak RSS, RSS once the model and tokens are loaded, and their difference (what
capture itself holds), for

  dense   firing counts, per-position counts, token counts, top-k examples, moments: fixed-size state
  ngrams  dense + bigram/trigram summaries (at most `--ngram-capacity` n-grams per neuron) and n-gram counts
  all     ngrams + sparse token x neuron firing counts: exact (at most layers x vocabulary x neurons pairs),
          or at most `--token-capacity` tokens per neuron

    python benchmarks/memory_scaling.py --architecture opt-125m --n-seq 8 --factor 10 --out results/benchmarks/memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import _peak_rss_mb, _rss_mb, corpus_tokens, set_fire_rate, write_results  # noqa: E402

SETS = {
    "dense": ("fire_count", "position_fire_count", "token_count", "top_k", "moments"),
    "ngrams": ("fire_count", "position_fire_count", "token_count", "top_k", "moments", "ngram_fire_count", "ngram_count"),
    "all": None,
}


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from neuron_census.models.adapters import adapter_for
    from neuron_census.capture.engine import CaptureSettings, capture_tokens
    from neuron_census.models.zoo import build_random_model

    torch.set_num_threads(args.threads)
    model = build_random_model(args.architecture, seed=0, n_layers=args.n_layers).eval().requires_grad_(False)
    adapter = adapter_for(model, name=args.architecture)
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    if args.fire_rate is not None:
        set_fire_rate(model, tokens, args.fire_rate, "cpu")
    names = SETS[args.set]
    settings = CaptureSettings(
        batch_size=args.batch_size,
        ngram_capacity=args.ngram_capacity,
        token_capacity=args.token_capacity,
        **({"accumulators": names} if names else {}),
        **({"pending_bytes": args.pending_bytes} if args.pending_bytes else {}),
    )
    loaded = _rss_mb()
    capture_tokens(
        model, adapter, tokens, model_name=args.architecture, first_seq_id=0, has_bos=True,
        settings=settings, device=torch.device("cpu"), progress=False,
    )
    peak = _peak_rss_mb()
    return {"set": args.set, "tokens": int(tokens.size), "rss_loaded_mb": loaded, "peak_rss_mb": peak,
            "capture_mb": peak - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--n-layers", type=int, default=None, help="fewer layers than the architecture's")
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ngram-capacity", type=int, default=2048)
    parser.add_argument("--token-capacity", type=int, default=None, help="default: exact token x neuron counts")
    parser.add_argument("--pending-bytes", type=int, default=None, help="capture.pending_bytes (default: its default)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--fire-rate", type=float, default=None, help="shift FFN biases so this share fires")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for name in args.sets:
        for n_seq in (args.n_seq, args.n_seq * args.factor):
            command = [
                sys.executable, __file__, "--worker", "--set", name, "--architecture", args.architecture,
                "--n-seq", str(n_seq), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                "--threads", str(args.threads), "--ngram-capacity", str(args.ngram_capacity),
            ] + (["--n-layers", str(args.n_layers)] if args.n_layers else []) + (
                ["--token-capacity", str(args.token_capacity)] if args.token_capacity else []
            ) + (
                ["--pending-bytes", str(args.pending_bytes)] if args.pending_bytes else []
            ) + (
                [] if args.fire_rate is None else ["--fire-rate", str(args.fire_rate)]
            )
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"{args.architecture}{f' ({args.n_layers} layers)' if args.n_layers else ''}, random weights"
        f"{'' if args.fire_rate is None else f' (FFN biases shifted so {args.fire_rate:g} fire)'}, "
        f"seq_len {args.seq_len}, batch {args.batch_size}, ngram_capacity {args.ngram_capacity}, "
        f"token_capacity {args.token_capacity or 'none (exact)'}, "
        f"pending_bytes {args.pending_bytes or 'default'}.",
        "",
        "| accumulators | tokens | peak RSS MB | after load MB | held by capture MB | peak vs smaller run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for small, large in zip(rows[::2], rows[1::2]):
        for row in (small, large):
            growth = row["peak_rss_mb"] / small["peak_rss_mb"] - 1
            lines.append(
                f"| {row['set']} | {row['tokens']} | {row['peak_rss_mb']:.0f} | {row['rss_loaded_mb']:.0f} "
                f"| {row['capture_mb']:.0f} | {growth:+.1%} |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, rows)


if __name__ == "__main__":
    main()
