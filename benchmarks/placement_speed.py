"""Capture of a model larger than the GPU budget: resident, layerwise and offload side by side on one GPU.

One random-weight OPT model of an exact architecture (OPT-30b by default, 60 GB in bfloat16) is drawn on
the GPU itself (drawing 30b weights on a CPU in float32 first takes many minutes), its FFN biases shifted
so that `--fire-rate` of the neurons fire, and then captured with every accumulator (the OPT presets'
capacities) in three placements, one after the other in this process, over the same tokens:

  resident   the whole model on the GPU (a reference: it fits an H200's memory, not the budget)
  layerwise  the model in CPU memory; each decoder layer moved to the GPU once per shard, hidden states
             of the whole shard kept on the CPU between layers (`capture.strategy: layerwise`)
  layerwise_gpu_states  the same with the shard's hidden states kept on the GPU (`layerwise_states: device`)
  offload    Accelerate big-model inference within `--gpu-budget` of GPU memory, the rest in CPU memory
             and streamed to the GPU on every batch (`capture.strategy: offload`, `max_memory`)

The first placement is warmed up on one batch (kernels, allocator); the later ones run cold, as a
capture job runs each layerwise shard. Each placement also times the bare Hugging Face forward placed the same way (no hooks; layerwise has no
such forward: Hugging Face runs whole models). Reported: tokens/s, the ratio to the resident bare forward,
the share of the measured bfloat16 matmul peak that the forward's FLOPs reach at that speed, peak GPU
memory, and whether the firing counts equal the resident capture's.

    python benchmarks/placement_speed.py --architecture opt-30b --gpu-budget 16GiB \
        --out results/benchmarks/gpu-placement-opt-30b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import (  # noqa: E402
    _peak_rss_mb,
    _sync,
    corpus_tokens,
    forward_flops_per_token,
    matmul_peak_gflops,
    set_fire_rate,
    write_results,
)


def random_model_on(architecture: str, device: str, dtype: Any, seed: int = 0) -> Any:
    """An OPT model of `architecture` with weights drawn on `device`: N(0, init_std) matrices, zero biases,
    unit norms (OPT's own initialiser, drawn where the model lives)."""
    import torch
    from transformers import AutoModelForCausalLM

    from neuron_census.models.zoo import architecture_config

    config = architecture_config(architecture)
    if config.model_type != "opt":
        raise ValueError(f"{architecture}: only OPT architectures are drawn on the device here")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device=device)
    if any(True for _ in model.buffers()):
        raise ValueError(f"{architecture}: the model has buffers, which this initialiser does not fill")
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, config.init_std, generator=generator)
            elif name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    model.tie_weights()
    return model.eval().requires_grad_(False)


