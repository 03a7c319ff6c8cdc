"""Per-neuron and per-layer tables from merged accumulator states (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from neuron_census.accumulators import State


def neuron_table(model: str, attrs: Mapping[str, Any], states: Mapping[str, State]) -> pl.DataFrame:
    """One row per (layer, neuron): firing counts and frequencies, dead flag, activation moments.

    A neuron is dead when it never fires on the whole collection (Voita et al. 2023, Sec. 3).
    """
    layers = np.asarray(attrs["layers"], dtype=np.int64)
    n_neurons = int(attrs["n_neurons"])
    fires = states["fire_count"]["counts"]  # [L, N]
    n_tokens = np.repeat(states["fire_count"]["tokens"][:, None], n_neurons, axis=1)
    columns: dict[str, Any] = {
        "model": [model] * fires.size,
        "layer": np.repeat(layers, n_neurons),
        "neuron": np.tile(np.arange(n_neurons, dtype=np.int64), len(layers)),
        "n_tokens": n_tokens.reshape(-1),
        "fire_count": fires.reshape(-1),
        "fire_freq": np.divide(fires, n_tokens, out=np.zeros(fires.shape), where=n_tokens > 0).reshape(-1),
        "dead": (fires == 0).reshape(-1),
    }
    if "moments" in states:
        moments = states["moments"]
        count = np.maximum(n_tokens, 1)
        mean = moments["sum"] / count
        var = np.maximum(moments["sum_sq"] / count - mean**2, 0.0)
        columns |= {
            "act_mean": mean.reshape(-1),
            "act_std": np.sqrt(var).reshape(-1),
            "act_min": moments["min"].astype(np.float64).reshape(-1),
            "act_max": moments["max"].astype(np.float64).reshape(-1),
        }
    return pl.DataFrame(columns)


def layer_table(neurons: pl.DataFrame, n_layers_total: int) -> pl.DataFrame:
    """One row per layer: share of dead neurons and mean firing frequency of the living ones.

    `rel_depth` = layer / n_layers_total (layers numbered from 0), the x axis of Fig. 1 of the paper.
    """
    return (
        neurons.group_by("model", "layer", maintain_order=True)
        .agg(
            n_neurons=pl.len(),
            n_tokens=pl.col("n_tokens").first(),
            dead_count=pl.col("dead").sum().cast(pl.Int64),
            dead_frac=pl.col("dead").mean(),
            mean_fire_freq_alive=pl.col("fire_freq").filter(~pl.col("dead")).mean(),
            mean_fire_freq=pl.col("fire_freq").mean(),
        )
        .with_columns(rel_depth=pl.col("layer") / n_layers_total, n_layers_total=pl.lit(n_layers_total))
        .select(
            "model",
            "layer",
            "rel_depth",
            "n_layers_total",
            "n_neurons",
            "n_tokens",
            "dead_count",
            "dead_frac",
            "mean_fire_freq_alive",
            "mean_fire_freq",
        )
        .sort("layer")
    )
