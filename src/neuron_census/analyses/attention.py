"""Attention-deactivation neurons (Gurnee et al. 2024, Sec. 5.3): neurons whose output, read by a later
head's query, points at the key of the beginning-of-sequence token, so that the head attends to BOS (its
no-op) and is switched off where the neuron fires.

Score of neuron n (layer l) for head h of a later layer l': w_out^T W_Q^h k_BOS^h / sqrt(d_head), with
w_out as the head's norm passes it on (centred for LayerNorm, times the norm's gain) and k_BOS^h the key of
BOS at that head (BOS sees only itself, so its key is the same in every sequence). Positive: the neuron
moves the head's attention to BOS. Rotary models rotate a query at position p by R_p (BOS's key, at
position 0, is not rotated): their score is the mean over the query positions 1..T-1 of the study's
sequences, w_out^T W_Q^h (mean_p R_p^T k_BOS^h) / sqrt(d_head).

Path ablation checks the top pairs causally: over a sample of the study's tokens, the head's mean
attention to BOS is computed from its own queries and keys, and again with the neuron's output taken out
of the head's query input only (norm(x - a w_out)); the drop is the neuron's effect through that path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from neuron_census.config import default_field, schema_defaults

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
    from neuron_census.models.adapters import FFNAdapter

_default = partial(default_field, schema_defaults("$defs/universal_study/attention"))


@dataclass(frozen=True)
class AttentionSettings:
    pairs: int = _default("pairs")  # (neuron, head) pairs with the highest scores that are path-ablated
    sequences: int = _default("sequences")
    min_change: float = _default("min_change")  # drop of the head's mean attention to BOS that makes a deactivation neuron


def _input_hooks(modules: dict[int, torch.nn.Module], seen: dict[int, torch.Tensor]) -> list[Any]:
    """Pre-hooks that keep each layer's module's input in `seen[layer]`."""

    def grab(layer: int) -> Any:
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            seen[layer] = args[0].detach()

        return hook

    return [module.register_forward_pre_hook(grab(layer)) for layer, module in modules.items()]


def _centred_gain(adapter: FFNAdapter, layer: int, vectors: torch.Tensor) -> torch.Tensor:
    """`vectors` [k, d] as the attention norm of `layer` passes directions on: centred (LayerNorm) and
    times its gain (the scale 1/sigma, the same for every direction, left out)."""
    norm = adapter.attention_norm(layer)
    out = vectors if adapter.rms_norm else vectors - vectors.mean(dim=1, keepdim=True)
    weight = getattr(norm, "weight", None)
    return out if weight is None else out * weight.detach().float().to(out.device)


def bos_keys(model: torch.nn.Module, adapter: FFNAdapter, bos_id: int) -> dict[int, torch.Tensor]:
    """Per layer, the BOS token's key at every head [H, d_head] (its key-value head's for grouped queries)."""
    layers = list(range(adapter.n_layers))
    seen: dict[int, torch.Tensor] = {}
    hooks = _input_hooks({layer: adapter.attention_norm(layer) for layer in layers}, seen)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[bos_id]], device=device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    keys = {}
    with torch.no_grad():
        for layer in layers:
            x = adapter.attention_norm(layer)(seen[layer])[0, 0].float()  # the norm in the model's dtype
            w_q, _, w_k, b_k = adapter.query_key_weights(layer)
            key = torch.einsum("hkd,d->hk", w_k, x) + b_k
            keys[layer] = key.repeat_interleave(w_q.shape[0] // w_k.shape[0], dim=0)
    return keys


def query_reading(adapter: FFNAdapter, key: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[H, d_head]: what the query of each head is scored against, k_BOS^h, or for rotary attention its
    mean over query positions 1..seq_len-1 rotated back (R_p^T k), so q . reading = mean_p (R_p q) . k."""
    if not adapter.rotary:
        return key
    positions = -torch.arange(1, max(seq_len, 2), device=key.device)
    return adapter.rotate(key[:, None].expand(-1, len(positions), -1), positions).mean(dim=1)


def deactivation_scores(adapter: FFNAdapter, keys: dict[int, torch.Tensor], seq_len: int) -> pl.DataFrame:
    """Per neuron of every layer but the last: its highest score over the heads of later layers (with the
    head) and its lowest (the head it most turns away from BOS). `seq_len`: the study's sequence length,
    over whose query positions a rotary model's score is averaged."""
    frames = []
    with torch.no_grad():
        for layer in range(adapter.n_layers - 1):
            w_out = adapter.value_vectors(layer)  # [N, d]
            scores, heads = [], []
            for later in range(layer + 1, adapter.n_layers):
                w_q = adapter.query_key_weights(later)[0]  # [H, d_head, d]
                key = query_reading(adapter, keys[later].to(w_q.device), seq_len)
                reading = torch.einsum("hkd,hk->hd", w_q, key)  # W_Q^h^T k_BOS^h
                passed = _centred_gain(adapter, later, w_out.to(w_q.device))
                scores.append(passed @ reading.T / w_q.shape[1] ** 0.5)  # [N, H]
                heads += [(later, head) for head in range(w_q.shape[0])]
            table = torch.cat(scores, dim=1).double().cpu().numpy()
            top, bottom = table.argmax(axis=1), table.argmin(axis=1)
            rows = np.arange(len(table))
            frames.append(pl.DataFrame({
                "layer": np.full(len(table), layer, dtype=np.int64), "neuron": rows.astype(np.int64),
                "max_score": table[rows, top],
                "max_head_layer": np.asarray([heads[i][0] for i in top], dtype=np.int64),
                "max_head": np.asarray([heads[i][1] for i in top], dtype=np.int64),
                "min_score": table[rows, bottom],
                "min_head_layer": np.asarray([heads[i][0] for i in bottom], dtype=np.int64),
                "min_head": np.asarray([heads[i][1] for i in bottom], dtype=np.int64),
            }))
    return pl.concat(frames)


