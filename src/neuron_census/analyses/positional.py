"""Positional neurons (Voita et al. 2023, Sec. 5): mutual information between firing and position, and types.

Input is the merged `position_fire_count` state: `counts[l, p, n]` = sequences in which neuron n of layer
slot l fired at position p, `tokens[p]` = counted tokens at position p. Positions without a counted token
(position 0 when sequences start with BOS) are dropped everywhere.

Mutual information. With fr(p) = counts / tokens at position p, fr the overall rate (all firings over all
counted tokens) and T the number of counted positions,
    I = (1/T) * sum_p [ fr(p) log(fr(p) / fr) + (1 - fr(p)) log((1 - fr(p)) / (1 - fr)) ]
in nats, with 0 log(0 / x) = 0 and I = 0 when fr is 0 or 1. A neuron is positional iff I > `min_mi`.

Types of a positional neuron, from its firing-rate curve over the counted positions:
- Every position is labelled L (rate <= `near`), H (rate >= 1 - `near`) or M (in between).
- A run is a maximal stretch of consecutive positions with the same label L or H that is at least
  `min_run` positions long; shorter stretches are ignored. The run labels, in position order, are merged
  where consecutive labels are equal (runs of one label separated only by M or by ignored short stretches
  count once).
- No run: "other". Runs of one label only: "one_extreme". Both labels and exactly 2 merged runs:
  "both_extremes". Both labels and 3 or more merged runs: "oscillatory".
- Strong, for oscillatory / both_extremes / one_extreme: the same rules with `near` = 0 (only rates of
  exactly 0 and exactly 1 are extremes) give the same type; weak otherwise.
- Strong, for other: the rate is predictable from its neighbours, i.e. over the interior positions p
  R^2 = 1 - sum_p (f(p) - (f(p-1) + f(p+1)) / 2)^2 / sum_p (f(p) - mean f)^2 >= `other_smoothness`
  (mean over the same interior positions; R^2 = 0 when the denominator is 0); weak otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from neuron_census.config import schema_defaults

POSITIONAL_TYPES: tuple[str, ...] = ("oscillatory", "both_extremes", "one_extreme", "other")
_LOW, _HIGH, _MID = 0, 1, -1

NEURON_SCHEMA: dict[str, pl.DataType] = {
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "position_mi": pl.Float64(),
    "positional": pl.Boolean(),
    "positional_type": pl.Utf8(),
    "positional_strong": pl.Boolean(),
}
RATES_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.Utf8(),
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "position": pl.Int64(),
    "fire_rate": pl.Float64(),
    "position_mi": pl.Float64(),
    "positional_type": pl.Utf8(),
    "positional_strong": pl.Boolean(),
}


_DEFAULTS = schema_defaults("analysis/positional")


@dataclass(frozen=True)
class PositionalSettings:
    """Thresholds of the positional analysis (config `analysis.positional`)."""

    min_mi: float = _DEFAULTS["min_mi"]
    near: float = _DEFAULTS["near"]
    min_run: int = _DEFAULTS["min_run"]
    other_smoothness: float = _DEFAULTS["other_smoothness"]


@dataclass(frozen=True)
class PositionalNeurons:
    """Positional neurons of one model: what both tables are built from, computed once by `find_positional`."""

    mi: np.ndarray  # [L, N]
    slots: np.ndarray  # [K] slot of each positional neuron
    neurons: np.ndarray  # [K]
    curves: np.ndarray  # [K, T'] firing rates over the counted positions
    positions: np.ndarray  # [T']
    types: list[str]
    strong: list[bool]


# ------------------------------------------------------------------------------------------ statistics


def _check_state(counts: np.ndarray, tokens: np.ndarray) -> None:
    if counts.ndim != 3 or tokens.ndim != 1 or counts.shape[1] != tokens.shape[0]:
        raise ValueError(f"counts must be [L, T, N] and tokens [T], got {counts.shape} and {tokens.shape}")


def firing_rates(counts: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Firing rate per (slot, counted position, neuron) and the counted positions.

    Positions without a counted token have no rate at all, so they are dropped rather than set to 0.
    """
    counts, tokens = np.asarray(counts), np.asarray(tokens)
    _check_state(counts, tokens)
    positions = np.flatnonzero(tokens > 0)
    rates = counts[:, positions, :] / tokens[positions][None, :, None].astype(np.float64)
    return rates, positions.astype(np.int64)


