"""Figures of sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack", Secs. 3-5).

Two tables, each concatenated over the figure's models (legend order = first appearance):
- `probes` (one row per model, feature, layer, method and k: the test metrics of a logistic-regression
  probe on the method's top-k neurons) feeds `plot_probe_f1_by_k` (mean F1 over a family's features
  against k, one line per layer, one method) and `plot_probe_methods` (mean F1 of every neuron-ranking
  method at a few fixed k, bars per model);
- `probe_neurons` (the best single neuron per model, feature and layer: the k = 1 probe with the highest
  test F1 over methods) feeds `plot_probe_best_single` (mean best k = 1 F1 of a family's features by
  layer), `plot_probe_precision_recall` (precision against recall of those neurons, with the F1 threshold
  iso-line) and `plot_monosemantic_neurons` (a drawn table of the neurons at or above the threshold;
  `monosemantic_frame` is its CSV, every such neuron).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing, with_columns

PAPER = "Gurnee et al. 2023"
MISSING = "no sparse-probing study configured"
# bar order of the methods comparison: the rankings, then the integer program, then the random baseline
METHOD_ORDER: tuple[str, ...] = (
    "mean_difference", "f_statistic", "mutual_information", "l1_logistic", "linear_svm", "optimal", "random",
)
PROBE_DTYPES: dict[str, pl.DataType] = {
    "model": pl.Utf8(), "feature": pl.Utf8(), "family": pl.Utf8(), "layer": pl.Int64(), "n_layers": pl.Int64(),
    "method": pl.Utf8(), "k": pl.Int64(), "f1": pl.Float64(), "precision": pl.Float64(), "recall": pl.Float64(),
}
NEURON_DTYPES: dict[str, pl.DataType] = {
    "model": pl.Utf8(), "feature": pl.Utf8(), "family": pl.Utf8(), "layer": pl.Int64(), "n_layers": pl.Int64(),
    "method": pl.Utf8(), "neuron": pl.Int64(), "f1": pl.Float64(), "precision": pl.Float64(),
    "recall": pl.Float64(), "monosemantic": pl.Boolean(),
}
MONOSEMANTIC_COLUMNS: tuple[str, ...] = ("model", "layer", "neuron", "feature", "method", "f1", "precision", "recall")


def _table(tables: Mapping[str, pl.DataFrame], kind: str, dtypes: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """The figure's table with typed columns (empty, still typed, where no model has one)."""
    return with_columns(tables.get(kind, pl.DataFrame()), dtypes)


def _families(frame: pl.DataFrame) -> list[str]:
    """Feature families in order of first appearance."""
    return list(dict.fromkeys(frame["family"].drop_nulls().to_list()))


def _title(fig: Figure, style: Mapping[str, Any], default: str) -> None:
    fig.suptitle(style.get("title") or f"{default} ({PAPER})")


def _unit_axis(ax: Axes, axis: str = "y") -> None:
    getattr(ax, f"set_{axis}lim")(0.0, 1.02)


def _log2_ks(ax: Axes, ks: list[int]) -> None:
    """x on a log2 scale with a tick at each k drawn (and no others); where more than six k are drawn, only
    the powers of two (of four beyond eight k) and the largest k are labelled, so labels do not run together."""
    ax.set_xscale("log", base=2)
    crowded = len(ks) > 6
    labelled = {k for k in ks if k & (k - 1) == 0 and (len(ks) <= 8 or k.bit_length() % 2 == 1)} | {max(ks)}
    ax.set_xticks(ks, [str(k) if not crowded or k in labelled else "" for k in ks])
    ax.xaxis.set_minor_locator(NullLocator())


