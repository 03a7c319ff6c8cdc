"""Sparse-probing figures: what they draw, from small hand-made `probes` and `probe_neurons` tables."""

from __future__ import annotations

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from neuron_census.plots.probing import (
    MISSING,
    MONOSEMANTIC_COLUMNS,
    f1_isoline,
    monosemantic_frame,
    plot_monosemantic_neurons,
    plot_probe_best_single,
    plot_probe_f1_by_k,
    plot_probe_methods,
    plot_probe_precision_recall,
)

pytestmark = pytest.mark.filterwarnings("error")  # no seaborn, matplotlib or polars warnings

STYLE = {"figsize": [4.0, 3.0], "dpi": 40}
MODELS = ("b-model", "a-model")  # legend order is first appearance, not alphabetical
FEATURES = {"text: capitalised": "text", "text: digits": "text", "position < 8": "position"}
LAYERS = (0, 1)
KS = (1, 2, 4, 16)
METHODS = ("random", "mean_difference", "optimal")  # table order differs from the bars' order


def probe_f1(model: str, feature: str, layer: int, method: str, k: int) -> float:
    base = {"b-model": 0.3, "a-model": 0.2}[model] + 0.1 * layer + 0.03 * math.log2(k)
    return base + 0.05 * list(FEATURES).index(feature) + {"random": -0.2, "mean_difference": 0.0, "optimal": 0.1}[method]


def probes_table() -> pl.DataFrame:
    rows = [
        {"model": model, "feature": feature, "family": family, "layer": layer, "n_layers": 2, "method": method, "k": k,
         "neurons": list(range(min(k, 8))), "f1": probe_f1(model, feature, layer, method, k), "precision": 0.5,
         "recall": 0.5, "solver_status": None}
        for model in MODELS for feature, family in FEATURES.items() for layer in LAYERS for method in METHODS for k in KS
        if not (method == "optimal" and k > 4)
    ]
    return pl.DataFrame(rows)


# (model, feature, layer, method, neuron, f1, precision, recall); monosemantic at F1 >= 0.9
NEURON_ROWS = [
    ("b-model", "text: capitalised", 0, "mean_difference", 12, 0.50, 0.40, 0.667),
    ("b-model", "text: capitalised", 1, "f_statistic", 7, 0.91, 0.95, 0.8733),
    ("b-model", "text: digits", 0, "optimal", 3, 0.30, 0.25, 0.375),
    ("b-model", "text: digits", 1, "mean_difference", 3, 0.70, 0.80, 0.6222),
    ("b-model", "position < 8", 0, "linear_svm", 5, 0.95, 0.99, 0.9132),
    ("b-model", "position < 8", 1, "mean_difference", 9, 0.95, 0.91, 0.9937),
    ("a-model", "text: capitalised", 0, "mean_difference", 1, 0.99, 0.989, 0.9996),
    ("a-model", "text: capitalised", 1, "random", 2, 0.20, 0.30, 0.15),
    ("a-model", "text: digits", 0, "l1_logistic", 4, 0.40, 0.50, 0.3333),
    ("a-model", "text: digits", 1, "mean_difference", 8, 0.60, 0.70, 0.525),
    ("a-model", "position < 8", 0, "mean_difference", 6, 0.80, 0.75, 0.8571),
    ("a-model", "position < 8", 1, "f_statistic", 0, 0.92, 0.94, 0.9008),
]


def neurons_table() -> pl.DataFrame:
    model, feature, layer, method, neuron, f1, precision, recall = zip(*NEURON_ROWS)
    return pl.DataFrame(
        {"model": model, "feature": feature, "family": [FEATURES[f] for f in feature], "layer": layer, "n_layers": [2] * len(model),
         "method": method, "neuron": neuron, "f1": f1, "precision": precision, "recall": recall,
         "monosemantic": [v >= 0.9 for v in f1]}
    )


def tables(models: tuple[str, ...] = MODELS) -> dict[str, pl.DataFrame]:
    return {"probes": probes_table().filter(pl.col("model").is_in(models)),
            "probe_neurons": neurons_table().filter(pl.col("model").is_in(models))}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rendered(fig: Figure) -> Figure:
    """The figure, drawn once (layout warnings only show when it is drawn)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    return fig


def panels(fig: Figure) -> list:
    """The figure's panels, without colour bars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def lines_by_label(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.get_lines()}


# ------------------------------------------------------------------------------------------- F1 by k


