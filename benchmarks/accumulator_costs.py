"""What each accumulator costs per (layer, batch), next to the FFN input matmul of the same batch.

Activations are a ReLU of a random projection (OPT-125m widths) shifted so that a chosen share of them
fires: random weights fire about half the time, trained OPT layers a few percent, and the sparse
accumulators (token x neuron and n-gram x neuron counts) scale with the number of firings. Tokens are
bundled corpus text in GPT-2 BPE. Every accumulator sees the same batches, updates are timed one by one
(on a GPU, with the device synchronised around each, so each one's own kernels and host work count),
after a set of throw-away accumulators has run the first batch once (first calls load kernels).

    python benchmarks/accumulator_costs.py --fire-rates 0.5 0.05 --out benchmarks/results/accumulators
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import _sync, corpus_tokens, tables_of_blocks, use_job_allocator, write_results  # noqa: E402


def measure(fire_rate: float, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    import torch

    from neuron_census.accumulators import Geometry, LayerBatch, TokenFireCount
    from neuron_census.capture.engine import CaptureSettings, build_accumulators

    torch.manual_seed(0)
    batch, seq_len, width, d_model, vocab = args.batch_size, args.seq_len, args.n_neurons, args.d_model, 50272
    n_batches = args.n_batches
    device, dtype = args.device, getattr(torch, args.dtype)
    tokens = torch.from_numpy(corpus_tokens(batch * n_batches, seq_len)).to(device)
    layers = tuple(range(args.n_layers))
    geometry = Geometry(layers=layers, n_neurons=width, seq_len=seq_len, vocab_size=vocab)
    settings = CaptureSettings(
        ngram_capacity=args.ngram_capacity,
        token_capacity=args.token_capacity,
        ngram_layers="all",
        **({"merge_pending": args.merge_pending} if args.merge_pending else {}),
    )
    labelled = [(acc.name, acc) for acc in build_accumulators(settings, geometry, torch.device(device), len(layers))]
    for blocks in args.table_blocks or ():  # host tables of a set number of row blocks, next to the job's own
        with tables_of_blocks(blocks):
            extra = build_accumulators(settings, geometry, torch.device(device), len(layers))
        for acc in extra:
            if acc.name in ("token_fire_count", "ngram_fire_count"):
                labelled.append((f"{acc.name}, tables of {blocks} row block{'s' * (blocks > 1)}", acc))
    if args.dense_tokens:  # the token table kept in place, next to the one the settings give
        dense = TokenFireCount(geometry, torch.device(device), dense_limit=1 << 62)
        labelled.insert([name for name, _ in labelled].index("token_fire_count") + 1, ("token_fire_count, dense", dense))
    hidden = torch.randn(batch * seq_len, d_model).to(device, dtype)
    weight = (torch.randn(d_model, width) / d_model**0.5).to(device, dtype)
    shift = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - fire_rate)))
    costs = {name: 0.0 for name, _ in labelled}
    matmul = 0.0
    with torch.inference_mode():
        for index in range(n_batches):
            rows = tokens[index * batch : (index + 1) * batch]
            mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
            mask[:, 0] = False
            for layer in layers:
                _sync(device)
                start = time.perf_counter()
                acts = (hidden @ weight - shift).relu_().reshape(batch, seq_len, width)
                _sync(device)
                matmul += time.perf_counter() - start
                fires = acts > 0
                fires[:, 0] = False
                layer_batch = LayerBatch(
                    layer=layer, acts=acts, fires=fires, mask=mask, tokens=rows,
                    seq_ids=torch.arange(index * batch, (index + 1) * batch, device=device), counted_from=1,
                    fires_where_positive=True,  # as capture marks a ReLU's firings: exactly its positive values
                )
                if index == 0 and layer == layers[0]:  # first calls load kernels and libraries: not timed
                    warm_up = build_accumulators(settings, geometry, torch.device(device), len(layers))
                    if args.dense_tokens:
                        warm_up.append(TokenFireCount(geometry, torch.device(device), dense_limit=1 << 62))
                    for acc in warm_up:
                        acc.update(layer_batch)
                        acc.state()
                    _sync(device)
                for name, acc in labelled:
                    start = time.perf_counter()
                    acc.update(layer_batch)
                    _sync(device)
                    costs[name] += time.perf_counter() - start
        for name, acc in labelled:  # pending sparse pairs are merged when the state is read
            start = time.perf_counter()
            acc.state()
            costs[name] += time.perf_counter() - start
    return matmul, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fire-rates", nargs="+", type=float, default=[0.5, 0.05])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-neurons", type=int, default=3072)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--ngram-capacity", type=int, default=2048)
    parser.add_argument("--token-capacity", type=int, default=None, help="default: exact token x neuron counts")
    parser.add_argument("--merge-pending", type=int, default=None, help="capture.merge_pending (default: its default)")
    parser.add_argument(
        "--dense-tokens", action="store_true",
        help="also time token x neuron counts kept in place in a dense table per layer (layers x 50272 x neurons x 4 bytes)",
    )
    parser.add_argument(
        "--table-blocks", nargs="+", type=int, default=None,
        help="also time token and n-gram tables split into each of these numbers of row blocks, merged on that many "
        "threads (a job's tables have one per thread: --threads)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--default-allocator", action="store_true",
        help="leave glibc's allocation settings alone (CPU capture jobs keep freed blocks for reuse: host_allocator)",
    )
    args = parser.parse_args()
    use_job_allocator(args)

    import torch

    torch.set_num_threads(args.threads)
    results = {rate: measure(rate, args) for rate in args.fire_rates}
    names = list(next(iter(results.values()))[1])
    header = " | ".join(f"fire rate {rate:g}" for rate in results)
    lines = [
        f"{args.n_batches} batches x {args.n_layers} layers of {args.batch_size} x {args.seq_len} tokens, "
        f"{args.n_neurons} neurons, d_model {args.d_model}, {args.device}, {args.dtype}; token_capacity "
        f"{args.token_capacity or 'none (exact)'}, ngram_capacity {args.ngram_capacity}; cost as a multiple of the FFN input matmul "
        "(one of the layer's four big matmuls), and in ms per (layer, batch) update.",
        "",
        f"| accumulator | {header} |",
        "|---|" + "---:|" * len(results),
    ]
    per_update_ms = 1000 / (args.n_batches * args.n_layers)
    for name in names:
        cells = " | ".join(
            f"{costs[name] / matmul:.2f}x ({costs[name] * per_update_ms:.2f} ms)" for matmul, costs in results.values()
        )
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, table)


if __name__ == "__main__":
    main()