def _figure_legend(fig: Figure, axes: Any, n_models: int) -> None:
    """One legend of the models below the panels (inside a panel it would cover data), each model once."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=max(n_models, 1), fontsize="small", frameon=False)


def feature_counts(frame: pl.DataFrame) -> dict[tuple[str, str], int]:
    """How many features each (model, family) has in the table."""
    counts = frame.group_by("model", "family").agg(pl.col("feature").n_unique())
    return {(model, family): n for model, family, n in counts.iter_rows()}


def plot_probe_f1_by_k(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Mean test F1 over a family's features against k (log2 axis) for one method (style `method`,
    default mean_difference, else the first method present): a panel per family (columns) and a row of
    panels per model, one line per layer, early layers light and late ones dark (style `layer_palette`).
    The style's figsize is one row of panels; each further model adds a row of the same height."""
    style = _style(style)
    probes = _table(tables, "probes", PROBE_DTYPES)
    methods = probes["method"].drop_nulls().unique(maintain_order=True).to_list()
    method = style.get("method", "mean_difference")
    method = method if method in methods else (methods[0] if methods else None)  # else the first present
    probes = probes.filter(pl.col("method") == method) if method is not None else probes.clear()
    # mean test F1 over each family's features per model, family, layer and k
    means = (
        probes.group_by("model", "family", "layer", "k", maintain_order=True)
        .agg(pl.col("f1").mean(), pl.col("n_layers").max())
        .sort("layer", "k", maintain_order=True)
    )
    counts = feature_counts(probes)
    models, families = model_order(means), _families(means)
    width, height = style["figsize"]
    grid_style = {**style, "figsize": [width, height * max(len(models), 1)]}
    fig, axes = new_axes(grid_style, max(len(models), 1), max(len(families), 1), squeeze=False)
    _title(fig, style, f"Sparse probing, {method or 'no method'}: test F1 against k")
    if not models:
        say_missing(axes[0][0], MISSING)
        return fig
    cmap = sns.color_palette(style.get("layer_palette", "crest"), as_cmap=True)  # early layers light, late dark
    for row, model in zip(axes, models):
        rows = means.filter(pl.col("model") == model)
        depth = int(rows["n_layers"].max() or rows["layer"].max() + 1)
        for ax, family in zip(row, families):
            part = rows.filter(pl.col("family") == family)
            ax.set_title(f"{family} ({counts.get((model, family), 0)} features)", fontsize="small")
            _unit_axis(ax)
            if part.is_empty():
                say_missing(ax, f"no {family} features")
                continue
            for layer in sorted(part["layer"].unique().to_list()):
                curve = part.filter(pl.col("layer") == layer).sort("k")
                line(ax, curve["k"], curve["f1"], style, color=cmap(layer / max(depth - 1, 1)), label=f"layer {layer}")
            _log2_ks(ax, sorted(part["k"].unique().to_list()))
            ax.set_xlabel("k (neurons)")
        row[0].set_ylabel(f"{model}\nmean F1 ({method})", fontsize="small")
        bar = fig.colorbar(plt.cm.ScalarMappable(Normalize(0, max(depth - 1, 1)), cmap), ax=row, pad=0.01)
        bar.set_label("layer")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    return fig


