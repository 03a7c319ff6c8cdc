"""Paper figures drawn from tables, and what every figure module shares (style, saving).

Each drawing function takes `tables` (table kind -> that table over the figure's models, in legend
order) and a style mapping, and returns a Figure; figures of other analyses live beside this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neuron_census.atomic import atomic_path  # noqa: E402

DEFAULT_STYLE: dict[str, Any] = {
    "figsize": [5.0, 3.5],
    "dpi": 150,
    "palette": "colorblind",
    "context": "paper",
    "font_scale": 1.2,
    "marker": "o",
}
# No timestamps or software versions in the files, so reruns give identical bytes.
METADATA: dict[str, dict[str, None]] = {
    ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    ".png": {"Software": None},
}


def with_columns(frame: pl.DataFrame, dtypes: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with every column of `dtypes` present (missing ones null): the tables of some models lack a
    column, and a figure with no tables at all still gets typed, empty columns."""
    if frame.width == 0:
        return pl.DataFrame(schema=dict(dtypes))
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in dtypes.items() if name not in frame.columns]
    return frame.with_columns(missing) if missing else frame


def _style(style: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULT_STYLE, **style}
    sns.set_theme(context=merged["context"], style="whitegrid", font_scale=merged["font_scale"])
    return merged


def model_order(*frames: pl.DataFrame) -> list[str]:
    """Model names in legend order: order of first appearance over the frames."""
    names = [name for frame in frames if "model" in frame.columns for name in frame["model"].drop_nulls().to_list()]
    return list(dict.fromkeys(names))


def colours(style: Mapping[str, Any], n: int) -> list[Any]:
    return list(sns.color_palette(style["palette"], n_colors=max(n, 1)))


def new_axes(style: Mapping[str, Any], *grid: int, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of the style's size and resolution, with one axes or a `grid` (rows, columns) of them."""
    return plt.subplots(*grid, figsize=style["figsize"], dpi=style["dpi"], layout="constrained", **kwargs)


def line(ax: Axes, x: pl.Series, y: pl.Series, style: Mapping[str, Any], **kwargs: Any) -> None:
    ax.plot(x.to_numpy(), y.to_numpy(), marker=style["marker"], markersize=3, **kwargs)


def say_missing(ax: Axes, text: str) -> None:
    """A panel with nothing to draw still says why, so the report never shows a blank panel."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize="small", color="0.4")


def _per_model_lines(layers: pl.DataFrame, y: str, scale: float, ylabel: str, style: Mapping[str, Any]) -> Figure:
    style = _style(style)
    models = model_order(layers)
    fig, ax = new_axes(style)
    for model, colour in zip(models, colours(style, len(models))):
        rows = layers.filter(pl.col("model") == model).sort("layer")
        line(ax, rows["rel_depth"], rows[y] * scale, style, color=colour, label=model)
    ax.set_xlabel("layer / number of layers")
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.02, 1.0)
    ax.set_title(style.get("title", ""))
    ax.legend(fontsize="small", frameon=False)
    return fig


def plot_dead_neurons(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 1a: percentage of dead neurons per layer, x = relative depth, one line per model."""
    return _per_model_lines(tables["layers"], "dead_frac", 100.0, "dead neurons (%)", style)


def plot_fire_frequency(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 1b: mean firing frequency of the non-dead neurons per layer, one line per model."""
    return _per_model_lines(tables["layers"], "mean_fire_freq_alive", 1.0, "mean firing frequency (alive)", style)


def save_figure(fig: Figure, outputs: Sequence[str | os.PathLike[str]]) -> None:
    """Save one figure to every output path (format from the suffix), each atomically."""
    for output in outputs:
        path = Path(output)
        with atomic_path(path) as tmp:
            # the drawn extent, so that a legend or title reaching past the figure's edge is never cut off
            metadata = METADATA.get(path.suffix, {})
            fig.savefig(tmp, format=path.suffix.lstrip("."), metadata=metadata, bbox_inches="tight")
    plt.close(fig)