def path_ablation(
    model: torch.nn.Module, adapter: FFNAdapter, tokens: torch.Tensor, pairs: pl.DataFrame, *, batch_size: int,
    min_change: float = AttentionSettings.min_change,
) -> pl.DataFrame:
    """For each (layer, neuron, head_layer, head) of `pairs`: the head's mean attention to BOS (position 0)
    over the query positions 1..T-1 of `tokens`, with and without the neuron's output in the head's query
    input, and `deactivates` where the drop exceeds `min_change`."""
    rows = pairs.select("layer", "neuron", "head_layer", "head").to_dicts()
    neuron_layers = sorted({row["layer"] for row in rows})
    head_layers = sorted({row["head_layer"] for row in rows})
    totals = np.zeros((len(rows), 2))
    count = 0
    acts: dict[int, torch.Tensor] = {}
    residual: dict[int, torch.Tensor] = {}
    hooks = _input_hooks({layer: adapter.attention_norm(layer) for layer in head_layers}, residual)
    hooks += _input_hooks({layer: adapter.neuron_input_module(layer) for layer in neuron_layers}, acts)
    try:
        with torch.no_grad():
            for batch in tokens.split(batch_size):
                model(input_ids=batch, use_cache=False)
                for index, row in enumerate(rows):
                    x = residual[row["head_layer"]].float()
                    a = acts[row["layer"]].reshape(*batch.shape, -1)[..., row["neuron"]].float()
                    w_out = adapter.value_vectors(row["layer"])[row["neuron"]].to(x.device)
                    for column, edited in enumerate((x, x - a[..., None] * w_out)):
                        totals[index, column] += _bos_attention(adapter, row["head_layer"], row["head"], x, edited).sum()
                count += batch.shape[0] * (batch.shape[1] - 1)
    finally:
        for hook in hooks:
            hook.remove()
    clean, ablated = totals[:, 0] / count, totals[:, 1] / count
    return pairs.select("layer", "neuron", "head_layer", "head", "score").with_columns(
        bos_attention=pl.Series(clean), bos_attention_ablated=pl.Series(ablated),
    ).with_columns(deactivates=(pl.col("bos_attention") - pl.col("bos_attention_ablated")) > min_change)


def _bos_attention(adapter: FFNAdapter, layer: int, head: int, keys_from: torch.Tensor, queries_from: torch.Tensor) -> np.ndarray:
    """[B, T-1]: attention to position 0 of `head` at query positions 1..T-1, its keys from the residual
    `keys_from` and its queries from `queries_from` [B, T, d], each through the layer's attention norm (and
    rotated by position where the model's attention is rotary)."""
    norm = adapter.attention_norm(layer)
    dtype = next(norm.parameters()).dtype
    w_q, b_q, w_k, b_k = adapter.query_key_weights(layer)
    group = w_q.shape[0] // w_k.shape[0]
    query = torch.einsum("kd,btd->btk", w_q[head], norm(queries_from.to(dtype)).float()) + b_q[head]
    key = torch.einsum("kd,btd->btk", w_k[head // group], norm(keys_from.to(dtype)).float()) + b_k[head // group]
    positions = torch.arange(query.shape[1], device=query.device)  # every study sequence starts at position 0
    query, key = adapter.rotate(query, positions), adapter.rotate(key, positions)
    logits = query @ key.transpose(1, 2) / w_q.shape[1] ** 0.5  # [B, T, T]
    length = logits.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=logits.device).tril()
    pattern = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    return pattern[:, 1:, 0].detach().double().cpu().numpy()


def top_pairs(scores: pl.DataFrame, n: int) -> pl.DataFrame:
    """The `n` neurons with the highest positive scores, each with its highest-scoring head."""
    return (
        scores.filter(pl.col("max_score") > 0)
        .sort(["max_score", "layer", "neuron"], descending=[True, False, False])
        .head(n)
        .select("layer", "neuron", pl.col("max_head_layer").alias("head_layer"), pl.col("max_head").alias("head"), pl.col("max_score").alias("score"))
    )