def plot_probe_best_single(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """The best k = 1 probe by layer: mean over a family's features of the best single neuron's test F1,
    a panel per family (at most style `columns` a row, default 5; the figsize is one row), a line per model."""
    style = _style(style)
    neurons = _table(tables, "probe_neurons", NEURON_DTYPES)
    # the best single neuron's F1, mean over each family's features, per model, family and layer
    means = neurons.group_by("model", "family", "layer", maintain_order=True).agg(pl.col("f1").mean())
    means = means.sort("layer", maintain_order=True)
    models, families = model_order(means), _families(means)
    columns = max(1, min(int(style.get("columns", 5)), len(families) or 1))
    n_rows = -(-max(len(families), 1) // columns)
    width, height = style["figsize"]
    fig, grid = new_axes({**style, "figsize": [width, height * n_rows]}, n_rows, columns, squeeze=False)
    axes = grid.reshape(-1)
    for ax in axes[max(len(families), 1):]:  # the last row's empty places
        ax.set_visible(False)
    _title(fig, style, "Sparse probing: best single neuron's test F1 by layer")
    if not models:
        say_missing(axes[0], MISSING)
        return fig
    for ax, family in zip(axes, families):
        part = means.filter(pl.col("family") == family)
        for model, colour in zip(models, colours(style, len(models))):
            rows = part.filter(pl.col("model") == model)
            if not rows.is_empty():
                line(ax, rows["layer"], rows["f1"], style, color=colour, label=model)
        features = neurons.filter(pl.col("family") == family)["feature"].n_unique()
        ax.set_title(f"{family} ({features} features)", fontsize="small")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _unit_axis(ax)
    for row in grid:
        row[0].set_ylabel("best k = 1 test F1 (mean)")
    _figure_legend(fig, axes[: len(families)], len(models))
    return fig


def plot_probe_methods(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Every neuron-ranking method at fixed k (style `ks`, default [1, 4, 8]; a panel per k in the table):
    bars of the mean test F1 over (feature, layer), hue = model, with whiskers over the middle half of the
    probes (25th to 75th percentile)."""
    style = _style(style)
    probes = _table(tables, "probes", PROBE_DTYPES)
    present = set(probes["k"].drop_nulls().to_list())
    ks = [int(k) for k in style.get("ks", [1, 4, 8]) if int(k) in present]
    models = model_order(probes)
    fig, axes = new_axes(style, 1, max(len(ks), 1), squeeze=False, sharey=True)
    _title(fig, style, "Sparse probing: neuron-ranking methods at fixed k")
    if not ks:
        say_missing(axes[0][0], MISSING if probes.is_empty() else "none of the chosen k in the sweep")
        return fig
    methods = [m for m in METHOD_ORDER if m in set(probes["method"].to_list())]
    methods += [m for m in probes["method"].drop_nulls().unique(maintain_order=True).to_list() if m not in methods]
    for ax, k in zip(axes[0], ks):
        rows = probes.filter(pl.col("k") == k).select("model", "method", "f1").to_pandas()
        sns.barplot(rows, x="method", y="f1", hue="model", order=methods, hue_order=models, errorbar=("pi", 50),
                    palette=colours(style, len(models)), ax=ax, err_kws={"linewidth": 1}, capsize=0.1)
        ax.set_title(f"k = {k}", fontsize="small")
        ax.set_xlabel("")
        ax.set_ylabel("mean test F1")
        ax.tick_params(axis="x", labelrotation=60, labelsize="x-small")
        _unit_axis(ax)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    _figure_legend(fig, axes[0], len(models))
    return fig


def f1_isoline(threshold: float, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision along F1 = `threshold`: p = t r / (2 r - t), from r = t / (2 - t) (p = 1) to r = 1."""
    recall = np.linspace(threshold / (2.0 - threshold), 1.0, points)
    return recall, threshold * recall / (2.0 * recall - threshold)


def plot_probe_precision_recall(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Precision against recall of the best single neurons, a point per (feature, layer) coloured by family,
    a panel per model, with the F1 = threshold curve (style `threshold`, default 0.9; None draws none)."""
    style = _style(style)
    neurons = _table(tables, "probe_neurons", NEURON_DTYPES)
    models, families = model_order(neurons), _families(neurons)
    fig, axes = new_axes(style, 1, max(len(models), 1), squeeze=False, sharey=True)
    _title(fig, style, "Sparse probing: precision and recall of the best single neurons")
    if not models:
        say_missing(axes[0][0], MISSING)
        return fig
    shades = dict(zip(families, colours(style, len(families))))
    threshold = style.get("threshold", 0.9)
    for ax, model in zip(axes[0], models):
        rows = neurons.filter(pl.col("model") == model)
        for family in families:
            part = rows.filter(pl.col("family") == family)
            ax.scatter(part["recall"].to_numpy(), part["precision"].to_numpy(), s=12, alpha=0.8,
                       color=shades[family], label=family, linewidths=0)
        if threshold is not None:
            ax.plot(*f1_isoline(float(threshold)), linestyle="--", color="0.4", linewidth=1, label=f"F1 = {threshold:g}")
        ax.set_title(f"{model} ({rows.height} neurons)", fontsize="small")
        ax.set_xlabel("recall")
        _unit_axis(ax, "x")
        _unit_axis(ax)
    axes[0][0].set_ylabel("precision")
    axes[0][0].legend(fontsize="x-small", frameon=False, loc="lower left")
    return fig


def _by_model(frame: pl.DataFrame) -> pl.Expr:
    """Each row's model's place in legend order (for sorting)."""
    return pl.col("model").replace_strict({m: i for i, m in enumerate(model_order(frame))}, default=None, return_dtype=pl.Int64)


def monosemantic_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Every monosemantic neuron (best single-neuron F1 at or above the study's threshold): model, layer,
    neuron, feature, method, f1, precision, recall; by model order, then F1 (best first), layer, neuron."""
    neurons = with_columns(frame, NEURON_DTYPES).filter(pl.col("monosemantic").fill_null(False))
    order = [_by_model(neurons), pl.col("f1"), pl.col("layer"), pl.col("neuron")]
    return neurons.sort(order, descending=[False, True, False, False], nulls_last=True).select(MONOSEMANTIC_COLUMNS)


def plot_monosemantic_neurons(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """A table of the monosemantic neurons over all models, best F1 first, at most style `max_rows`
    (default 20): model, layer, neuron, the feature it reads, the ranking method that found it, F1,
    precision and recall."""
    style = _style(style)
    neurons = _table(tables, "probe_neurons", NEURON_DTYPES)
    found = monosemantic_frame(neurons)
    order = [pl.col("f1"), _by_model(found), pl.col("layer"), pl.col("neuron")]
    shown = found.sort(order, descending=[True, False, False, False], nulls_last=True).head(int(style.get("max_rows", 20)))
    fig, ax = new_axes(style)
    ax.axis("off")
    _title(fig, style, "Sparse probing: monosemantic neurons")
    if shown.is_empty():
        say_missing(ax, MISSING if neurons.is_empty() else "no monosemantic neuron: no single neuron reaches the F1 threshold")
        return fig
    cells = [[model, str(layer), str(neuron), feature, method, *(f"{v:.3f}" for v in (f1, precision, recall))]
             for model, layer, neuron, feature, method, f1, precision, recall in shown.iter_rows()]
    table = ax.table(cellText=cells, colLabels=["model", "layer", "neuron", "feature", "method", "F1", "precision", "recall"],
                     loc="upper center", cellLoc="left", colWidths=[0.3, 0.06, 0.07, 0.2, 0.14, 0.07, 0.08, 0.08])
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    ax.set_title(f"the {shown.height} best of {found.height} monosemantic neurons, best F1 first", fontsize="small")
    for cell in table.get_celld().values():
        cell.set_height(min(0.06, 0.95 / (shown.height + 1)))
    return fig
