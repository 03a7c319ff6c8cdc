"""Figures of the n-gram and token-detector analyses (Voita et al. 2023, Sec. 4: Figs. 2, A, 3a, 3b, 4).

Every figure is drawn from the `neurons` / `layers` tables only; the counting behind the bars and lines is
kept in pure helpers so that it can be checked without drawing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from neuron_census.config import schema_defaults
from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing, with_columns

ORDER_NAMES: dict[int, str] = {1: "unigram", 2: "bigram", 3: "trigram"}
DEFAULT_BINS: tuple[int, ...] = (1, 6, 11, 21, 51, 201, 1001, 2001, 50001)
KEY_DTYPES: dict[str, pl.DataType] = {"model": pl.Utf8(), "layer": pl.Int64()}


# ---------------------------------------------------------------------------------- coverage (Fig. 2)


def compact_count(value: int) -> str:
    """A count as the paper writes bin edges: thousands as "k", where one past a thousand reads as it too.

    Integer bins [lo, hi) are shown inclusive ("201-1000" -> "201-1k", "1001-2000" -> "1k-2k").
    """
    return f"{value // 1000}k" if value >= 1000 and value % 1000 <= 1 else str(value)


def coverage_bin_labels(bins: Sequence[int]) -> list[str]:
    """Labels of the left-closed integer bins between consecutive edges, then of the bar beyond the last edge.

    The schema makes the edges (at least two) integers; that they increase it cannot say."""
    if any(hi <= lo for lo, hi in zip(bins, bins[1:])):
        raise ValueError(f"bins must be strictly increasing, got {list(bins)!r}")
    labels = []
    for lo, hi in zip(bins, bins[1:]):
        first, last = compact_count(lo), compact_count(hi - 1)
        labels.append(first if first == last else f"{first}-{last}")
    return [*labels, f"> {compact_count(bins[-1] - 1)}"]


def counted_neurons(neurons: pl.DataFrame, layers: pl.DataFrame, order: int) -> pl.DataFrame:
    """The neurons Fig. 2 counts: first half of the layers, not dead, with a coverage of this order.

    Columns model, layer, neuron, coverage (Int64) and exact (Boolean: false where the count is an upper
    bound; a table without the flag is exact).
    """
    name = ORDER_NAMES[order]
    coverage, exact = f"{name}_coverage", f"{name}_coverage_exact"
    columns = {**KEY_DTYPES, "neuron": pl.Int64(), "dead": pl.Boolean(), coverage: pl.Int64(), exact: pl.Boolean()}
    frame = with_columns(neurons, columns).select(
        "model", "layer", "neuron", "dead", coverage=pl.col(coverage).cast(pl.Int64), exact=pl.col(exact).fill_null(True)
    )
    depth = with_columns(layers, {**KEY_DTYPES, "n_layers_total": pl.Int64()})
    depth = depth.select("model", "layer", pl.col("n_layers_total").cast(pl.Int64))
    depth = depth.unique(["model", "layer"], keep="first", maintain_order=True)
    return (
        frame.join(depth, on=["model", "layer"], how="inner", maintain_order="left")
        .filter(
            (pl.col("layer") < 0.5 * pl.col("n_layers_total"))
            & ~pl.col("dead").fill_null(False)
            & pl.col("coverage").is_not_null()
        )
        .select("model", "layer", "neuron", "coverage", "exact")
    )


def coverage_histogram(
    neurons: pl.DataFrame, layers: pl.DataFrame, order: int, bins: Sequence[int] = DEFAULT_BINS
) -> pl.DataFrame:
    """Fig. 2's bars: per model and bin, how many counted neurons fall there and their percentage.

    One row per (model, bin) for every model of `neurons` in legend order, bins in order; the bar beyond the
    last edge only when some neuron of some model falls there. Coverage below the first edge has nothing
    to bin and is not counted. `percent` is 0 for a model with no counted neuron.
    """
    labels = coverage_bin_labels(bins)
    models = model_order(neurons)
    counted = counted_neurons(neurons, layers, order).filter(pl.col("coverage") >= bins[0])
    values = counted["coverage"].to_numpy()
    index = np.searchsorted(np.asarray(bins), values, side="right") - 1  # last edge <= value; overflow = len-1
    model_index = {model: i for i, model in enumerate(models)}
    rows = np.array([model_index[model] for model in counted["model"].to_list()], dtype=np.int64)
    counts = np.zeros((len(models), len(labels)), dtype=np.int64)
    np.add.at(counts, (rows, index), 1)
    n_bins = len(labels) if counts[:, -1].any() else len(labels) - 1
    counts = counts[:, :n_bins]
    totals = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return pl.DataFrame(
        {
            "model": np.repeat(np.asarray(models, dtype=object), n_bins).tolist(),
            "bin": labels[:n_bins] * len(models),
            "n": counts.ravel(),
            "percent": percent.ravel(),
        },
        schema={"model": pl.Utf8, "bin": pl.Utf8, "n": pl.Int64, "percent": pl.Float64},
    )


def coverage_legend_labels(
    neurons: pl.DataFrame, layers: pl.DataFrame, order: int, bins: Sequence[int] = DEFAULT_BINS
) -> dict[str, str]:
    """Model -> legend label with how many neurons Fig. 2 bins and how many of those are upper bounds."""
    counted = counted_neurons(neurons, layers, order).filter(pl.col("coverage") >= bins[0])
    summary = counted.group_by("model").agg(n=pl.len(), n_upper=(~pl.col("exact")).sum())
    found = {row["model"]: (row["n"], row["n_upper"]) for row in summary.iter_rows(named=True)}
    labels = {}
    for model in model_order(neurons):
        n, n_upper = found.get(model, (0, 0))
        labels[model] = f"{model} (n={n})" + (f" ({n_upper} upper bounds)" if n_upper else "")
    return labels


def plot_ngram_coverage(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 2 (order 1) and its bigram/trigram versions (App. A): neurons binned by their n-gram coverage.

    Style: order (1), bins (DEFAULT_BINS).
    """
    style = _style(style)
    order = style.get("order") or 1
    name = ORDER_NAMES[order]
    bins = style.get("bins") or DEFAULT_BINS
    neurons, layers = tables["neurons"], tables["layers"]
    histogram = coverage_histogram(neurons, layers, order, bins)
    labels = coverage_legend_labels(neurons, layers, order, bins)
    fig, ax = new_axes(style)
    if histogram["n"].sum() == 0:
        say_missing(ax, f"no {name} coverage counted in the first half of the layers")
    else:  # one group of bars per bin, one bar per model
        models = list(labels)
        bin_names = list(dict.fromkeys(histogram["bin"].to_list()))
        width = 0.8 / max(len(models), 1)
        positions = np.arange(len(bin_names), dtype=float)
        for i, (model, colour) in enumerate(zip(models, colours(style, len(models)))):
            heights = histogram.filter(pl.col("model") == model)["percent"].to_numpy()
            ax.bar(positions + (i - (len(models) - 1) / 2) * width, heights, width=width, color=colour, label=labels[model])
        ax.set_xticks(positions, bin_names, rotation=30, ha="right")
        fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)  # never over a bar
    share = style.get("analysis", {}).get("ngram_coverage", schema_defaults("analysis")["ngram_coverage"])
    ax.set_xlabel(f"number of distinct {name}s covering {100 * share:g}% of firings")
    ax.set_ylabel("neurons (%)")
    ax.set_title(style.get("title", ""))
    return fig


