"""Entropy neurons (Gurnee et al. 2024, Sec. 5.2): neurons of the last layer that write into the
unembedding's effective null space with a large norm. The logits barely read their direction, but the
final norm does: raising the neuron's activation raises the residual norm, scales every other direction
down, and flattens the next-token distribution.

The test is causal: the neuron's activation is set to each of a range of values at every position (the
interventions module), and the mean next-token entropy, loss and final-norm scale (1 / the norm's
denominator) are measured over a sample of the study's tokens, for the candidates (the layer's neurons with
the largest norm in the null space, |w_out|^2 * null_frac) and for random neurons of the same layer. A
candidate is an entropy neuron when its entropy moves across the range by more than any random neuron's
does, plus a margin, and mostly through the final norm's scale: with the scale held at the unedited
run's, the entropy moves less than half as much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from neuron_census.config import default_field, schema_defaults
from neuron_census.interventions import Intervention, intervened

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
    from neuron_census.models.adapters import FFNAdapter

_default = partial(default_field, schema_defaults("$defs/universal_study/entropy"))


@dataclass(frozen=True)
class EntropySettings:
    candidates: int = _default("candidates")
    random: int = _default("random")
    values: tuple[float, ...] = _default("values")
    sequences: int = _default("sequences")
    min_change: float = _default("min_change")  # nats beyond the largest random neuron's entropy change
    seed: int = _default("seed")


def chosen_neurons(weights: pl.DataFrame, layer: int, settings: EntropySettings) -> tuple[list[int], list[int]]:
    """The layer's candidates (largest |w_out|^2 * null_frac, ties to the lower neuron) and, from the rest,
    `random` neurons drawn with `seed`."""
    rows = weights.filter(pl.col("layer") == layer).with_columns(
        (pl.col("w_out_norm") ** 2 * pl.col("null_frac")).fill_null(0.0).alias("null_norm")
    )
    ranked = rows.sort(["null_norm", "neuron"], descending=[True, False])["neuron"].to_list()
    candidates = ranked[: settings.candidates]
    rest = np.asarray(sorted(set(rows["neuron"].to_list()) - set(candidates)), dtype=np.int64)
    drawn = np.random.default_rng(settings.seed).choice(rest, size=min(settings.random, len(rest)), replace=False)
    return candidates, sorted(int(n) for n in drawn)


def _measure(
    model: torch.nn.Module, adapter: FFNAdapter, tokens: torch.Tensor, batch_size: int, start: int, frozen: list[torch.Tensor] | None = None
) -> tuple[float, float, float, list[torch.Tensor]]:
    """Mean next-token entropy and loss over positions start..T-2 (predicting tokens start+1..T-1), the
    mean final-norm scale there, and each batch's scales [B, T]. With `frozen` (those of another run), the
    final norm uses them instead of its own: what is left is the direct effect on the logits."""
    entropy = loss = scale = 0.0
    count = 0
    scales: list[torch.Tensor] = []
    norm = adapter.final_norm()

    def scale_of(x: torch.Tensor) -> torch.Tensor:
        if adapter.rms_norm:
            return torch.rsqrt(x.pow(2).mean(-1) + norm.variance_epsilon)
        return torch.rsqrt(x.var(-1, unbiased=False) + norm.eps)

    def grab(_module: torch.nn.Module, args: tuple) -> None:
        scales.append(scale_of(args[0].float()))

    def freeze(_module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].float()
        centred = x if adapter.rms_norm else x - x.mean(-1, keepdim=True)
        y = centred * frozen[len(scales) - 1].reshape(x.shape[:-1])[..., None] * norm.weight.float()
        if getattr(norm, "bias", None) is not None:
            y = y + norm.bias.float()
        return y.to(output.dtype)

    handles = [] if norm is None else [norm.register_forward_pre_hook(grab)]
    if norm is not None and frozen is not None:
        handles.append(norm.register_forward_hook(freeze))
    try:
        for rows in tokens.split(batch_size):
            logits = model(input_ids=rows, use_cache=False).logits[:, start:-1].float()
            log_p = torch.log_softmax(logits, dim=-1)
            entropy += float(-(log_p.exp() * log_p).sum(-1).sum())
            loss += float(-log_p.gather(-1, rows[:, start + 1 :, None]).sum())
            if norm is not None:
                scale += float(scales[-1].reshape(rows.shape)[:, start:-1].sum())
            count += rows.shape[0] * (rows.shape[1] - 1 - start)
    finally:
        for handle in handles:
            handle.remove()
    return entropy / count, loss / count, (scale / count if norm is not None else float("nan")), scales


def entropy_curves(
    model: torch.nn.Module, adapter: FFNAdapter, tokens: torch.Tensor, layer: int, candidates: Sequence[int],
    random: Sequence[int], values: Sequence[float], *, batch_size: int, has_bos: bool = True,
) -> pl.DataFrame:
    """One row per (neuron, value) and one unedited row (neuron null): mean entropy, loss and final-norm
    scale with the neuron's activation set to `value` at every position, and `direct_entropy`: the entropy
    with the final norm's scale held at the unedited run's (the effect that does not go through it)."""
    start = 1 if has_bos else 0  # BOS predicts the first token of a packed document: left out like BOS
    columns = ("entropy", "loss", "norm_scale")
    rows = []
    with torch.no_grad():
        *clean, clean_scales = _measure(model, adapter, tokens, batch_size, start)
        rows.append({"neuron": None, "random": None, "value": None, **dict(zip(columns, clean)), "direct_entropy": clean[0]})
        for neuron in [*candidates, *random]:
            for value in values:
                with intervened(model, [Intervention(layer, [neuron], "set", float(value))]):
                    *total, _ = _measure(model, adapter, tokens, batch_size, start)
                    direct = _measure(model, adapter, tokens, batch_size, start, frozen=clean_scales)[0]
                rows.append(
                    {"neuron": neuron, "random": neuron in random, "value": float(value), **dict(zip(columns, total)), "direct_entropy": direct}
                )
    schema = {"neuron": pl.Int64, "random": pl.Boolean, "value": pl.Float64} | {c: pl.Float64 for c in (*columns, "direct_entropy")}
    frame = pl.DataFrame(rows, schema=schema)
    return frame.with_columns(layer=pl.lit(layer, dtype=pl.Int64)).select("layer", pl.all().exclude("layer"))


def entropy_neurons(curves: pl.DataFrame, min_change: float) -> pl.DataFrame:
    """Per tested neuron: `entropy_change` (entropy at the largest value minus at the smallest) and
    `direct_change` (the same with the final norm's scale held), the largest |change| of a random neuron
    (`random_bar`), and `entropy_neuron` for candidates whose |change| exceeds it by more than `min_change`
    nats, at least half of it through the final norm's scale (|direct_change| < |entropy_change| / 2): a
    neuron that moves the entropy by promoting tokens is a prediction neuron, not an entropy neuron."""
    tested = curves.drop_nulls("neuron")
    span = lambda column: (pl.col(column).sort_by("value").last() - pl.col(column).sort_by("value").first()).alias(column)  # noqa: E731
    ends = tested.group_by("layer", "neuron", "random").agg(span("entropy"), span("direct_entropy"), span("norm_scale")).rename(
        {"entropy": "entropy_change", "direct_entropy": "direct_change", "norm_scale": "norm_scale_change"}
    )
    bar = ends.filter(pl.col("random"))["entropy_change"].abs().max()
    change = pl.col("entropy_change").abs()
    return ends.with_columns(random_bar=pl.lit(0.0 if bar is None else float(bar))).with_columns(
        entropy_neuron=~pl.col("random") & (change > pl.col("random_bar") + min_change) & (pl.col("direct_change").abs() < change / 2)
    ).sort("random", "neuron")