def _timed(run: Callable[[], Any], device: str, repeats: int) -> tuple[float, list[float], Any]:
    """Median seconds of `repeats` runs (after the caller's warm-up), every run's, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="opt-30b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--gpu-budget", default="16GiB", help="offload's max_memory for the GPU")
    parser.add_argument("--cpu-budget", default="110GiB", help="offload's max_memory for the CPU")
    parser.add_argument("--placements", nargs="+", default=["resident", "layerwise", "layerwise_gpu_states", "offload"])
    parser.add_argument("--n-seq", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fire-rate", type=float, default=0.05)
    parser.add_argument("--ngram-capacity", type=int, default=2048, help="as the OPT presets set it")
    parser.add_argument("--token-capacity", type=int, default=2048, help="as the OPT presets set it")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    if "offload" in args.placements[:-1]:
        parser.error("offload must come last: dispatching leaves the model's offloaded weights with Accelerate")

    import torch

    from neuron_census.models.adapters import adapter_for
    from neuron_census.capture.engine import CaptureSettings, capture_tokens
    from neuron_census.capture.placement import Placement, dispatch_offloaded

    device, dtype = args.device, getattr(torch, args.dtype)
    on_gpu = device.startswith("cuda")
    peak = matmul_peak_gflops(device, dtype)
    tokens = corpus_tokens(args.n_seq, args.seq_len)
    started = time.perf_counter()
    model = random_model_on(args.architecture, device, dtype)
    set_fire_rate(model, tokens, args.fire_rate, device)
    built_s = time.perf_counter() - started
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    flops_per_token = forward_flops_per_token(model, args.seq_len)
    settings = CaptureSettings(
        batch_size=args.batch_size, ngram_capacity=args.ngram_capacity, token_capacity=args.token_capacity
    )
    placements = {
        "resident": Placement(),
        "layerwise": Placement(strategy="layerwise"),
        "layerwise_gpu_states": Placement(strategy="layerwise", layerwise_states="device"),
        "offload": Placement(strategy="offload", max_memory={"0": args.gpu_budget, "cpu": args.cpu_budget}),
    }
    rows: list[dict[str, Any]] = []
    offloaded_layers = 0

    def bare(rows_of_tokens: Any) -> None:
        with torch.inference_mode():
            for start in range(0, len(rows_of_tokens), args.batch_size):
                batch = torch.from_numpy(rows_of_tokens[start : start + args.batch_size]).to(device)
                model.base_model(input_ids=batch, use_cache=False)

    with tempfile.TemporaryDirectory(prefix="census-offload-") as folder:
        for name in args.placements:
            placement = placements[name]
            if name != "resident":
                model.to("cpu")
            if name == "offload":
                device_map = dispatch_offloaded(model, torch.device(device), placement.max_memory, Path(folder))
                offloaded_layers = sum(1 for key, where in device_map.items() if ".layers." in key and where == "cpu")
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            adapter = adapter_for(model, name=args.architecture)

            def capture(rows_of_tokens: Any, placement: Any = placement, adapter: Any = adapter) -> Any:
                return capture_tokens(
                    model, adapter, rows_of_tokens, model_name=args.architecture, first_seq_id=0, has_bos=True,
                    settings=settings, device=torch.device(device), placement=placement, offload_dir=Path(folder),
                    progress=False,
                )[1]

            timings = {}
            warm_up = name == args.placements[0]  # kernels and allocator; a layerwise warm-up moves every weight
            if not name.startswith("layerwise"):
                if warm_up:
                    bare(tokens[: args.batch_size])
                timings["bare forward"] = _timed(lambda: bare(tokens), device, args.repeats)
            if warm_up:
                capture(tokens[: args.batch_size])
            timings["capture"] = _timed(lambda: capture(tokens), device, args.repeats)
            for what, (seconds, every, result) in timings.items():
                row = {
                    "placement": name, "run": what, "seconds": seconds, "seconds_all": every,
                    "tokens_per_s": tokens.size / seconds, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if on_gpu else 0.0,
                    "peak_rss_gb": _peak_rss_mb() / 1024,
                }
                if result is not None:
                    counts = result["fire_count"]["counts"]
                    row["fire_count_sha256"] = hashlib.sha256(counts.tobytes()).hexdigest()[:16]
                    row["fire_share"] = float(counts.sum()) / (result["fire_count"]["tokens"].sum() * counts.shape[1])
                rows.append(row)
                print(json.dumps(row), flush=True)

    meta = {
        "architecture": args.architecture, "device": torch.cuda.get_device_name() if on_gpu else device,
        "dtype": args.dtype, "n_seq": args.n_seq, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "repeats": args.repeats, "gpu_budget": args.gpu_budget, "weight_gb": weight_gb, "built_s": built_s,
        "matmul_peak_gflops": peak, "flops_per_token": flops_per_token, "fire_rate": args.fire_rate,
        "ngram_capacity": args.ngram_capacity, "token_capacity": args.token_capacity, "torch": torch.__version__,
        "offload_layers_in_cpu_memory": offloaded_layers,
    }
    table = markdown(rows, meta)
    print(table)
    write_results(args.out, table, {"meta": meta, "rows": rows})


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    n_tokens = meta["n_seq"] * meta["seq_len"]
    resident_bare = next((r for r in rows if r["placement"] == "resident" and r["run"] == "bare forward"), None)
    reference = next((r.get("fire_count_sha256") for r in rows if r.get("fire_count_sha256")), None)
    lines = [
        f"{meta['architecture']} shapes, random weights ({meta['weight_gb']:.1f} GB in {meta['dtype']}), FFN biases "
        f"shifted so {meta['fire_rate']:g} of neurons fire; {meta['device']}; {meta['n_seq']} x {meta['seq_len']} "
        f"tokens ({n_tokens}), batch {meta['batch_size']}, median of {meta['repeats']}; offload GPU budget "
        f"{meta['gpu_budget']}; ngram_capacity {meta['ngram_capacity']}, token_capacity {meta['token_capacity']}; "
        f"measured {meta['dtype']} matmul peak {meta['matmul_peak_gflops'] / 1000:.1f} TFLOP/s; "
        f"{meta['flops_per_token'] / 1e9:.1f} GFLOP per token.",
        "",
        "| placement | run | tokens/s | x resident bare | share of matmul peak | peak GPU GB | firing counts equal resident's |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ratio = f"{resident_bare['seconds'] / row['seconds']:.2f}" if resident_bare else "-"
        share = row["tokens_per_s"] * meta["flops_per_token"] / (meta["matmul_peak_gflops"] * 1e9)
        same = "-" if "fire_count_sha256" not in row else ("yes" if row["fire_count_sha256"] == reference else "**no**")
        lines.append(
            f"| {row['placement']} | {row['run']} | {row['tokens_per_s']:.0f} | {ratio} | {share:.1%} "
            f"| {row['peak_gpu_gb']:.1f} | {same} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
