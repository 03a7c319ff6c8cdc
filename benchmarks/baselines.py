"""Baselines for the benchmark: FFN fire counts of an OPT model computed with TransformerLens and nnsight.

Both compute, for the analysed `layers` of an OPT model (ReLU FFN; the activation is fc1's output after
ReLU, i.e. fc2's input / TransformerLens's `mlp.hook_post`):

* `fire_count[l, n]`: tokens with activation > 0, position 0 (BOS) of every sequence excluded;
* `position_fire_count[l, t, n]`: the same per position t; row t = 0 is all zeros (BOS excluded),
  as in neuron_census's `position_fire_count`.

Written the way a competent user of each tool would: one hook point per layer, no gradients, the forward
stopped after the last analysed layer. Everything runs offline: no hub access, no tokenizer.
Needs the benchmark environment (benchmarks/requirements.txt), not the project's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

# TransformerLens 3.x still ships HookedTransformer (deprecated in favour of TransformerBridge, removed
# in 4.0); it is what most published TL code uses, so that is the baseline.
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_opt_weights

Counts = tuple[np.ndarray, np.ndarray]


def _new_counts(n_layers: int, seq_len: int, n_neurons: int) -> torch.Tensor:
    return torch.zeros(n_layers, seq_len, n_neurons, dtype=torch.int64)


def _finish(position_counts: torch.Tensor) -> Counts:
    """Drop position 0 (BOS) and derive the per-neuron totals from the per-position counts."""
    position_counts[:, 0] = 0
    position = position_counts.numpy().astype(np.int64)
    return position.sum(axis=1), position


def _check_inputs(tokens: torch.Tensor, batch_size: int, layers: Sequence[int], n_model_layers: int) -> None:
    if tokens.ndim != 2 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 [n_seq, seq_len], got {tuple(tokens.shape)} {tokens.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not layers or any(not 0 <= layer < n_model_layers for layer in layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{n_model_layers - 1}, got {list(layers)}")


def transformer_lens_model(hf_model: PreTrainedModel, *, process_weights: bool = False) -> HookedTransformer:
    """Convert an HF OPTForCausalLM into a HookedTransformer offline, with TL's own OPT weight conversion.

    `HookedTransformer.from_pretrained(name, hf_model=...)` still fetches the hub config of `name`, so the
    config is built here from the model's own, with the fields TL's loader derives for OPT.
    `process_weights=False` is `from_pretrained_no_processing` (activations as in HF); True applies
    from_pretrained's default fold_ln / centering / value-bias folding (same maths, other rounding).
    """
    hf_cfg = hf_model.config
    if hf_cfg.model_type != "opt" or not hf_cfg.do_layer_norm_before:
        raise ValueError("only pre-LN OPT models are supported (TL's OPT conversion has no project_in/out)")
    if hf_cfg.word_embed_proj_dim != hf_cfg.hidden_size:
        raise ValueError("OPT models with word_embed_proj_dim != hidden_size are not supported")
    cfg = HookedTransformerConfig(
        d_model=hf_cfg.hidden_size,
        d_head=hf_cfg.hidden_size // hf_cfg.num_attention_heads,
        n_heads=hf_cfg.num_attention_heads,
        d_mlp=hf_cfg.ffn_dim,
        n_layers=hf_cfg.num_hidden_layers,
        n_ctx=hf_cfg.max_position_embeddings,
        eps=1e-5,
        d_vocab=hf_cfg.vocab_size,
        act_fn=hf_cfg.activation_function,
        use_attn_scale=True,
        use_local_attn=False,
        scale_attn_by_inverse_layer_idx=False,
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="OPTForCausalLM",
        model_name=str(hf_cfg.name_or_path).split("/")[-1] or "opt",
        init_weights=False,
        dtype=hf_model.dtype,
        device=str(hf_model.device),
        default_prepend_bos=True,
    )
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    state_dict = {name: tensor.detach() for name, tensor in convert_opt_weights(hf_model, cfg).items()}
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=process_weights,
        center_writing_weights=process_weights,
        center_unembed=process_weights,
        fold_value_biases=process_weights,
    )
    model.move_model_modules_to_device()
    return model.eval()


def transformer_lens_counts(
    tl_model: HookedTransformer, tokens: torch.Tensor, batch_size: int, layers: Sequence[int]
) -> Counts:
    """Fire counts from `run_with_cache` caching only `blocks.{l}.mlp.hook_post`, stopped after the last layer."""
    _check_inputs(tokens, batch_size, layers, tl_model.cfg.n_layers)
    names = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
    wanted = set(names)
    position_counts = _new_counts(len(layers), tokens.shape[1], tl_model.cfg.d_mlp)
    device = tl_model.cfg.device
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            _, cache = tl_model.run_with_cache(
                batch,
                names_filter=lambda name: name in wanted,
                stop_at_layer=max(layers) + 1,
                return_type=None,
            )
            for slot, name in enumerate(names):
                position_counts[slot] += (cache[name] > 0).sum(dim=0).cpu()
            del cache
    return _finish(position_counts)


def nnsight_counts(
    hf_model: PreTrainedModel, tokens: torch.Tensor, batch_size: int, layers: Sequence[int]
) -> Counts:
    """Fire counts from an nnsight trace of the HF model saving each analysed layer's `fc2.input`.

    `nnsight.NNsight` wraps the loaded module as is (`LanguageModel` would build a transformers pipeline,
    which needs a tokenizer); the trace is stopped right after the last analysed layer's fc2 input.
    In transformers 5, OPT flattens tokens before fc1, so fc2's input is [batch * seq, ffn_dim].
    """
    from nnsight import NNsight

    decoder = hf_model.model.decoder
    _check_inputs(tokens, batch_size, layers, len(decoder.layers))
    model = NNsight(hf_model)
    modules = model.model.decoder.layers  # the Envoy tree mirrors the module tree
    ordered = sorted(set(layers))
    seq_len, n_neurons = tokens.shape[1], hf_model.config.ffn_dim
    position_counts = _new_counts(len(layers), seq_len, n_neurons)
    device = hf_model.device
    with torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            saved: dict[int, torch.Tensor] = {}
            # nnsight requires modules to be accessed in execution order inside a trace
            with model.trace(input_ids=batch, use_cache=False) as tracer:
                for layer in ordered:
                    saved[layer] = modules[layer].fc2.input.save()
                tracer.stop()
            for slot, layer in enumerate(layers):
                acts = saved[layer].reshape(batch.shape[0], seq_len, n_neurons)
                position_counts[slot] += (acts > 0).sum(dim=0).cpu()
    return _finish(position_counts)


def reference_counts(
    hf_model: PreTrainedModel, tokens: torch.Tensor, batch_size: int, layers: Sequence[int]
) -> Counts:
    """Ground truth: a forward pre-hook on each analysed layer's fc2 counting its inputs > 0 (bare HF)."""
    decoder = hf_model.model.decoder
    _check_inputs(tokens, batch_size, layers, len(decoder.layers))
    seq_len, n_neurons = tokens.shape[1], hf_model.config.ffn_dim
    position_counts = _new_counts(len(layers), seq_len, n_neurons)
    current: dict[str, int] = {}

    def hook(slot: int):
        def count(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            acts = args[0].reshape(current["batch"], seq_len, n_neurons)
            position_counts[slot] += (acts > 0).sum(dim=0).cpu()

        return count

    handles = [decoder.layers[layer].fc2.register_forward_pre_hook(hook(slot)) for slot, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], batch_size):
                batch = tokens[start : start + batch_size].to(hf_model.device)
                current["batch"] = batch.shape[0]
                hf_model.model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return _finish(position_counts)


