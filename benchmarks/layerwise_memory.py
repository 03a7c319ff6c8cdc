"""How much memory does capture need for a model read from a safetensors checkpoint, per execution strategy?

A random-weight model with an exact architecture is saved once as a sharded float16 safetensors checkpoint
(as the OPT checkpoints come; capture reads it in float32 on the CPU, as it reads it in bfloat16 on a GPU,
so weights are converted as they load), then each placement runs in its own subprocess (so each peak is its own) and captures the same
tokens with firing counts, per-position counts and top-k:

  resident          the whole model on the capture device
  layerwise-cpu     the model in CPU memory, one layer at a time on the device (`layerwise_weights: cpu`)
  layerwise-disk    the decoder layers read in place from the checkpoint, one at a time (`layerwise_weights: disk`)

Reported: peak anonymous memory (sampled every 10 ms: what the process itself allocated; pages of the
memory-mapped checkpoint are file-backed and count in RSS but the kernel can drop them), peak RSS, RSS once
the model is loaded, the wall time of capture, and whether the firing counts equal the first placement's.

    python benchmarks/layerwise_memory.py --architecture opt-1.3b --out results/benchmarks/layerwise-memory-opt-1.3b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import _peak_rss_mb, _rss_mb, corpus_tokens, write_results  # noqa: E402

MODES = {
    "resident": {"strategy": "resident"},
    "layerwise-cpu": {"strategy": "layerwise", "layerwise_weights": "cpu"},
    "layerwise-disk": {"strategy": "layerwise", "layerwise_weights": "disk"},
}
ACCUMULATORS = ("fire_count", "position_fire_count", "top_k")


def _anonymous_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@contextmanager
def peak_anonymous_mb(every_s: float = 0.01) -> Iterator[list[float]]:
    """Yields a one-item list that holds the largest anonymous RSS sampled while the block runs."""
    peak = [_anonymous_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            peak[0] = max(peak[0], _anonymous_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], _anonymous_mb())


def save_checkpoint(architecture: str, n_layers: int | None, folder: Path) -> int:
    """A random model of `architecture` as a sharded float16 safetensors checkpoint; returns its weight bytes."""
    import torch

    from neuron_census.models.zoo import build_random_model

    model = build_random_model(architecture, seed=0, n_layers=n_layers).to(torch.float16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="500MB")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from neuron_census.capture.engine import CaptureSettings, capture_tokens
    from neuron_census.capture.placement import Placement
    from neuron_census.models.loading import load_model

    torch.set_num_threads(args.threads)
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    placement = Placement(**MODES[args.mode])
    with tempfile.TemporaryDirectory(prefix="census-bench-") as offload, peak_anonymous_mb() as anonymous:
        loaded = load_model(
            "m", {"source": "local", "path": str(args.checkpoint)}, device=args.device, placement=placement,
            offload_dir=Path(offload),
        )
        rss_loaded = _rss_mb()
        start = time.perf_counter()
        _, states = capture_tokens(
            loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
            settings=CaptureSettings(batch_size=args.batch_size, accumulators=ACCUMULATORS),
            device=torch.device(args.device), placement=placement, offload_dir=Path(offload), progress=False,
        )
        seconds = time.perf_counter() - start
    digest = hashlib.sha256(states["fire_count"]["counts"].tobytes()).hexdigest()[:16]
    return {"mode": args.mode, "tokens": int(tokens.size), "peak_anonymous_mb": anonymous[0],
            "rss_loaded_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb(), "capture_s": seconds, "fire_count_sha256": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-1.3b")
    parser.add_argument("--n-layers", type=int, default=None, help="fewer layers than the architecture's")
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="census-checkpoint-") as checkpoint:
        weight_bytes = save_checkpoint(args.architecture, args.n_layers, Path(checkpoint))
        for mode in args.modes:
            command = [
                sys.executable, __file__, "--worker", "--mode", mode, "--checkpoint", checkpoint,
                "--n-seq", str(args.n_seq), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                "--threads", str(args.threads), "--device", args.device,
            ]
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    reference = rows[0]["fire_count_sha256"]
    lines = [
        f"{args.architecture}{f' ({args.n_layers} layers)' if args.n_layers else ''}, random weights saved as "
        f"float16 safetensors ({weight_bytes / 2**20:.0f} MB), read in float32 on {args.device}, "
        f"{args.n_seq} x {args.seq_len} tokens, batch {args.batch_size}, accumulators {', '.join(ACCUMULATORS)}.",
        "",
        "| placement | peak anonymous MB | peak RSS MB | RSS after load MB | capture s | firing counts equal the first row's |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        same = "yes" if row["fire_count_sha256"] == reference else "**no**"
        lines.append(
            f"| {row['mode']} | {row['peak_anonymous_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['rss_loaded_mb']:.0f} "
            f"| {row['capture_s']:.1f} | {same} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table, rows)


if __name__ == "__main__":
    main()
