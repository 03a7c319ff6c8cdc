"""Neurons' roles in vocabulary space (Gurnee et al. 2024, Sec. 5.1) from `neurons.parquet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl
from matplotlib.figure import Figure

from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing

ROLE_LINES = (("prediction", "-"), ("suppression", "--"), ("partition", ":"))


def plot_vocab_roles(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Left: per layer, the median and 95th percentile of the kurtosis of cos(w_out, W_U) over the
    vocabulary, with the role threshold. Right: the share of each layer's neurons that are prediction,
    suppression and partition neurons. x = layer / (number of layers - 1), one colour per model."""
    style = _style(style)
    neurons = tables["neurons"]
    models = [m for m in model_order(neurons) if "vocab_cos_kurtosis" in neurons.columns]
    fig, (left, right) = new_axes(style, 1, 2)
    for model, colour in zip(models, colours(style, len(models))):
        rows = neurons.filter(pl.col("model") == model)
        depth = max(int(rows["n_layers_total"][0]) - 1, 1)
        per_layer = (
            rows.group_by("layer")
            .agg(
                pl.col("vocab_cos_kurtosis").median().alias("median"),
                pl.col("vocab_cos_kurtosis").quantile(0.95, "linear").alias("p95"),
                *[pl.col("vocab_role").eq_missing(role).mean().alias(role) for role, _ in ROLE_LINES],
            )
            .sort("layer")
        )
        x = per_layer["layer"] / depth
        line(left, x, per_layer["median"], style, color=colour, label=f"{model} median")
        line(left, x, per_layer["p95"], style, color=colour, linestyle="--", label=f"{model} 95th pct.")
        for role, dash in ROLE_LINES:
            line(right, x, per_layer[role].fill_null(0.0) * 100.0, style, color=colour, linestyle=dash, label=f"{model}: {role}")
    kurtosis = style.get("analysis", {}).get("roles", {}).get("kurtosis")
    if kurtosis is not None:
        left.axhline(float(kurtosis), color="0.3", linewidth=1, linestyle="-.")
    left.set_yscale("log")
    left.set_ylabel("kurtosis of W_U cosines")
    right.set_ylabel("neurons of the layer (%)")
    right.set_ylim(bottom=0.0, top=max(1.0, right.get_ylim()[1]))
    for ax in (left, right):
        ax.set_xlabel("layer / (number of layers - 1)")
        ax.set_xlim(-0.05, 1.05)
        if not models:
            say_missing(ax, "no weight statistics in the tables")
    if models:
        handles = [
            left.plot([], [], color=colour, label=model)[0] for model, colour in zip(models, colours(style, len(models)))
        ] + [right.plot([], [], color="0.3", linestyle=dash, label=role)[0] for role, dash in ROLE_LINES]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small", frameon=False)
    fig.suptitle(style.get("title", ""))
    return fig


ENTROPY_PANELS = (("entropy", "next-token entropy (nats)"), ("loss", "loss (nats)"), ("norm_scale", "final norm scale"))


def plot_entropy_neurons(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Entropy, loss and final-norm scale against the value a last-layer neuron's activation is set to at
    every position: entropy neurons in colour (thick), the other candidates in colour (thin), the random
    neurons in grey; the dotted line is the unedited model."""
    style = _style(style)
    curves, found = tables["entropy"], tables["entropy_neurons"]
    models = model_order(curves)
    fig, axes = new_axes(style, 1, len(ENTROPY_PANELS))
    flagged = {(row["model"], row["neuron"]) for row in found.filter(pl.col("entropy_neuron")).iter_rows(named=True)} if found.height else set()
    candidates = curves.filter(~pl.col("random")) if curves.height else curves
    keys = list(dict.fromkeys((row["model"], row["neuron"]) for row in candidates.iter_rows(named=True))) if curves.height else []
    palette = dict(zip(keys, colours(style, len(keys))))
    for ax, (column, label) in zip(axes, ENTROPY_PANELS):
        for model in models:
            rows = curves.filter(pl.col("model") == model)
            clean = rows.filter(pl.col("neuron").is_null())[column]
            if clean.len():
                ax.axhline(clean[0], color="0.3", linestyle=":", linewidth=1)
            for (neuron, random), group in rows.drop_nulls("neuron").group_by("neuron", "random", maintain_order=True):
                group = group.sort("value")
                if random:
                    ax.plot(group["value"].to_numpy(), group[column].to_numpy(), color="0.7", linewidth=0.8)
                    continue
                key = (model, neuron)
                entropy = key in flagged
                name = f"{model} L{group['layer'][0]} N{neuron}" + (" (entropy neuron)" if entropy else "")
                line(ax, group["value"], group[column], style, color=palette[key], linewidth=2.2 if entropy else 1.0, label=name)
        ax.set_xlabel("activation set to")
        ax.set_ylabel(label)
        if not models:
            say_missing(ax, "no entropy-neuron interventions")
    if keys:
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(axes[0].plot([], [], color="0.7", linewidth=0.8)[0])
        labels.append("random neurons of the layer")
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="x-small", frameon=False)
    fig.suptitle(style.get("title", ""))
    return fig
