"""Figures of the positional-neuron analysis (Voita et al. 2023, Sec. 5: Figs. 7, 8, 9; Fig. 8 also draws 10, 11).

Figs. 7 and 9 are drawn from the `position_rates` table, Fig. 8 from the `neurons` and `layers` tables. What
is selected and stacked is kept in pure helpers, so that it can be checked without drawing. Each type has
one colour of the palette in every figure.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from itertools import product
from typing import Any

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from neuron_census.plots.figures import _style, colours, model_order, new_axes, say_missing, with_columns
from neuron_census.analyses.positional import NEURON_SCHEMA, POSITIONAL_TYPES, RATES_SCHEMA

TITLE_CHAR_INCHES = 0.075  # width of a character of an x-small title, so that neighbouring panels' titles never meet
PANELS_SHARE = 0.75  # of the figure's width, the panels' (the legend takes the rest)

NEURON_DTYPES: dict[str, pl.DataType] = {"model": pl.Utf8(), **NEURON_SCHEMA}


def type_colours(style: Mapping[str, Any]) -> dict[str, Any]:
    """One fixed palette colour per type, so that types match across figures."""
    return dict(zip(POSITIONAL_TYPES, sns.color_palette(style["palette"], n_colors=len(POSITIONAL_TYPES))))


# ---------------------------------------------------------------------------------- examples (Fig. 7)


def example_neurons(rates: pl.DataFrame, model: str, n_examples: int) -> pl.DataFrame:
    """Up to `n_examples` neurons of `model` per (type, strength), highest mutual information first.

    Columns positional_type, positional_strong, layer, neuron, position_mi and rank (0 = highest).
    """
    rates = with_columns(rates, RATES_SCHEMA)
    return (
        rates.filter(pl.col("model") == model)
        .select("positional_type", "positional_strong", "layer", "neuron", "position_mi")
        .unique(["layer", "neuron"], keep="first")
        .sort(["position_mi", "layer", "neuron"], descending=[True, False, False])
        .with_columns(rank=pl.int_range(pl.len()).over("positional_type", "positional_strong").cast(pl.Int64))
        .filter(pl.col("rank") < n_examples)
        .sort("positional_type", "positional_strong", "rank")
    )


def plot_positional_examples(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 7: example firing-rate curves; columns = types, rows = strong / weak."""
    style = _style(style)
    rates = with_columns(tables["position_rates"], RATES_SCHEMA)
    models = model_order(rates)
    model = style.get("model") or (models[0] if models else None)
    n_examples = int(style.get("n_examples", 3))
    own = rates.filter(pl.col("model") == (model or ""))  # no model: nothing to draw
    chosen = example_neurons(own, model or "", n_examples)
    type_colour = type_colours(style)
    fig, axes = new_axes(style, 2, len(POSITIONAL_TYPES), sharex=True, sharey=True, squeeze=False)
    for column, kind in enumerate(POSITIONAL_TYPES):
        for row, strong in enumerate((True, False)):
            ax = axes[row, column]
            picked = chosen.filter((pl.col("positional_type") == kind) & (pl.col("positional_strong") == strong))
            if picked.is_empty():
                say_missing(ax, "none")
            else:  # one shade of the type's colour per example
                shades = sns.light_palette(type_colour[kind], n_colors=picked.height + 2, reverse=True)
                for (layer, neuron), shade in zip(picked.select("layer", "neuron").iter_rows(), shades):
                    curve = own.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron)).sort("position")
                    ax.plot(curve["position"].to_numpy(), curve["fire_rate"].to_numpy(), color=shade, lw=1,
                            label=f"L{layer}/{neuron}")
                ax.legend(fontsize="xx-small", frameon=False, loc="best", handlelength=1)
            ax.set_ylim(-0.02, 1.02)
            if row == 0:
                ax.set_title(kind.replace("_", " "), fontsize="small")
            if column == 0:
                ax.set_ylabel(f"{'strong' if strong else 'weak'}\nfiring rate", fontsize="small")
            if row == 1:
                ax.set_xlabel("position", fontsize="small")
    fig.suptitle(style.get("title") or (f"positional neurons of {model}" if model else "no positional neurons"))
    return fig


