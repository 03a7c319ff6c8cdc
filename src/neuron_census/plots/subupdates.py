"""FFN sub-updates in vocabulary space (Geva et al. 2022) from `predictions.parquet` and
`subupdate_layers.parquet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing

CLUSTERS_SHOWN = 8


def plot_saturation_layers(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per model, the share of predictions whose saturation layer (the first layer from which the top-1
    token after the FFN no longer changes) is each layer; x = layer / (number of layers - 1)."""
    style = _style(style)
    predictions = tables["predictions"]
    models = model_order(predictions)
    fig, ax = new_axes(style)
    for model, colour in zip(models, colours(style, len(models))):
        rows = predictions.filter(pl.col("model") == model)
        n_layers = int(rows["layer"].max()) + 1
        saturation = rows.unique("prediction")["saturation_layer"].to_numpy()
        share = np.bincount(saturation, minlength=n_layers) / len(saturation)
        depth = pl.Series(np.arange(n_layers) / max(n_layers - 1, 1))
        line(ax, depth, pl.Series(share * 100.0), style, color=colour, label=f"{model} (mean layer {saturation.mean():.1f} of {n_layers})")
    if not models:
        say_missing(ax, "no sub-update study configured")
    ax.set_xlabel("saturation layer / (number of layers - 1)")
    ax.set_ylabel("predictions (%)")
    ax.set_ylim(bottom=0.0)
    ax.set_title(style.get("title", ""))
    if models:
        ax.legend(fontsize="small", frameon=False)
    return fig


def plot_subupdate_roles(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per layer, the share of dominant sub-updates that promote the final prediction (left) and that push
    down a candidate ranked above it before the FFN (right), against random sub-updates of the same layer
    (dashed); x = layer / (number of layers - 1)."""
    style = _style(style)
    shares = tables["subupdate_layers"]
    models = model_order(shares)
    fig, axes = new_axes(style, 1, 2)
    for model, colour in zip(models, colours(style, len(models))):
        rows = shares.filter(pl.col("model") == model)
        depth = max(int(rows["layer"].max()), 1)
        for ax, measure in zip(axes, ("promotes", "eliminates")):
            for kind, dash in (("dominant", "-"), ("random", "--")):
                part = rows.filter(pl.col("kind") == kind).sort("layer")
                label = f"{model}, {kind}" if measure == "promotes" else None
                line(ax, part["layer"] / depth, part[measure] * 100.0, style, color=colour, linestyle=dash, label=label)
    for ax, title in zip(axes, ("promote the prediction", "eliminate a candidate")):
        ax.set_xlabel("layer / (number of layers - 1)")
        ax.set_ylabel(f"{title} (% of sub-updates)")
        ax.set_ylim(bottom=0.0)
        if not models:
            say_missing(ax, "no sub-update study configured")
    fig.suptitle(style.get("title", ""))
    if models:
        axes[0].legend(fontsize="small", frameon=False)
    return fig


def plot_concept_clusters(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per model (one panel each), the largest concept clusters of its last layer's value vectors: their
    sizes, each labelled with the tokens its members' mean normalised projection raises most."""
    style = _style(style)
    clusters = tables["clusters"]
    models = model_order(clusters)
    fig, axes = new_axes(style, 1, max(len(models), 1), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = clusters.filter(pl.col("model") == model)
        last = rows.filter(pl.col("layer") == rows["layer"].max()).sort(["size", "cluster"], descending=[True, False]).head(CLUSTERS_SHOWN)
        labels = [" ".join(tokens[:5]) for tokens in last["top_tokens"].to_list()]
        ax.barh(np.arange(last.height)[::-1], last["size"].to_numpy(), color=colours(style, 1)[0])
        ax.set_yticks(np.arange(last.height)[::-1], labels, fontsize="x-small")
        ax.set_xlabel("value vectors in the cluster")
        ax.set_title(f"{model}, layer {rows['layer'].max()}", fontsize="small")
    if not models:
        say_missing(axes[0][0], "no sub-update study configured")
    fig.suptitle(style.get("title", ""))
    return fig


def plot_steering(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per model, with and without its chosen value vectors set during generation: the scorer's rate over
    the prompts' continuations (left) and the perplexity of held-out text (right, the cost)."""
    style = _style(style)
    summary = tables["steering_summary"]
    models = model_order(summary)
    fig, axes = new_axes(style, 1, 2)
    width = 0.8 / 2
    shades = colours(style, 2)
    for index, model in enumerate(models):
        rows = summary.filter(pl.col("model") == model)
        for offset, (condition, colour) in enumerate(zip(("baseline", "steered"), shades)):
            row = rows.filter(pl.col("condition") == condition)
            if row.is_empty():
                continue
            x = index + (offset - 0.5) * width
            label = condition if index == 0 else None
            axes[0].bar(x, float(row["rate"][0]) * 100.0, width, color=colour, label=label)
            axes[1].bar(x, float(row["perplexity"][0]), width, color=colour, label=label)
    names = [f"{m}\n{summary.filter(pl.col('model') == m)['values'][0]}" for m in models]
    scorers = sorted(set(summary["scorer"].to_list())) if models else []
    for ax, ylabel in zip(axes, (f"continuations flagged by {', '.join(scorers) or 'the scorer'} (%)", "held-out perplexity")):
        ax.set_xticks(np.arange(len(models)), names, fontsize="x-small")
        ax.set_ylabel(ylabel)
        if not models:
            say_missing(ax, "no steering configured")
    if models:
        axes[0].legend(fontsize="small", frameon=False)
    fig.suptitle(style.get("title", ""))
    return fig