def _best_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each run over `repeats` rounds, after one warm-up each; the runs are interleaved
    round by round so that load from other processes spreads over all of them alike."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def benchmark(
    *, n_seq: int = 8, seq_len: int = 512, batch_size: int = 8, threads: int = 2, repeats: int = 5
) -> dict[str, float]:
    """Best tokens/s of the bare HF decoder forward, the fc2-hook reference and both baselines (OPT-125m
    shapes, all 12 layers, float32 CPU). Each gets its own copy of the seeded model: wrapping in NNsight patches
    the module's forward, which must not touch the other measurements."""
    from neuron_census.models.zoo import build_random_model

    torch.set_num_threads(threads)
    layers = list(range(12))
    hf_model, ref_model, nn_model = (build_random_model("opt-125m", seed=0) for _ in range(3))
    tl_model = transformer_lens_model(build_random_model("opt-125m", seed=0))  # conversion: not timed
    tokens = torch.randint(3, hf_model.config.vocab_size, (n_seq, seq_len), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = hf_model.config.bos_token_id

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, n_seq, batch_size):
                hf_model.model(input_ids=tokens[start : start + batch_size], use_cache=False)

    runs = {
        "hf_forward": bare,
        "hf_fc2_hook_reference": lambda: reference_counts(ref_model, tokens, batch_size, layers),
        "transformer_lens": lambda: transformer_lens_counts(tl_model, tokens, batch_size, layers),
        "nnsight": lambda: nnsight_counts(nn_model, tokens, batch_size, layers),
    }
    n_tokens = n_seq * seq_len
    return {name: n_tokens / seconds for name, seconds in _best_seconds(runs, repeats).items()}


if __name__ == "__main__":
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rates = benchmark()
    base = rates["hf_forward"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; 8 x 512 tokens, 12 layers, float32 CPU")
    for name, rate in rates.items():
        print(f"{name:24s} {rate:10.0f} tokens/s   {base / rate:5.2f}x the bare HF forward's time")
