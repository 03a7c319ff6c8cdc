"""Capture speed side by side: bare forward, this pipeline's capture, TransformerLens and nnsight.

Every mode runs in its own subprocess (so each one's peak memory is its own) on the same random-weight
model (exact shapes of the named architecture, same seed), the same tokens (bundled corpus text, GPT-2 BPE)
and the same batch size, one after the other in one invocation. Each mode is warmed up on one batch, then
timed over all sequences `--repeats` times; the median counts. With `--rounds R` the whole sequence of modes
runs R times over, so that a machine whose speed drifts (a shared host) slows every mode alike; each mode's
ratio to the bare forward is then taken within each round, and the table gives the median and every round's.

    python benchmarks/capture_speed.py --architectures opt-125m opt-1.3b --out results/benchmarks/cpu

Modes:
  bare             the Hugging Face decoder forward (no LM head), no hooks
  capture          neuron_census capture with every accumulator, as the capture job runs it: each finished
                   layer written behind into a zarr store (a temporary one), or with `--sink memory` every
                   layer's states joined in memory and returned (what `capture_tokens` does without a sink)
  capture_dense_tokens
                   the same with token x neuron counts kept in place in dense tables (exact;
                   capture.token_fire_dense_limit raised above the model's cells)
  capture_fire_pos neuron_census capture with firing and per-position firing counts only
  transformer_lens run_with_cache on one hook point per layer, then the same firing and position counts
  nnsight          nnsight trace saving each layer's FFN activation, then the same counts
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODES = ("bare", "capture", "capture_dense_tokens", "capture_fire_pos", "transformer_lens", "nnsight")
# run unless --modes says otherwise; dense token tables take layers x vocabulary x neurons x 4 bytes
# (39.5 GB for OPT-1.3b), so they are measured only when asked for
DEFAULT_MODES = tuple(mode for mode in MODES if mode != "capture_dense_tokens")
ROOT = Path(__file__).resolve().parents[1]


def corpus_tokens(n_seq: int, seq_len: int):
    """`n_seq` x `seq_len` GPT-2 BPE ids of held-out bundled text, BOS (</s> = 2, as OPT) first."""
    from neuron_census.data.corpus import shard_sequences
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("gpt2", {"source": "gpt2_bpe", "bos": "<|endoftext|>"}, ROOT)
    spec = {"source": "bundled", "split": "heldout", "seq_len": seq_len, "sequences_per_shard": n_seq, "n_shards": 1}
    tokens = shard_sequences(spec, tokenizer, 0, ROOT, dataset="corpus").astype("int64")
    tokens[:, 0] = 2
    return tokens


def forward_flops_per_token(model: Any, seq_len: int) -> float:
    """2 x decoder-layer parameters + causal attention (QK^T and AV over seq_len/2 keys on average)."""
    from neuron_census.models.adapters import adapter_for

    adapter = adapter_for(model)
    layers = adapter.decoder_layers()
    params = sum(p.numel() for p in layers.parameters())
    return 2.0 * params + 2.0 * len(layers) * seq_len * adapter.d_model


def matmul_peak_gflops(device: str, dtype: Any, size: int | None = None, repeats: int = 10) -> float:
    """Best sustained GFLOP/s of square matmuls on this device, the machine's measured peak.

    On a GPU the products are 8192 wide and timed ten at a time (one alone is over before the launch
    latency is); on a CPU one 2048-wide product is timed at a time.
    """
    import torch

    on_gpu = device.startswith("cuda")
    size = size or (8192 if on_gpu else 2048)
    per_timing = 10 if on_gpu else 1
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(per_timing):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / per_timing)
    return 2 * size**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_results(out: Path | None, table: str, data: Any = None) -> None:
    """<out>.md (the table as printed) and, when given, <out>.json (every number); nothing without `out`."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (out.parent / f"{out.name}.json").write_text(json.dumps(data, indent=1))
    (out.parent / f"{out.name}.md").write_text(table)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS since exec: VmHWM (`ru_maxrss` starts a forked child at its parent's RSS)."""
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_fire_rate(model: Any, tokens: Any, rate: float, device: str) -> None:
    """Shift every FFN input bias so that about `rate` of the pre-activations are positive.

    Random weights fire on half of all (token, neuron) pairs; trained OPT layers on a few percent, and the
    sparse accumulators' cost follows the number of firings. The shift is the (1 - rate) quantile of each
    layer's pre-activations on the first sequences, in one forward pass: a hook on each FFN input projection
    moves its bias and its output by the same amount, so every layer is measured after the layers below moved
    (one pass instead of one per layer, which took OPT-1.3b minutes on a CPU).
    """
    import torch

    sample = torch.from_numpy(tokens[:2]).to(device)

    def shift(fc1: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        values = output.detach().float().reshape(-1)
        generator = torch.Generator(device=values.device).manual_seed(0)  # drawn where the values are: fast on a GPU
        values = values[torch.randperm(len(values), generator=generator, device=values.device)[:1_000_000]]
        quantile = torch.quantile(values, 1.0 - rate)
        fc1.bias -= quantile.to(fc1.bias.dtype)
        return output - quantile.to(output.dtype)

    handles = [layer.fc1.register_forward_hook(shift) for layer in model.model.decoder.layers]  # OPT's FFN inputs
    try:
        with torch.no_grad():
            model.base_model(input_ids=sample, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def load_model(args: argparse.Namespace, tokens: Any) -> Any:
    """The seeded random-weight model of `args.architecture`, its FFN biases shifted when `--fire-rate` is set."""
    import torch

    from neuron_census.models.zoo import build_random_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = build_random_model(args.architecture, seed=0, dtype=dtype, device=args.device)
    model = model.eval().requires_grad_(False)
    if args.fire_rate is not None:
        set_fire_rate(model, tokens, args.fire_rate, args.device)
    return model


def mode_runner(mode: str, args: argparse.Namespace, model: Any) -> Callable[[Any], None]:
    """A function that runs `mode` over a [n_seq, seq_len] token array (TransformerLens converts `model`)."""
    import numpy as np
    import torch

    from neuron_census.models.adapters import adapter_for
    from neuron_census.capture.engine import CaptureSettings, capture_tokens
    from neuron_census.capture.layer_states import written_behind
    from neuron_census.capture.store import writing_store

    device = args.device
    adapter = adapter_for(model, name=args.architecture)
    layers = list(range(adapter.n_layers))
    batch = args.batch_size

    if mode == "bare":
        base = model.base_model

        def run(rows: np.ndarray) -> None:
            with torch.inference_mode():
                for start in range(0, len(rows), batch):
                    base(input_ids=torch.from_numpy(rows[start : start + batch]).to(device), use_cache=False)

    elif mode in ("capture", "capture_dense_tokens", "capture_fire_pos"):
        names = ("fire_count", "position_fire_count") if mode == "capture_fire_pos" else None
        settings = CaptureSettings(
            batch_size=batch,
            ngram_capacity=args.ngram_capacity,
            token_capacity=args.token_capacity,
            **({"token_fire_dense_limit": 1 << 62} if mode == "capture_dense_tokens" else {}),
            **({"accumulators": names} if names else {}),
            **({"pending_bytes": args.pending_bytes} if args.pending_bytes else {}),
        )

        def capture(rows: np.ndarray, sink: Any = None) -> None:
            capture_tokens(
                model, adapter, rows, model_name=args.architecture, first_seq_id=0, has_bos=True,
                settings=settings, device=torch.device(device), progress=False, sink=sink,
            )

        def run(rows: np.ndarray) -> None:
            if args.sink == "memory":
                return capture(rows)
            with (
                tempfile.TemporaryDirectory(prefix="capture-speed-") as folder,
                writing_store(Path(folder) / "capture.zarr", {}) as store,
                written_behind(store) as sink,
            ):
                capture(rows, sink)

    elif mode == "transformer_lens":
        sys.path.insert(0, str(Path(__file__).parent))
        from baselines import transformer_lens_counts, transformer_lens_model

        tl_model = transformer_lens_model(model)

        def run(rows: np.ndarray) -> None:
            transformer_lens_counts(tl_model, torch.from_numpy(rows), batch, layers)

    elif mode == "nnsight":
        sys.path.insert(0, str(Path(__file__).parent))
        from baselines import nnsight_counts

        def run(rows: np.ndarray) -> None:
            nnsight_counts(model, torch.from_numpy(rows), batch, layers)

    else:
        raise ValueError(f"unknown mode {mode}")
    return run


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process: load, warm up, time; returns tokens/s and memory."""
    import torch

    from neuron_census.models.adapters import adapter_for

    torch.set_num_threads(args.threads)
    device = args.device
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    batch = args.batch_size
    model = load_model(args, tokens)
    flops_per_token = forward_flops_per_token(adapter_for(model).model, args.seq_len)
    run = mode_runner(args.mode, args, model)
    if args.mode == "transformer_lens":
        del model  # the converted copy is all it needs
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loaded_rss = _rss_mb()
    run(tokens[:batch])  # warm-up
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        run(tokens)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {
        "mode": args.mode,
        "architecture": args.architecture,
        "tokens": int(tokens.size),
        "seconds": seconds,
        "seconds_all": times,
        "tokens_per_s": tokens.size / seconds,
        "rss_loaded_mb": loaded_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.mode == "bare":
        result["flops_per_token"] = flops_per_token
    return result


def _worker_command(args: argparse.Namespace, architecture: str, mode: str) -> list[str]:
    return [
        sys.executable, __file__, "--worker", "--mode", mode, "--architecture", architecture,
        "--n-seq", str(args.n_seq), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device,
        "--dtype", args.dtype, "--ngram-capacity", str(args.ngram_capacity),
    ] + ([] if args.fire_rate is None else ["--fire-rate", str(args.fire_rate)]) + (
        [] if args.token_capacity is None else ["--token-capacity", str(args.token_capacity)]
    ) + ([] if args.pending_bytes is None else ["--pending-bytes", str(args.pending_bytes)])


def markdown(results: list[dict[str, Any]], peak: float, meta: dict[str, Any]) -> str:
    rate = meta.get("fire_rate")
    weights = "random weights" if rate is None else f"random weights, FFN biases shifted so {rate:g} of neurons fire"
    lines = [
        f"Device {meta['device']} ({meta['cpu']}), {meta['threads']} threads, {meta['dtype']}, "
        f"{meta['n_seq']} sequences x {meta['seq_len']} tokens, batch {meta['batch_size']}, "
        f"median of {meta['repeats']} in each of {meta.get('rounds', 1)} round(s); matmul peak {peak:.0f} GFLOP/s; {weights}; "
        f"ngram_capacity {meta['ngram_capacity']}, token_capacity {meta['token_capacity'] or 'none (exact)'}"
        f"{'' if meta['pending_bytes'] is None else ', pending_bytes ' + str(meta['pending_bytes'])}.",
        "",
        "| model | mode | tokens/s | x bare | x bare in each round | peak RSS MB | RSS after load MB "
        "| bare GFLOP/s (share of matmul peak) |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for arch in dict.fromkeys(r["architecture"] for r in results):
        rows = [r for r in results if r["architecture"] == arch]
        for mode in dict.fromkeys(r["mode"] for r in rows):
            runs = [r for r in rows if r["mode"] == mode]
            failed = next((r for r in runs if "error" in r), None)
            if failed:
                lines.append(f"| {arch} | {mode} | failed: {failed['error']} | | | | | |")
                continue
            ratios = [r["tokens_per_s"] / bare["tokens_per_s"] for r in runs if (bare := _bare_of(rows, r))]
            speed = statistics.median(r["tokens_per_s"] for r in runs)
            flops = ""
            if mode == "bare":
                achieved = runs[0]["flops_per_token"] * speed / 1e9
                flops = f"{achieved:.0f} ({achieved / peak:.0%})"
            lines.append(
                f"| {arch} | {mode} | {speed:.0f} | {statistics.median(ratios):.2f} | "
                f"{' / '.join(f'{x:.2f}' for x in ratios)} | {max(r['peak_rss_mb'] for r in runs):.0f} "
                f"| {max(r['rss_loaded_mb'] for r in runs):.0f} | {flops} |"
            )
    return "\n".join(lines) + "\n"


def _bare_of(rows: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any] | None:
    """The bare forward of the same round as `run`, if it succeeded."""
    return next(
        (r for r in rows if r["mode"] == "bare" and r.get("round") == run.get("round") and "error" not in r), None
    )


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Device, dtype, capture settings, firing rate and output: the options every speed benchmark shares."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--ngram-capacity", type=int, default=2048, help="as the OPT presets set it")
    parser.add_argument("--token-capacity", type=int, default=None, help="default: exact token x neuron counts")
    parser.add_argument(
        "--sink", default="store", choices=("store", "memory"),
        help="where capture modes put each finished layer: a zarr store, as the capture job does (default), or memory",
    )
    parser.add_argument("--pending-bytes", type=int, default=None, help="capture.pending_bytes (default: its default)")
    parser.add_argument("--fire-rate", type=float, default=None, help="shift FFN biases so this share fires")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=["opt-125m", "opt-1.3b"])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    parser.add_argument("--n-seq", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="run the whole sequence of modes this many times")
    add_setting_arguments(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--architecture", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_mode(args)))
        return

    import platform

    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(args.device, getattr(torch, args.dtype))
    results = []
    for arch in args.architectures:
        for round_index in range(args.rounds):
            for mode in args.modes:
                proc = subprocess.run(_worker_command(args, arch, mode), capture_output=True, text=True)
                if proc.returncode != 0:
                    error = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
                    results.append({"mode": mode, "architecture": arch, "error": error})
                else:
                    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                results[-1]["round"] = round_index
                print(json.dumps(results[-1]), flush=True)
    meta = {
        "device": args.device, "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "dtype": args.dtype, "n_seq": args.n_seq, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "repeats": args.repeats, "rounds": args.rounds, "matmul_peak_gflops": peak, "torch": torch.__version__,
        "fire_rate": args.fire_rate, "ngram_capacity": args.ngram_capacity, "token_capacity": args.token_capacity,
        "pending_bytes": args.pending_bytes,
    }
    table = markdown(results, peak, meta)
    print(table)
    write_results(args.out, table, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
