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


EXIT_MARKERS = {"rule": "o", "residual": "s", "ffn": "^", "both": "D", "oracle": "*"}


def plot_early_exit(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Per model (one panel each), every early-exit method's accuracy (the exit layer's top-1 is the final
    prediction) against the layers it saves, the mean over the splits with bars from the lowest split to the
    highest (mean +- std would pass 100%): the paper's cluster-overlap rule, logistic-regression probes on the
    residual stream, the FFN output and both, and the oracle that exits at the true saturation layer."""
    style = _style(style)
    table = tables["early_exit"]
    models = model_order(table)
    fig, axes = new_axes(style, 1, max(len(models), 1), squeeze=False)
    methods = list(EXIT_MARKERS)
    shades = dict(zip(methods, colours(style, len(methods))))
    for ax, model in zip(axes[0], models):
        rows = table.filter(pl.col("model") == model)
        n_layers = int(rows["n_layers"][0])
        for method in methods:
            part = rows.filter(pl.col("method") == method)
            if part.is_empty():
                continue
            saved, accuracy = part["layers_saved"].to_numpy(), part["accuracy"].to_numpy() * 100.0
            spread = [[[values.mean() - values.min()], [values.max() - values.mean()]] for values in (saved, accuracy)]
            ax.errorbar(saved.mean(), accuracy.mean(), xerr=spread[0], yerr=spread[1], fmt=EXIT_MARKERS[method],
                        color=shades[method], capsize=3, markersize=8 if method == "oracle" else 6, label=method)
        ax.set_xlabel(f"layers saved (of {n_layers})")
        ax.set_ylabel("exit layer's top-1 = final prediction (%)")
        ax.set_xlim(left=-0.05)
        splits, n_test = rows["split"].n_unique(), int(rows["n_test"][0])
        ax.set_title(f"{model}\nmean of {splits} splits of {n_test} test predictions, bars their range", fontsize="small")
    if models:
        axes[0][0].legend(fontsize="small", frameon=False)
    else:
        say_missing(axes[0][0], "no sub-update study configured")
    fig.suptitle(style.get("title", ""))
    return fig


def example_predictions(predictions: pl.DataFrame, subupdates: pl.DataFrame, examples: int, shown: int) -> pl.DataFrame:
    """Per model, `examples` predictions (the first whose dominant sub-updates at the saturation layer
    include one promoting the prediction, then the first others), each with its `shown` most dominant
    sub-updates at that layer: neuron, activation, the tokens it raises most (its value vector's top
    projected tokens, the bottom ones where m < 0) and role."""
    rows = []
    for model in model_order(predictions):
        lens = predictions.filter(pl.col("model") == model, pl.col("layer") == pl.col("saturation_layer")).sort("prediction")
        subs = subupdates.filter(pl.col("model") == model, pl.col("kind") == "dominant").join(
            lens.select("prediction", "layer"), on=["prediction", "layer"], how="semi"
        ).sort("prediction", "place")
        promoted = set(subs.filter(pl.col("promotes"))["prediction"].to_list())
        order = [p for p in lens["prediction"].to_list() if p in promoted] + [p for p in lens["prediction"].to_list() if p not in promoted]
        for prediction in order[:examples]:
            row = lens.filter(pl.col("prediction") == prediction).row(0, named=True)
            top = subs.filter(pl.col("prediction") == prediction).head(shown)
            updates = [
                f"{layer}.{neuron} (m={activation:+.2f}): {' '.join((raised if activation >= 0 else lowered)[:4])}"
                f"{' [promotes]' if promotes else ''}{' [eliminates]' if eliminates else ''}"
                for layer, neuron, activation, raised, lowered, promotes, eliminates in top.select(
                    "layer", "neuron", "activation", "vocab_top_tokens", "vocab_bottom_tokens", "promotes", "eliminates"
                ).iter_rows()
            ]
            rows.append({"model": model, "prediction": prediction, "context": row.get("context", ""), "final_text": row.get("final_text", ""),
                         "saturation_layer": row["saturation_layer"], "subupdates": "\n".join(updates)})
    return pl.DataFrame(rows, schema={"model": pl.Utf8, "prediction": pl.Int64, "context": pl.Utf8, "final_text": pl.Utf8,
                                      "saturation_layer": pl.Int64, "subupdates": pl.Utf8})


def plot_subupdate_examples(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """A table of example predictions: the text up to the cut, the model's prediction, its saturation layer
    and the dominant sub-updates there, each with its neuron (layer.neuron), activation m, the tokens it
    raises most and whether it promotes the prediction or eliminates a candidate."""
    style = _style(style)
    frame = example_predictions(tables["predictions"], tables["subupdates"], int(style["n_examples"]), int(style["n_subupdates"]))
    fig, ax = new_axes(style)
    ax.axis("off")
    if frame.is_empty():
        say_missing(ax, "no sub-update study configured")
        return fig
    cells = [
        [model, "…" + context_tail(context), repr(final)[1:-1], str(saturation), updates]
        for model, context, final, saturation, updates in frame.select("model", "context", "final_text", "saturation_layer", "subupdates").iter_rows()
    ]
    table = ax.table(cellText=cells, colLabels=["model", "context", "prediction", "saturates at", "dominant sub-updates there"],
                     loc="upper center", cellLoc="left", colWidths=[0.12, 0.26, 0.09, 0.08, 0.45])
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    lines = [cell.count("\n") + 1 for cell in frame["subupdates"].to_list()]
    for (row, _column), cell in table.get_celld().items():
        cell.set_height(0.045 * (lines[row - 1] if row else 1.2))
    fig.suptitle(style.get("title", ""))
    return fig


def context_tail(context: str, width: int = 40) -> str:
    """The last `width` characters of a context as a table cell shows them: newlines as spaces, and other
    characters a font cannot draw (control bytes a tokenizer decodes) escaped as Python writes them."""
    shown = ""
    for char in reversed(context.replace("\n", " ")):
        piece = char if char.isprintable() else repr(char)[1:-1]
        if len(shown) + len(piece) > width:
            break
        shown = piece + shown
    return shown


def example_predictions_frame(predictions: pl.DataFrame) -> pl.DataFrame:
    """The predictions table the figure picks its examples from, one row per prediction (the figure's CSV)."""
    return predictions.filter(pl.col("layer") == 0).select(
        [c for c in ("model", "prediction", "position", "context", "final_text", "final_token", "saturation_layer") if c in predictions.columns]
    )
