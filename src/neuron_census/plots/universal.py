"""Figures of universal neurons (Gurnee et al. 2024) from `universal.parquet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing

PANELS = (("max_corr", "max correlation"), ("baseline_corr", "baseline (rotated)"), ("excess_corr", "excess correlation"))


def plot_universal_correlations(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per reference model, the distributions over its neurons of the mean (over the other models) largest
    correlation, of the rotated baseline, and of their difference, with the universality threshold."""
    style = _style(style)
    universal = tables["universal"]
    models = model_order(universal)
    fig, axes = new_axes(style, 1, len(PANELS), sharey=True)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, (column, label) in zip(axes, PANELS):
        for model, colour in zip(models, colours(style, len(models))):
            values = universal.filter(pl.col("model") == model)[column].drop_nulls().to_numpy()
            ax.hist(values, bins=bins, histtype="step", color=colour, label=model, density=True)
        ax.set_xlabel(label)
        if not models:
            say_missing(ax, "no universal-neuron study configured")
    thresholds = style.get("analysis", {}).get("universal_thresholds", {})
    for threshold in sorted(set(thresholds.values())):  # every study's (the models may be relabelled)
        axes[-1].axvline(threshold, color="0.3", linestyle="--", linewidth=1)
    axes[0].set_ylabel("density of neurons")
    if models:  # below the panels, where it hides no bar
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(models), fontsize="small", frameon=False)
    fig.suptitle(style.get("title", ""))
    return fig


def plot_universal_by_layer(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per reference model, the share of each layer's neurons that are universal (x = relative depth)."""
    style = _style(style)
    universal = tables["universal"]
    models = model_order(universal)
    fig, ax = new_axes(style)
    for model, colour in zip(models, colours(style, len(models))):
        rows = universal.filter(pl.col("model") == model)
        n_layers = rows["layer"].max() + 1
        share = rows.group_by("layer").agg(pl.col("universal").mean().alias("share")).sort("layer")
        depth = share["layer"] / max(n_layers - 1, 1)
        line(ax, depth, share["share"] * 100.0, style, color=colour, label=model)
    if not models:
        say_missing(ax, "no universal-neuron study configured")
    ax.set_xlabel("layer / (number of layers - 1)")
    ax.set_ylabel("universal neurons (%)")
    ax.set_ylim(bottom=0.0, top=max(1.0, ax.get_ylim()[1]))
    ax.set_title(style.get("title", ""))
    if models:
        ax.legend(fontsize="small", frameon=False)
    return fig
