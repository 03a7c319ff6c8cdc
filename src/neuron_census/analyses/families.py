"""Neuron families by variance reduction (Gurnee et al. 2024, Sec. 4.2): the feature of the token or its
context (`analyses.features`) that explains most of a neuron's activation variance, when it explains more
than a threshold.

VR(F) = 1 - [p_F Var(a | F) + p_notF Var(a | not F)] / Var(a), exact from `accumulators.feature_moments`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from neuron_census.accumulators.feature_moments import State, variance_reduction
from neuron_census.config import schema_defaults

_STUDY = schema_defaults("$defs/universal_study")
TIE = 1e-6  # variance reductions this close are one value (float sums differ in the last bits between machines)


def family_columns(
    states: Iterable[State], features: pl.DataFrame, *, threshold: float = _STUDY["family_threshold"]
) -> pl.DataFrame:
    """Per (layer, neuron) of the states' layer groups: `best_feature` and its `best_vr` (the first
    feature in table order among those within `TIE` of the best; null for a constant neuron, whose VR
    is 0) with the neuron's mean activation where it holds and where not (`best_mean_on`,
    `best_mean_off`), and `family` / `family_kind`: the best feature when `best_vr > threshold`, else null."""
    names = np.asarray(features["feature"].to_list(), dtype=object)
    kinds = np.asarray(features["kind"].to_list(), dtype=object)
    frames = []
    for state in states:
        reduction = variance_reduction(state)  # [L, F, N]
        if reduction.shape[1] != len(names):
            raise ValueError(f"feature moments of {reduction.shape[1]} features, the feature table lists {len(names)}")
        # the first feature within TIE of the largest: a feature and its complement (or two features that
        # hold on the same tokens) explain the same variance, and rounding must not choose between them
        best = (reduction >= reduction.max(axis=1, keepdims=True) - TIE).argmax(axis=1)  # [L, N]
        best_vr = np.take_along_axis(reduction, best[:, None, :], axis=1)[:, 0, :]
        mean_on, mean_off = _means(state, best)
        layers = np.asarray(state["layers"], dtype=np.int64)
        width = best.shape[1]
        member = (best_vr > threshold).reshape(-1)
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.repeat(layers, width),
                    "neuron": np.tile(np.arange(width, dtype=np.int64), len(layers)),
                    "best_feature": np.where(best_vr.reshape(-1) > 0, names[best.reshape(-1)], None).tolist(),
                    "best_vr": best_vr.reshape(-1),
                    "family": np.where(member, names[best.reshape(-1)], None).tolist(),
                    "family_kind": np.where(member, kinds[best.reshape(-1)], None).tolist(),
                    "best_mean_on": mean_on.reshape(-1),
                    "best_mean_off": mean_off.reshape(-1),
                },
                schema_overrides={"best_feature": pl.Utf8, "family": pl.Utf8, "family_kind": pl.Utf8},
            )
        )
    if not frames:
        raise ValueError("no correlation block holds the reference's feature moments (blocks 'i-0')")
    return pl.concat(frames).unique(["layer", "neuron"], keep="first").sort("layer", "neuron")


def _means(state: State, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[L, N] mean activation where each neuron's best feature holds and where it does not (NaN where
    there is no such token)."""
    n_f = state["feature_count"][best]  # [L, N]
    s1 = np.take_along_axis(state["sum"], best[:, None, :], axis=1)[:, 0, :]
    n_off = float(state["count"][0]) - n_f
    with np.errstate(divide="ignore", invalid="ignore"):
        on = np.where(n_f > 0, state["shift"] + s1 / n_f, np.nan)
        off = np.where(n_off > 0, state["shift"] + (state["total_sum"] - s1) / n_off, np.nan)
    return on, off
