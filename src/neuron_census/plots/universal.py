"""Figures of universal neurons (Gurnee et al. 2024) from `universal.parquet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from neuron_census.analyses.features import KINDS
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


PROPERTIES = (  # (column, axis label)
    ("act_freq", "activation\nfrequency"), ("pre_mean", "pre-act.\nmean"), ("pre_var", "pre-act.\nvariance"),
    ("pre_skew", "pre-act.\nskew"), ("pre_kurtosis", "pre-act.\nkurtosis"), ("w_in_norm", "|w_in|"), ("b_in", "input\nbias"),
    ("w_out_norm", "|w_out|"), ("in_out_cos", "cos(w_in,\nw_out)"), ("l2_penalty", "L2\npenalty"),
    ("vocab_cos_var", "W_U cos\nvariance"), ("vocab_cos_skew", "W_U cos\nskew"), ("vocab_cos_kurtosis", "W_U cos\nkurtosis"),
)


def property_percentiles(universal: pl.DataFrame) -> pl.DataFrame:
    """Every reference neuron's within-layer percentile (0-100, ties averaged, nulls left out) of each
    property of universal.parquet, with its `universal` flag."""
    present = [column for column, _ in PROPERTIES if column in universal.columns]
    ranks = [((pl.col(c).rank("average") - 0.5) / pl.col(c).count() * 100.0).over("model", "layer").alias(c) for c in present]
    return universal.select("model", "layer", "neuron", "universal", *ranks)


def plot_universal_properties(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per property, the distribution of the universal neurons' within-layer percentiles against all
    neurons of their layer (50: no different from a typical neuron), one box per reference model."""
    style = _style(style)
    universal = tables["universal"]
    models = model_order(universal)
    fig, ax = new_axes(style)
    percentiles = property_percentiles(universal) if models else pl.DataFrame()
    labels = [label for column, label in PROPERTIES if column in percentiles.columns]
    columns = [column for column, _ in PROPERTIES if column in percentiles.columns]
    width = 0.8 / max(len(models), 1)
    for index, (model, colour) in enumerate(zip(models, colours(style, len(models)))):
        rows = percentiles.filter(pl.col("model") == model, pl.col("universal"))
        count = rows.height
        label = f"{model} ({count} universal)"
        if count == 0:
            ax.plot([], [], color=colour, label=label + ": nothing to draw")
            continue
        data = [rows[column].drop_nulls().to_numpy() for column in columns]
        at = np.arange(len(columns)) + (index - (len(models) - 1) / 2) * width
        boxes = ax.boxplot(data, positions=at, widths=width * 0.9, patch_artist=True, showfliers=False, manage_ticks=False)
        for patch in boxes["boxes"]:
            patch.set(facecolor=colour, alpha=0.6)
        for median in boxes["medians"]:
            median.set(color="0.1")
        ax.plot([], [], color=colour, linewidth=6, alpha=0.6, label=label)
    ax.axhline(50.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(labels)), labels, fontsize="x-small")
    ax.set_ylim(0, 100)
    ax.set_ylabel("within-layer percentile")
    ax.set_title(style.get("title", ""))
    if not models:
        say_missing(ax, "no universal-neuron study configured")
    else:
        ax.legend(fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(0, -0.18), ncols=min(len(models), 3))
    return fig


def plot_universal_families(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """One panel per reference model: the neurons of each layer with a family (variance reduction above
    the study's threshold), stacked by the family's kind; the last panel: for each kind, its example with
    the highest variance reduction, its mean activation where the feature holds and where it does not."""
    style = _style(style)
    universal = tables["universal"]
    models = model_order(universal) if "family_kind" in universal.columns else []
    fig, axes = new_axes(style, 1, len(models) + 1, squeeze=False)
    palette = dict(zip(KINDS, colours({**style, "palette": "tab10"}, len(KINDS))))
    for ax, model in zip(axes[0], models):
        rows = universal.filter(pl.col("model") == model)
        layers = np.arange(int(rows["layer"].max()) + 1)
        counts = rows.drop_nulls("family_kind").group_by("layer", "family_kind").len()
        bottom = np.zeros(len(layers))
        for kind in KINDS:
            height = np.zeros(len(layers))
            for layer, n in counts.filter(pl.col("family_kind") == kind).select("layer", "len").iter_rows():
                height[layer] = n
            if height.any():
                ax.bar(layers, height, bottom=bottom, color=palette[kind], label=kind)
            bottom += height
        if bottom.any():
            ax.legend(fontsize="x-small", frameon=False)
        else:
            say_missing(ax, "no neuron has a family")
        ax.set_title(model, fontsize="small")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0][0].set_ylabel("neurons with a family")
    examples = axes[0][-1]
    families = universal.drop_nulls("family") if models else pl.DataFrame()
    best = families.sort("best_vr", descending=True).unique("family_kind", keep="first", maintain_order=True) if families.height else families
    best = best.sort(pl.col("family_kind").replace_strict(KINDS, list(range(len(KINDS))), default=len(KINDS))) if best.height else best
    for index, row in enumerate(best.iter_rows(named=True) if best.height else []):
        colour = palette.get(row["family_kind"], "0.5")
        examples.barh(index + 0.2, row["best_mean_on"], height=0.4, color=colour)
        examples.barh(index - 0.2, row["best_mean_off"], height=0.4, color=colour, alpha=0.35)
    if best.height:
        labels = [
            f"{row['model']} L{row['layer']} N{row['neuron']}\n{row['family']} (VR {row['best_vr']:.2f})" for row in best.iter_rows(named=True)
        ]
        examples.set_yticks(np.arange(best.height), labels, fontsize="x-small")
        examples.set_xlabel("mean activation: feature (dark) / not (light)")
        examples.invert_yaxis()
    else:
        say_missing(examples, "no family to show")
    examples.set_title("the clearest of each kind", fontsize="small")
    fig.suptitle(style.get("title", ""))
    return fig