def test_f1_by_k_lines_are_family_means_per_layer():
    fig = rendered(plot_probe_f1_by_k(tables(), STYLE))
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["text (2 features)", "position (1 features)"] * 2
    assert [ax.get_ylabel().split("\n")[0] for ax in axes[::2]] == ["b-model", "a-model"]  # a row per model
    assert len(fig.axes) - len(axes) == 2  # a layer colour bar per model row
    for ax, (model, family) in zip(axes, [(m, f) for m in MODELS for f in ("text", "position")]):
        drawn = lines_by_label(ax)
        assert set(drawn) == {"layer 0", "layer 1"}
        features = [f for f, fam in FEATURES.items() if fam == family]
        for layer in LAYERS:
            x, y = drawn[f"layer {layer}"]
            np.testing.assert_array_equal(x, KS)
            expected = [np.mean([probe_f1(model, f, layer, "mean_difference", k) for f in features]) for k in KS]
            np.testing.assert_allclose(y, expected)
        assert ax.get_xscale() == "log"
        np.testing.assert_array_equal(ax.get_xticks(), KS)
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in KS]
        early, late = (sum(to_rgb(line.get_color())) for line in ax.get_lines())
        assert early > late  # early layers light, late ones dark


def test_f1_by_k_falls_back_to_the_first_method_present():
    fig = rendered(plot_probe_f1_by_k(tables(("a-model",)), {**STYLE, "method": "l1_logistic"}))
    axes = panels(fig)
    assert len(axes) == 2 and "random" in axes[0].get_ylabel()
    _, y = lines_by_label(axes[1])["layer 1"]
    np.testing.assert_allclose(y, [probe_f1("a-model", "position < 8", 1, "random", k) for k in KS])
    fig = plot_probe_f1_by_k(tables(("a-model",)), {**STYLE, "method": "optimal"})
    np.testing.assert_array_equal(panels(fig)[0].get_xticks(), [1, 2, 4])  # optimal runs for k <= 4 here


def test_many_ks_label_only_powers_of_two():
    ks = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32]
    rows = probes_table().filter(pl.col("k") == 1).drop("k").join(pl.DataFrame({"k": ks}), how="cross")
    ax = panels(plot_probe_f1_by_k({"probes": rows}, STYLE))[0]
    np.testing.assert_array_equal(ax.get_xticks(), ks)  # beyond eight k: powers of four and the largest
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "", "", "4", "", "", "", "", "", "", "16", "32"]
    few = rows.filter(pl.col("k").is_in([1, 2, 3, 4, 6, 8, 16]))
    ax = panels(plot_probe_f1_by_k({"probes": few}, STYLE))[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "", "4", "", "8", "16"]


# ------------------------------------------------------------------------------------- best single


def test_best_single_lines_are_family_means_per_model():
    fig = rendered(plot_probe_best_single(tables(), STYLE))
    text, position = fig.axes
    assert [text.get_title(), position.get_title()] == ["text (2 features)", "position (1 features)"]
    rows = neurons_table()
    for ax, family in ((text, "text"), (position, "position")):
        drawn = lines_by_label(ax)
        assert list(drawn) == list(MODELS)
        for model in MODELS:
            x, y = drawn[model]
            np.testing.assert_array_equal(x, LAYERS)
            expected = [np.mean([r[5] for r in NEURON_ROWS if r[0] == model and FEATURES[r[1]] == family and r[2] == layer]) for layer in LAYERS]
            np.testing.assert_allclose(y, expected)
        assert ax.get_ylim() == (0.0, 1.02)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(MODELS) and text.get_legend() is None
    assert rows.height == len(NEURON_ROWS)


# ---------------------------------------------------------------------------------------- methods


def test_method_bars_are_means_over_features_and_layers():
    fig = rendered(plot_probe_methods(tables(), {**STYLE, "ks": [1, 4, 8, 32]}))  # 8, 32 not in the sweep
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["k = 1", "k = 4"]
    for ax, k in zip(axes, (1, 4)):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["mean_difference", "optimal", "random"]
        assert len(ax.containers) == len(MODELS)  # a bar container per model (hue), in legend order
        for container, model in zip(ax.containers, MODELS):
            heights = [bar.get_height() for bar in container]
            expected = [np.mean([probe_f1(model, f, layer, method, k) for f in FEATURES for layer in LAYERS])
                        for method in ("mean_difference", "optimal", "random")]
            np.testing.assert_allclose(heights, expected)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(MODELS)  # one legend, below the panels
    assert axes[0].get_legend() is None and axes[1].get_legend() is None


def test_methods_without_the_chosen_ks_says_so():
    fig = rendered(plot_probe_methods(tables(), {**STYLE, "ks": [64]}))
    assert [t.get_text() for t in fig.axes[0].texts] == ["none of the chosen k in the sweep"]