# ------------------------------------------------------------------------------- neurons per layer (Fig. 8)


def stacked_dots(neurons: pl.DataFrame) -> pl.DataFrame:
    """Positional neurons with their height in their layer's stack: by type order, then strong first, then id.

    Columns model, layer, neuron, positional_type, positional_strong, stack (Int64, from 0 per model and layer).
    """
    type_order = pl.col("positional_type").replace_strict(POSITIONAL_TYPES, range(len(POSITIONAL_TYPES)), default=None)
    return (
        with_columns(neurons, NEURON_DTYPES)
        .filter(pl.col("positional").fill_null(False))
        .select("model", "layer", "neuron", "positional_type", "positional_strong")
        .sort(
            ["model", "layer", type_order, "positional_strong", "neuron"],
            descending=[False, False, False, True, False],
            nulls_last=True,
            maintain_order=True,
        )
        .with_columns(stack=pl.int_range(pl.len()).over("model", "layer").cast(pl.Int64))
    )


def plot_positional_neurons(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 8 (also 10, 11): every positional neuron as a dot above its layer, colour = type, filled = strong."""
    style = _style(style)
    neurons = with_columns(tables["neurons"], NEURON_DTYPES)
    layers = with_columns(tables["layers"], {"model": pl.Utf8(), "layer": pl.Int64()})
    models = model_order(layers, neurons)
    type_colour = type_colours(style)
    fig, axes = new_axes(style, 1, max(len(models), 1), sharey=True, squeeze=False)
    dots = stacked_dots(neurons)
    title_chars = max(6, int(PANELS_SHARE * style["figsize"][0] / max(len(models), 1) / TITLE_CHAR_INCHES) - 1)
    for ax, model in zip(axes[0], models):
        own = dots.filter(pl.col("model") == model)
        if own.is_empty():
            say_missing(ax, "no positional neurons")
        for kind, strong in product(POSITIONAL_TYPES, (True, False)):
            part = own.filter((pl.col("positional_type") == kind) & (pl.col("positional_strong") == strong))
            if not part.is_empty():
                ax.scatter(
                    part["layer"].to_numpy(), part["stack"].to_numpy(), s=12.0, marker=style["marker"],
                    facecolors=type_colour[kind] if strong else "none", edgecolors=type_colour[kind], linewidths=0.8,
                )
        model_layers = layers.filter(pl.col("model") == model)["layer"].drop_nulls().to_numpy()
        span = np.concatenate([model_layers, own["layer"].drop_nulls().to_numpy()])
        if len(span):
            ax.set_xlim(span.min() - 0.7, span.max() + 0.7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = f"{model} ({own.height})"
        ax.set_title(textwrap.fill(title, title_chars), fontsize="x-small")  # long labels wrap, not overlap
        ax.set_xlabel("layer")
    if not models:
        say_missing(axes[0, 0], "no models")
    axes[0, 0].set_ylabel("positional neurons")
    axes[0, 0].yaxis.set_major_locator(MaxNLocator(integer=True))

    def handle(label: str, edge: Any, face: Any) -> Line2D:
        return Line2D([], [], ls="", marker=style["marker"], markeredgecolor=edge, markerfacecolor=face, label=label)

    handles = [handle(kind.replace("_", " "), type_colour[kind], type_colour[kind]) for kind in POSITIONAL_TYPES]
    handles += [handle("strong", "0.3", "0.3"), handle("weak", "0.3", "none")]
    fig.legend(handles=handles, loc="outside right center", fontsize="small", frameon=False)
    if style.get("title"):
        fig.suptitle(style["title"])
    return fig


# -------------------------------------------------------------------------- oscillatory ranges (Fig. 9)


def pick_oscillatory_layer(
    rates: pl.DataFrame, model: str | None, layer: int | None
) -> tuple[str | None, int | None]:
    """The (model, layer) Fig. 9 shows: given ones are kept, missing ones go to the layer with the most strong
    oscillatory neurons (ties: the model first in legend order, then the lower layer)."""
    rates = with_columns(rates, RATES_SCHEMA)
    names = model_order(rates)
    chosen = (pl.col("positional_type") == "oscillatory") & pl.col("positional_strong").fill_null(False)
    if model is not None:
        chosen &= pl.col("model") == model
    if layer is not None:
        chosen &= pl.col("layer") == layer
    counts = (
        rates.filter(chosen)
        .group_by("model", "layer")
        .agg(n=pl.col("neuron").n_unique())
        .sort("n", pl.col("model").replace_strict(names, range(len(names))), "layer", descending=[True, False, False])
    )
    if counts.is_empty():
        return model, layer
    return counts["model"][0], int(counts["layer"][0])


def oscillatory_ranges(rates: pl.DataFrame, model: str, layer: int, threshold: float) -> pl.DataFrame:
    """Position ranges (firing rate >= threshold) of the strong oscillatory neurons of one layer.

    A range is a maximal run of consecutive positions at or above the threshold. Columns neuron, start,
    width (Int64); neurons ordered by the start of their first range, then by its width (among neurons whose
    first range is cut by the first position, the shorter one is shifted further), ranges by start.
    """
    above = (
        with_columns(rates, RATES_SCHEMA)
        .filter(
            (pl.col("model") == model) & (pl.col("layer") == layer) & (pl.col("positional_type") == "oscillatory")
            & pl.col("positional_strong").fill_null(False)
        )
        .sort("neuron", "position")
        .filter(pl.col("fire_rate") >= threshold)
        .select("neuron", "position")
    )
    breaks = (pl.col("position").diff().over("neuron").fill_null(2) != 1).cum_sum().alias("_range")
    ranges = (
        above.with_columns(breaks)
        .group_by("neuron", "_range", maintain_order=True)
        .agg(start=pl.col("position").first(), width=(pl.col("position").last() - pl.col("position").first() + 1))
        .drop("_range")
    )
    first = ranges.group_by("neuron").agg(_first=pl.col("start").min(), _width=pl.col("width").first())
    return (
        ranges.join(first, on="neuron", how="left")
        .sort("_first", "_width", "neuron", "start")
        .drop("_first", "_width")
        .with_columns(pl.col("start", "width", "neuron").cast(pl.Int64))
    )


def plot_oscillatory_ranges(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 9: one bar row per strong oscillatory neuron of one layer, its ranges over position."""
    style = _style(style)
    rates = with_columns(tables["position_rates"], RATES_SCHEMA)
    threshold = float(style.get("threshold", 0.5))
    model, layer = pick_oscillatory_layer(rates, style.get("model"), style.get("layer"))
    ranges = oscillatory_ranges(rates, model or "", layer or 0, threshold)  # empty where no layer was found
    fig, ax = new_axes(style)
    if ranges.is_empty():
        say_missing(ax, f"no strong oscillatory neurons in {_where(model, layer)}")
        ax.set_axis_off()
        ax.set_title(style.get("title") or "")
        return fig
    neurons = list(dict.fromkeys(ranges["neuron"].to_list()))
    for row, (neuron, colour) in enumerate(zip(neurons, colours(style, len(neurons)))):
        own = ranges.filter(pl.col("neuron") == neuron)
        ax.broken_barh(list(zip(own["start"].to_list(), own["width"].to_list())), (row - 0.4, 0.8), color=colour)
    ax.set_yticks(range(len(neurons)), [str(neuron) for neuron in neurons], fontsize="x-small")
    ax.set_ylim(len(neurons) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    positions = rates.filter((pl.col("model") == model) & (pl.col("layer") == layer))["position"]
    ax.set_xlim(positions.min(), positions.max() + 1)
    ax.set_xlabel("position")
    ax.set_ylabel("neuron")
    ax.set_title(style.get("title") or f"{model}, layer {layer}: positions with firing rate >= {threshold:g}")
    return fig


def _where(model: str | None, layer: int | None) -> str:
    """The layer Fig. 9 looked in, as much of it as was set."""
    if model is None:
        return "any layer of any model" if layer is None else f"layer {layer} of any model"
    return f"any layer of {model}" if layer is None else f"{model} layer {layer}"