# ------------------------------------------------------------------------------- detectors (Figs. 3-4)


LINE_DTYPES: dict[str, pl.DataType] = {**KEY_DTYPES, "rel_depth": pl.Float64()}


def new_token_shares(layers: pl.DataFrame) -> pl.DataFrame:
    """Fig. 4's lines: per layer with a detected token, the percentage of its tokens new overall and new
    compared with the previous layer. Columns model, layer, rel_depth, new_overall_pct, new_vs_previous_pct."""
    counts = ("n_detected_tokens", "n_new_tokens_overall", "n_new_tokens_vs_previous")
    frame = with_columns(layers, {**LINE_DTYPES, **{name: pl.Int64() for name in counts}})
    detected = pl.col("n_detected_tokens").cast(pl.Float64)
    return frame.filter(pl.col("n_detected_tokens") > 0).select(
        "model",
        "layer",
        pl.col("rel_depth").cast(pl.Float64),
        new_overall_pct=100.0 * pl.col("n_new_tokens_overall") / detected,
        new_vs_previous_pct=100.0 * pl.col("n_new_tokens_vs_previous") / detected,
    )


def _model_lines(
    frame: pl.DataFrame,
    models: Sequence[str],
    columns: Sequence[str],
    ylabel: str,
    empty: str,
    style: Mapping[str, Any],
    kinds: Sequence[str] = (),
    totals: bool = False,
    counts: bool = False,
) -> Figure:
    """Per model one line of `columns[0]`, and with a second column a dashed line of the same colour; the
    legend names the models (with their totals, if `totals`) and the line styles' `kinds`. `counts`: the y
    axis counts, with integer ticks from 0 up to at least 1 (all-0 counts would get -0.05..0.05 otherwise).

    `models` (legend order) comes from the layers table, so colours and the x axis match Figs. 3a-4 even
    when a model has nothing to draw here.
    """
    style = _style(style)
    frame = with_columns(frame, {**LINE_DTYPES, **dict.fromkeys(columns, pl.Float64())})
    # layers of one model read best numbered, several need relative depth
    x, xlabel = ("layer", "layer") if len(models) == 1 else ("rel_depth", "layer / number of layers")
    fig, ax = new_axes(style)
    for model, colour in zip(models, colours(style, len(models))):
        rows = frame.filter(pl.col("model") == model).drop_nulls([x, *columns]).sort("layer")
        if rows.height == 0:
            continue
        label = f"{model} ({int(rows[columns[0]].sum())} total)" if totals else model
        line(ax, rows[x], rows[columns[0]], style, color=colour, label=label)
        if len(columns) == 2:
            line(ax, rows[x], rows[columns[1]], style, color=colour, linestyle="--")
    if not ax.lines:
        say_missing(ax, empty)
    else:  # below the axes: inside, the legend covers lines (a planted model's run along the top)
        handles, labels = ax.get_legend_handles_labels()
        if kinds:
            handles += [Line2D([], [], color="0.3", linestyle=linestyle) for linestyle in ("-", "--")]
            labels += kinds
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    ax.set_xlabel(xlabel)
    if x == "layer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_xlim(-0.02, 1.0)
    if counts:
        top = max(ax.get_ylim()[1], 1.0)
        ax.set_ylim(-0.04 * top, top)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(style.get("title", ""))
    return fig