# ------------------------------------------------------------------------------- precision/recall


def test_precision_recall_points_per_family_and_isoline():
    fig = rendered(plot_probe_precision_recall(tables(), {**STYLE, "threshold": 0.9}))
    assert [ax.get_title() for ax in fig.axes] == ["b-model (6 neurons)", "a-model (6 neurons)"]
    for ax, model in zip(fig.axes, MODELS):
        assert [c.get_label() for c in ax.collections] == ["text", "position"]
        for collection, family in zip(ax.collections, ("text", "position")):
            expected = [(r[7], r[6]) for r in NEURON_ROWS if r[0] == model and FEATURES[r[1]] == family]
            np.testing.assert_allclose(collection.get_offsets(), expected)
        recall, precision = lines_by_label(ax)["F1 = 0.9"]
        np.testing.assert_allclose(2 * precision * recall / (precision + recall), 0.9)
        assert precision.max() == pytest.approx(1.0) and recall.max() == pytest.approx(1.0)
    colours = [tuple(ax.collections[0].get_facecolor()[0][:3]) for ax in fig.axes]
    assert colours[0] == colours[1]  # a family keeps its colour across panels
    fig = plot_probe_precision_recall(tables(("a-model",)), {**STYLE, "threshold": None})
    assert len(fig.axes) == 1 and not fig.axes[0].get_lines()


def test_isoline_runs_from_precision_one_to_recall_one():
    recall, precision = f1_isoline(0.5, points=3)
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5 * (2 / 3) / (4 / 3 - 0.5), 1 / 3])


# --------------------------------------------------------------------------- monosemantic neurons


def test_monosemantic_frame_keeps_every_row_in_model_order():
    frame = monosemantic_frame(neurons_table())
    assert tuple(frame.columns) == MONOSEMANTIC_COLUMNS
    assert frame.select("model", "layer", "neuron").rows() == [
        ("b-model", 0, 5), ("b-model", 1, 9), ("b-model", 1, 7),  # equal F1: layer then neuron
        ("a-model", 0, 1), ("a-model", 1, 0),
    ]
    empty = monosemantic_frame(pl.DataFrame())
    assert empty.is_empty() and tuple(empty.columns) == MONOSEMANTIC_COLUMNS


def test_monosemantic_table_best_first_with_a_row_cap():
    fig = rendered(plot_monosemantic_neurons(tables(), {**STYLE, "max_rows": 3}))
    cells = fig.axes[0].tables[0].get_celld()
    text = [[cells[row, column].get_text().get_text() for column in range(8)] for row in range(4)]
    assert text == [
        ["model", "layer", "neuron", "feature", "method", "F1", "precision", "recall"],
        ["a-model", "0", "1", "text: capitalised", "mean_difference", "0.990", "0.989", "1.000"],
        ["b-model", "0", "5", "position < 8", "linear_svm", "0.950", "0.990", "0.913"],
        ["b-model", "1", "9", "position < 8", "mean_difference", "0.950", "0.910", "0.994"],
    ]
    assert (4, 0) not in cells
    assert fig.axes[0].get_title().startswith("the 3 best of 5")


def test_monosemantic_table_says_when_there_are_none():
    none = {"probe_neurons": neurons_table().with_columns(monosemantic=pl.lit(False))}
    fig = rendered(plot_monosemantic_neurons(none, STYLE))
    assert not fig.axes[0].tables
    assert "no monosemantic neuron" in fig.axes[0].texts[0].get_text()


# ----------------------------------------------------------------------------------- every figure

FIGURES = [plot_probe_f1_by_k, plot_probe_best_single, plot_probe_methods, plot_probe_precision_recall, plot_monosemantic_neurons]


@pytest.mark.parametrize("plot", FIGURES)
@pytest.mark.parametrize("empty", ["no rows", "no columns"])
def test_figures_say_missing_without_rows(plot, empty):
    if empty == "no rows":
        given = {kind: frame.clear() for kind, frame in tables().items()}
    else:
        given = {"probes": pl.DataFrame(), "probe_neurons": pl.DataFrame()}
    fig = rendered(plot(given, STYLE))
    assert [t.get_text() for t in fig.axes[0].texts] == [MISSING]
    assert "Gurnee et al. 2023" in fig.get_suptitle()


@pytest.mark.parametrize("plot", FIGURES)
def test_figures_render_one_model(plot):  # the tests above draw two models
    fig = rendered(plot(tables(("a-model",)), {**STYLE, "title": "Sparse probing"}))
    assert fig.get_suptitle() == "Sparse probing"
    assert not any(t.get_text() == MISSING for ax in fig.axes for t in ax.texts)
