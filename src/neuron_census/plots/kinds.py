"""Across the papers: how the kinds of neurons each analysis finds overlap (`analyses/kinds.py`), from the
`neurons` table of each of the figure's models; `kind_overlap_frame` is its CSV, every model and layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from neuron_census.analyses.kinds import kind_overlaps
from neuron_census.plots.figures import _style, model_order, new_axes, say_missing


def kind_overlap_frame(neurons: pl.DataFrame) -> pl.DataFrame:
    """The overlap table of every model and layer (the figure draws the all-layer rows)."""
    return kind_overlaps(neurons)


def plot_kind_overlaps(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """A panel per model: for each kind (row) the share of its neurons that are also of each other kind
    (column), over all layers, each cell labelled with the count of neurons of both; the diagonal holds
    each kind's count."""
    style = _style(style)
    overlaps = kind_overlaps(tables["neurons"]) if "neurons" in tables and tables["neurons"].height else pl.DataFrame()
    models = model_order(overlaps) if overlaps.height else []
    fig, axes = new_axes(style, 1, max(len(models), 1), squeeze=False)
    fig.suptitle(style.get("title") or "Kinds of neurons across the papers: share of a kind's neurons that are also another kind")
    if not models:
        say_missing(axes[0][0], "no neuron of any kind")
        return fig
    for ax, model in zip(axes[0], models):
        rows = overlaps.filter((pl.col("model") == model) & pl.col("layer").is_null())
        names = list(dict.fromkeys(rows["kind"].to_list()))
        share = rows["share"].fill_null(np.nan).to_numpy().reshape(len(names), len(names))
        both = rows["n_both"].to_numpy().reshape(len(names), len(names))
        ax.imshow(share, vmin=0, vmax=1, cmap=style.get("cmap", "Blues"))
        ax.grid(False)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(both[i, j]), ha="center", va="center", fontsize="x-small",
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize="x-small")
        ax.set_yticks(range(len(names)), names, fontsize="x-small")
        ax.set_title(model, fontsize="small")
    axes[0][0].set_ylabel("neurons of this kind ...")
    for ax in axes[0]:
        ax.set_xlabel("... that are also this kind", fontsize="small")
    return fig
