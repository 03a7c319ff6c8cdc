"""Where a whole capture's wall time goes, next to the bare forward pass, without a profiler.

Every accumulator's `update`, `take_layer` and `state` is timed with `time.perf_counter` (on a GPU, after a
device synchronisation, so each call is charged its own kernels), and the table splits the capture into:
the bare forward (timed alone, in the same process, just before), each accumulator's calls (with its first
batch of each layer apart from the later ones: a layer's first batch of top-k ranks rows densely), and the
rest (hooks, the firing matrix, the finiteness check, handing layers over). Bare and capture alternate
`--rounds` times, so a host whose speed drifts slows both alike.

    python benchmarks/capture_breakdown.py --architecture opt-125m --n-seq 64 --batch-size 16 \
        --fire-rate 0.05 --token-capacity 2048 --rounds 2 --out benchmarks/results/capture-breakdown-opt-125m
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import _sync, corpus_tokens, load_model, mode_runner, use_job_allocator  # noqa: E402

TIMED_METHODS = ("update", "take_layer", "state")


class CallTimes:
    """Seconds spent in each (accumulator, method), the updates kept per call in call order."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.updates: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)

    def clear(self) -> None:
        self.seconds.clear()
        self.updates.clear()

    def wrap_accumulators(self) -> None:
        from neuron_census import accumulators

        for cls in vars(accumulators).values():
            if not (isinstance(cls, type) and hasattr(cls, "update") and hasattr(cls, "name")):
                continue
            for method in TIMED_METHODS:
                if method in vars(cls):
                    setattr(cls, method, self._timed(cls.name, method, getattr(cls, method)))

    def _timed(self, name: str, method: str, original: Any) -> Any:
        def timed(accumulator: Any, *args: Any, **kwargs: Any) -> Any:
            _sync(self.device)
            start = time.perf_counter()
            result = original(accumulator, *args, **kwargs)
            _sync(self.device)
            seconds = time.perf_counter() - start
            self.seconds[f"{name}.{method}"] += seconds
            if method == "update":
                self.updates[name].append((args[0].layer, seconds))
            return result

        return timed

    def first_batch_seconds(self, name: str) -> float:
        """Seconds of `name`'s updates on each layer's first batch."""
        seen: set[int] = set()
        total = 0.0
        for layer, seconds in self.updates[name]:
            if layer not in seen:
                seen.add(layer)
                total += seconds
        return total


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    use_job_allocator(args)
    torch.set_num_threads(args.threads)
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    model = load_model(args, tokens)
    times = CallTimes(args.device)
    times.wrap_accumulators()
    bare, capture = mode_runner("bare", args, model), mode_runner("capture", args, model)
    bare(tokens[: args.batch_size])  # warm-up
    capture(tokens[: args.batch_size])
    rounds = []
    for _ in range(args.rounds):
        _sync(args.device)
        start = time.perf_counter()
        bare(tokens)
        _sync(args.device)
        bare_s = time.perf_counter() - start
        times.clear()
        start = time.perf_counter()
        capture(tokens)
        _sync(args.device)
        capture_s = time.perf_counter() - start
        names = sorted({key.split(".")[0] for key in times.seconds})
        rounds.append(
            {
                "bare_s": bare_s,
                "capture_s": capture_s,
                "calls_s": dict(times.seconds),
                "first_batch_update_s": {name: times.first_batch_seconds(name) for name in names},
            }
        )
    return {"tokens": int(tokens.size), "rounds": rounds}


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    rounds = result["rounds"]
    lines = [
        f"{meta['architecture']}, {meta['device']}, {meta['dtype']}, {meta['threads']} threads, {meta['n_seq']} x "
        f"{meta['seq_len']} tokens, batch {meta['batch_size']}, fire rate {meta['fire_rate']}, token_capacity "
        f"{meta['token_capacity']}, ngram_capacity {meta['ngram_capacity']}; {len(rounds)} alternating round(s), "
        "seconds per round.",
        "",
        "| part | " + " | ".join(f"round {i + 1} s" for i in range(len(rounds))) + " | share of capture |",
        "|---|" + "---:|" * len(rounds) + "---:|",
    ]

    def row(label: str, values: list[float], share: bool = True) -> None:
        shares = statistics.median(v / r["capture_s"] for v, r in zip(values, rounds)) if share else None
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {label} | {cells} | {'' if shares is None else f'{shares:.1%}'} |")

    row("bare forward", [r["bare_s"] for r in rounds], share=False)
    row("**capture**", [r["capture_s"] for r in rounds])
    keys = sorted({k for r in rounds for k in r["calls_s"]}, key=lambda k: -rounds[0]["calls_s"].get(k, 0.0))
    for key in keys:
        values = [r["calls_s"].get(key, 0.0) for r in rounds]
        if max(values) < 0.005:
            continue
        row(key, values)
        name, method = key.split(".")
        if method == "update" and name in rounds[0]["first_batch_update_s"]:
            row(f"{key}, first batch of each layer", [r["first_batch_update_s"][name] for r in rounds])
    row("rest of capture (hooks, firing matrix, finiteness sums, hand-over)", [
        r["capture_s"] - r["bare_s"] - sum(r["calls_s"].values()) for r in rounds
    ])
    ratios = " / ".join(f"{r['bare_s'] / r['capture_s']:.2f}x" for r in rounds)
    lines += ["", f"Capture against the bare forward in each round: {ratios}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-125m")
    parser.add_argument("--n-seq", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--fire-rate", type=float, default=0.05)
    parser.add_argument("--token-capacity", type=int, default=2048)
    parser.add_argument("--ngram-capacity", type=int, default=2048)
    parser.add_argument("--default-allocator", action="store_true", help="glibc's allocator, not the capture job's")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    args.merge_pending = None
    result = measure(args)
    meta = {key: getattr(args, key) for key in (
        "architecture", "device", "dtype", "threads", "n_seq", "seq_len", "batch_size", "fire_rate",
        "token_capacity", "ngram_capacity",
    )}
    text = markdown(result, meta)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=1))
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