def plot_token_detectors(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 3a: token-detecting neurons per layer, one line per model, each model's total in the legend."""
    layers = tables["layers"]
    ylabel, empty = "token-detecting neurons", "no layer with token-detector counts"
    return _model_lines(layers, model_order(layers), ["n_token_detectors"], ylabel, empty, style, totals=True, counts=True)


def plot_detected_tokens(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 3b: tokens with a detector in each layer (solid) and in this or any lower layer (dashed)."""
    layers = tables["layers"]
    return _model_lines(
        layers,
        model_order(layers),
        ("n_detected_tokens", "n_detected_tokens_cumulative"),
        "tokens with a detector",
        "no layer with detected-token counts",
        style,
        kinds=("in the layer", "in this or lower layers"),
        counts=True,
    )


def plot_new_tokens(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 4: each layer's detected tokens new overall (solid) and new vs the previous layer (dashed), as a
    share of the layer's detected tokens (style `values: percent`, the default) or as counts (`count`)."""
    layers = tables["layers"]
    values = style.get("values") or "percent"
    if values not in ("percent", "count"):
        raise ValueError(f"fig4 values must be 'percent' or 'count', got {values!r}")
    counts = values == "count"
    return _model_lines(
        layers.filter(pl.col("n_detected_tokens") > 0) if counts else new_token_shares(layers),
        model_order(layers),
        ("n_new_tokens_overall", "n_new_tokens_vs_previous") if counts else ("new_overall_pct", "new_vs_previous_pct"),
        "detected tokens that are new" + ("" if counts else " (%)"),
        "no layer with a detected token",
        style,
        kinds=("new overall", "new vs previous layer"),
        counts=counts,
    )