def _xlogx_over(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x log(x / y) with 0 log(0 / y) = 0, the convention of the entropy terms."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / y), 0.0)


def position_mutual_information(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Mutual information between firing and position, [L, N] in nats (one slot at a time to bound memory)."""
    counts, tokens = np.asarray(counts), np.asarray(tokens)
    _check_state(counts, tokens)
    mi = np.zeros((counts.shape[0], counts.shape[2]), dtype=np.float64)
    for slot in range(counts.shape[0]):
        (rates,), positions = firing_rates(counts[slot : slot + 1], tokens)
        if len(positions) == 0:
            continue
        overall = counts[slot][positions].sum(axis=0) / float(tokens[positions].sum())  # [N]
        degenerate = (overall <= 0) | (overall >= 1)
        safe = np.where(degenerate, 0.5, overall)[None, :]
        terms = _xlogx_over(rates, safe) + _xlogx_over(1.0 - rates, 1.0 - safe)
        mi[slot] = np.where(degenerate, 0.0, terms.mean(axis=0))
    return mi


# ------------------------------------------------------------------------------------------ curve types


def curve_type(rates: np.ndarray, near: float, min_run: int) -> str:
    """Type of a firing-rate curve from its merged extreme runs (see the module docstring)."""
    rates = np.asarray(rates, dtype=np.float64)
    labels = np.where(rates <= near, _LOW, np.where(rates >= 1.0 - near, _HIGH, _MID))
    starts = np.flatnonzero(np.diff(labels, prepend=_HIGH + 1))  # a run starts wherever the label changes
    lengths = np.diff(np.r_[starts, len(labels)])
    runs = labels[starts][(labels[starts] != _MID) & (lengths >= min_run)]
    if len(runs) == 0:
        return "other"
    if len(np.unique(runs)) == 1:
        return "one_extreme"
    merged = 1 + np.count_nonzero(runs[1:] != runs[:-1])
    return "both_extremes" if merged == 2 else "oscillatory"


def neighbour_r2(rates: np.ndarray) -> float:
    """How well the mean of the two neighbours predicts the rate at interior positions (0 for flat curves)."""
    rates = np.asarray(rates, dtype=np.float64)
    if len(rates) < 3:
        return 0.0
    interior = rates[1:-1]
    if np.ptp(interior) == 0:
        return 0.0
    residual = interior - 0.5 * (rates[:-2] + rates[2:])
    return float(1.0 - np.sum(residual**2) / np.sum((interior - interior.mean()) ** 2))


def classify_curve(rates: np.ndarray, settings: PositionalSettings) -> tuple[str, bool]:
    """Type of a positional neuron and whether it is strong (exact extremes, or smooth for "other")."""
    kind = curve_type(rates, settings.near, settings.min_run)
    if kind == "other":
        return kind, neighbour_r2(rates) >= settings.other_smoothness
    return kind, curve_type(rates, 0.0, settings.min_run) == kind


# ------------------------------------------------------------------------------------------ tables


def find_positional(state: Mapping[str, np.ndarray], settings: PositionalSettings) -> PositionalNeurons:
    """Mutual information of every neuron, and the curve, type and strength of each positional one."""
    counts, tokens = np.asarray(state["counts"]), np.asarray(state["tokens"])
    mi = position_mutual_information(counts, tokens)
    slots, neurons = np.nonzero(mi > settings.min_mi)
    positions = np.flatnonzero(tokens > 0)
    curves = counts[slots[:, None], positions[None, :], neurons[:, None]] / tokens[positions][None, :].astype(float)
    classified = [classify_curve(curve, settings) for curve in curves]
    return PositionalNeurons(
        mi=mi,
        slots=slots.astype(np.int64),
        neurons=neurons.astype(np.int64),
        curves=curves,
        positions=positions.astype(np.int64),
        types=[kind for kind, _ in classified],
        strong=[strong for _, strong in classified],
    )


def _layer_numbers(attrs: Mapping[str, Any], n_slots: int) -> np.ndarray:
    layers = np.asarray(attrs["layers"], dtype=np.int64)
    if len(layers) != n_slots:
        raise ValueError(f"attrs lists {len(layers)} layers but the state has {n_slots} layer slots")
    return layers


def positional_table(attrs: Mapping[str, Any], found: PositionalNeurons) -> pl.DataFrame:
    """One row per (layer, neuron): mutual information with position, positional flag, type and strength.

    Type and strength are null for neurons that are not positional.
    """
    n_slots, n_neurons = found.mi.shape
    layers = _layer_numbers(attrs, n_slots)
    flat = found.slots * n_neurons + found.neurons
    types, strong = np.full(found.mi.size, None, dtype=object), np.full(found.mi.size, None, dtype=object)
    types[flat], strong[flat] = found.types, found.strong
    positional = np.zeros(found.mi.size, dtype=bool)
    positional[flat] = True
    columns = {
        "layer": np.repeat(layers, n_neurons),
        "neuron": np.tile(np.arange(n_neurons, dtype=np.int64), n_slots),
        "position_mi": found.mi.reshape(-1),
        "positional": positional,
        "positional_type": types.tolist(),
        "positional_strong": strong.tolist(),
    }
    return pl.DataFrame(columns, schema=NEURON_SCHEMA)


def position_rates_table(model: str, attrs: Mapping[str, Any], found: PositionalNeurons) -> pl.DataFrame:
    """Firing rate per counted position of every positional neuron (long format), for Figs. 7 and 9."""
    layers = _layer_numbers(attrs, found.mi.shape[0])
    n_positions = len(found.positions)
    columns = {
        "model": [model] * found.curves.size,
        "layer": np.repeat(layers[found.slots], n_positions),
        "neuron": np.repeat(found.neurons, n_positions),
        "position": np.tile(found.positions, len(found.neurons)),
        "fire_rate": found.curves.reshape(-1),
        "position_mi": np.repeat(found.mi[found.slots, found.neurons], n_positions),
        "positional_type": np.repeat(np.asarray(found.types, dtype=object), n_positions).tolist(),
        "positional_strong": np.repeat(np.asarray(found.strong, dtype=bool), n_positions),
    }
    return pl.DataFrame(columns, schema=RATES_SCHEMA)


def positional_layer_counts(neurons: pl.DataFrame) -> pl.DataFrame:
    """Per (model, layer) in order of appearance: positional neurons, and how many of each type and strength."""
    positional = pl.col("positional").fill_null(False)
    by_kind = {
        f"n_{kind}_{'strong' if strong else 'weak'}": (
            positional & (pl.col("positional_type") == kind).fill_null(False)
            & (pl.col("positional_strong") == strong).fill_null(False)
        ).sum().cast(pl.Int64)
        for kind in POSITIONAL_TYPES
        for strong in (True, False)
    }
    return neurons.group_by("model", "layer", maintain_order=True).agg(
        n_positional=positional.sum().cast(pl.Int64), **by_kind
    )
