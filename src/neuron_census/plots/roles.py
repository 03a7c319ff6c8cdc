"""Neurons' roles in vocabulary space (Gurnee et al. 2024, Sec. 5.1) from `neurons.parquet`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from neuron_census.plots.figures import _style, colours, line, model_order, new_axes, say_missing

ROLE_LINES = (("prediction", "-"), ("suppression", "--"), ("partition", ":"))


def plot_vocab_roles(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per layer, of cos(w_out, W_U) over the vocabulary: the kurtosis (median and 95th percentile, with the
    role threshold), the skew (5th and 95th percentiles: prediction neurons at the top, suppression neurons
    at the bottom), and the share of the layer's neurons that are prediction, suppression and partition
    neurons. x = layer / (number of layers - 1), one colour per model."""
    style = _style(style)
    neurons = tables["neurons"]
    models = [m for m in model_order(neurons) if "vocab_cos_kurtosis" in neurons.columns]
    fig, (left, middle, right) = new_axes(style, 1, 3)
    for model, colour in zip(models, colours(style, len(models))):
        rows = neurons.filter(pl.col("model") == model)
        depth = max(int(rows["n_layers_total"][0]) - 1, 1)
        per_layer = (
            rows.group_by("layer")
            .agg(
                pl.col("vocab_cos_kurtosis").median().alias("median"),
                pl.col("vocab_cos_kurtosis").quantile(0.95, "linear").alias("p95"),
                pl.col("vocab_cos_skew").quantile(0.05, "linear").alias("skew_p5"),
                pl.col("vocab_cos_skew").quantile(0.95, "linear").alias("skew_p95"),
                *[pl.col("vocab_role").eq_missing(role).mean().alias(role) for role, _ in ROLE_LINES],
            )
            .sort("layer")
        )
        x = per_layer["layer"] / depth
        line(left, x, per_layer["median"], style, color=colour)
        line(left, x, per_layer["p95"], style, color=colour, linestyle="--")
        line(middle, x, per_layer["skew_p95"], style, color=colour, linestyle="--")
        line(middle, x, per_layer["skew_p5"], style, color=colour, linestyle=":")
        for role, dash in ROLE_LINES:
            line(right, x, per_layer[role].fill_null(0.0) * 100.0, style, color=colour, linestyle=dash, label=f"{model}: {role}")
    kurtosis = style.get("analysis", {}).get("roles", {}).get("kurtosis")
    if kurtosis is not None:
        left.axhline(float(kurtosis), color="0.3", linewidth=1, linestyle="-.")
    middle.axhline(0.0, color="0.3", linewidth=1)
    left.set_yscale("log")
    left.set_ylabel("W_U cosine kurtosis (median, 95th pct.)")
    middle.set_ylabel("W_U cosine skew (5th, 95th pct.)")
    right.set_ylabel("neurons of the layer (%)")
    right.set_ylim(bottom=0.0, top=max(1.0, right.get_ylim()[1]))
    for ax in (left, middle, right):
        ax.set_xlabel("layer / (layers - 1)")
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


def plot_attention_deactivation(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Left: per layer, each neuron's highest score w_out^T W_Q k_BOS / sqrt(d_head) over the heads of later
    layers (the 99th percentile and maximum per layer, a colour per model). Right: the top pairs' mean
    attention to BOS with the neuron (dark) and with its path to the head's query ablated (light)."""
    style = _style(style)
    scores, paths = tables["attention_scores"], tables["attention_paths"]
    models = model_order(scores)
    fig, (left, right) = new_axes(style, 1, 2)
    for model, colour in zip(models, colours(style, len(models))):
        rows = scores.filter(pl.col("model") == model)
        per_layer = rows.group_by("layer").agg(
            pl.col("max_score").quantile(0.99, "linear").alias("p99"), pl.col("max_score").max().alias("max")
        ).sort("layer")
        line(left, per_layer["layer"], per_layer["max"], style, color=colour, label=f"{model}: max")
        line(left, per_layer["layer"], per_layer["p99"], style, color=colour, linestyle="--", label=f"{model}: 99th pct.")
    left.set_xlabel("layer of the neuron")
    left.set_ylabel("highest score over later heads")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    if models:
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="x-small", frameon=False)
    else:
        say_missing(left, "no attention scores")
    measured = paths.drop_nulls("bos_attention") if paths.height and "bos_attention" in paths.columns else pl.DataFrame()
    if measured.height:
        palette = dict(zip(models, colours(style, len(models))))
        labels = []
        for index, row in enumerate(measured.iter_rows(named=True)):
            colour = palette.get(row["model"], "0.5")
            right.barh(index - 0.2, row["bos_attention"], height=0.4, color=colour)
            right.barh(index + 0.2, row["bos_attention_ablated"], height=0.4, color=colour, alpha=0.35)
            mark = " *" if row["deactivates"] else ""
            labels.append(f"{row['model']} L{row['layer']} N{row['neuron']} -> head {row['head_layer']}.{row['head']}{mark}")
        right.set_yticks(range(len(labels)), labels, fontsize="x-small")
        right.invert_yaxis()
        right.set_xlabel("mean attention to BOS: neuron (dark) / path ablated (light)")
    else:
        say_missing(right, "no path ablation (none scored above 0, or rotary attention)")
    fig.suptitle(style.get("title", ""))
    return fig
