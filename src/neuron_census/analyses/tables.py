"""Per-neuron and per-layer tables from merged accumulator states (pure functions).

`stats_tables` holds everything read from activations (firing, n-gram coverage, detectors, positional
statistics); `neuron_census.analyses.vocab` adds what is read from weights; `layer_table` aggregates per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from neuron_census.accumulators import State
from neuron_census.analyses.detectors import DetectorSettings, detector_layer_counts, ngram_columns
from neuron_census.analyses.positional import (
    PositionalSettings,
    find_positional,
    position_rates_table,
    positional_layer_counts,
    positional_table,
)


# the accumulators `stats_tables` reads (top-k examples are not among them)
STATS_ACCUMULATORS = (
    "fire_count",
    "moments",
    "position_fire_count",
    "token_count",
    "token_fire_count",
    "ngram_count",
    "ngram_fire_count",
)
REQUIRED_FOR_STATS = ("fire_count", "position_fire_count", "token_count", "token_fire_count")  # the others add columns


@dataclass(frozen=True)
class AnalysisSettings:
    """Thresholds of the activation analyses (config `analysis`, without `vocab`)."""

    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    positional: PositionalSettings = field(default_factory=PositionalSettings)

    @classmethod
    def from_config(cls, analysis: Mapping[str, Any]) -> AnalysisSettings:
        detectors = analysis.get("detectors", {})
        names = {"max_ngrams": "max_ngrams", "fire_rate": "ngram_fire_rate", "coverage": "detector_coverage"}
        given = {names[key]: value for key, value in detectors.items() if key in names}
        if "ngram_coverage" in analysis:
            given["coverage"] = float(analysis["ngram_coverage"])
        return cls(
            detectors=DetectorSettings(**given),
            positional=PositionalSettings(**{k: v for k, v in analysis.get("positional", {}).items() if k != "datasets"}),
        )


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
        count = np.maximum(moments["count"][:, None], 1)
        mean, var = moments["sum"] / count, np.maximum(moments["m2"] / count, 0.0)
        columns |= {
            "act_mean": mean.reshape(-1),
            "act_std": np.sqrt(var).reshape(-1),
            "act_min": moments["min"].astype(np.float64).reshape(-1),
            "act_max": moments["max"].astype(np.float64).reshape(-1),
        }
    return pl.DataFrame(columns)


def stats_tables(
    model: str,
    attrs: Mapping[str, Any],
    states: Mapping[str, State],
    settings: AnalysisSettings,
    token_strings: Sequence[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`neuron_table` joined with n-gram coverage, detector and positional columns; and positional curves."""
    base = neuron_table(model, attrs, states).with_columns(n_layers_total=pl.lit(int(attrs["n_layers_total"]), pl.Int64))
    base = base.with_columns(**ngram_columns(states, attrs, settings.detectors, token_strings))
    found = find_positional(states["position_fire_count"], settings.positional)
    base = base.join(positional_table(attrs, found), on=["layer", "neuron"], how="left", maintain_order="left")
    return base, position_rates_table(model, attrs, found)


def stats_tables_by_layer(
    model: str,
    attrs: Mapping[str, Any],
    layer_states: Callable[[int], Mapping[str, State]],
    settings: AnalysisSettings,
    token_strings: Sequence[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`stats_tables` one analysed layer at a time, with the same result: memory holds one layer's states.

    `layer_states(slot)` gives the states of the layer `attrs["layers"][slot]` alone
    (`neuron_census.capture.layer_states`); every statistic is a function of one neuron's own layer.
    """
    tables = [
        stats_tables(model, {**attrs, "layers": [layer]}, layer_states(slot), settings, token_strings)
        for slot, layer in enumerate(attrs["layers"])
    ]
    return pl.concat([stats for stats, _ in tables]), pl.concat([rates for _, rates in tables])


NEURON_KEYS = ["model", "layer", "neuron"]


def with_study_columns(
    neurons: pl.DataFrame,
    universal: pl.DataFrame,
    entropy: pl.DataFrame,
    attention_scores: pl.DataFrame,
    attention_paths: pl.DataFrame,
) -> pl.DataFrame:
    """A universal-neurons study's reference: its census table joined with what the study found per neuron:
    universality, activation properties and family (universal.parquet, less the weight statistics both
    hold), `entropy_neuron` and `entropy_change` (null where not intervened on), the highest
    attention-deactivation score and its head (`bos_score`, `bos_head_layer`, `bos_head`; null in the last
    layer) and `deactivates` (null where not path-ablated)."""
    shared = set(neurons.columns) - set(NEURON_KEYS)
    tested = entropy.group_by(NEURON_KEYS).agg(pl.col("entropy_neuron").any(), pl.col("entropy_change").first())
    scores = attention_scores.select(
        *NEURON_KEYS, bos_score=pl.col("max_score"), bos_head_layer=pl.col("max_head_layer"), bos_head=pl.col("max_head")
    )
    ablated = attention_paths.group_by(NEURON_KEYS).agg(pl.col("deactivates").any())
    joined = neurons.join(universal.drop([c for c in universal.columns if c in shared]), on=NEURON_KEYS, how="left", maintain_order="left")
    for table in (tested, scores, ablated):
        joined = joined.join(table, on=NEURON_KEYS, how="left", maintain_order="left")
    return joined


def with_probe_columns(neurons: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """A probed model's census table joined with `probe_features` (the features some single-neuron probe on
    the neuron reads at the study's F1 threshold; empty where none) and `probe_f1` (the best such F1; null
    where none)."""
    keys = ["layer", "neuron"]
    typed = features.select(*(pl.col(key).cast(neurons.schema[key]) for key in keys), "probe_features", "probe_f1")
    joined = neurons.join(typed, on=keys, how="left", maintain_order="left")
    return joined.with_columns(pl.col("probe_features").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))))


def layer_table(neurons: pl.DataFrame, n_layers_total: int) -> pl.DataFrame:
    """One row per layer: dead neurons, firing frequency, detectors and positional neurons by type.

    `rel_depth` = layer / n_layers_total (layers numbered from 0), the x axis of Fig. 1 of the paper.
    """
    first = ("model", "layer", "rel_depth", "n_layers_total")
    table = (
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
        .select(*first, pl.exclude(first))
        .sort("layer")
    )
    if "token_detector" in neurons.columns:
        table = table.join(detector_layer_counts(neurons), on=["model", "layer"], how="left", maintain_order="left")
    if "positional" in neurons.columns:
        table = table.join(positional_layer_counts(neurons), on=["model", "layer"], how="left", maintain_order="left")
    found: dict[str, pl.Expr] = {}
    if "suppresses_trigger" in neurons.columns:
        found["n_detectors_suppressing_trigger"] = pl.col("suppresses_trigger").fill_null(False).sum().cast(pl.Int64)
    if "universal" in neurons.columns:  # a universal-neurons study's reference
        found["n_universal"] = pl.col("universal").fill_null(False).sum().cast(pl.Int64)
        found["n_family"] = pl.col("family").is_not_null().sum().cast(pl.Int64)
    if found:
        per_layer = neurons.group_by("model", "layer").agg(**found)
        table = table.join(per_layer, on=["model", "layer"], how="left", maintain_order="left")
    return table

