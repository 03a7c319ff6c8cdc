"""N-gram and token-detector figures: their counts against slow loops, and every figure renders."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from neuron_census.plots.ngrams import (
    DEFAULT_BINS,
    coverage_bin_labels,
    coverage_histogram,
    coverage_legend_labels,
    counted_neurons,
    new_token_shares,
    plot_detected_tokens,
    plot_new_tokens,
    plot_ngram_coverage,
    plot_token_detectors,
)

STYLE = {"figsize": [4.0, 3.0], "dpi": 50}
N_LAYERS = {"a": 4, "b": 3}  # first half: a -> layers 0, 1; b -> layers 0, 1 (1/3 < 0.5)
# (model, layer, dead, unigram, bigram, bigram exact): edges, nulls, dead and second-half rows on purpose
NEURON_ROWS = [
    ("a", 0, False, 1, 5, True),
    ("a", 0, False, 5, 6, False),
    ("a", 0, False, 6, 1000, True),
    ("a", 0, True, 3, 7, True),  # dead: never counted even with a value
    ("a", 0, True, None, None, None),
    ("a", 1, False, 1000, 1001, False),
    ("a", 1, False, 1001, None, None),
    ("a", 1, False, 50000, 50001, False),
    ("a", 1, False, None, 2001, True),
    ("a", 2, False, 3, 3, True),  # second half
    ("a", 3, False, 70000, 70000, True),  # second half, beyond the last edge
    ("b", 0, False, 2, 20, True),
    ("b", 0, False, 21, 21, True),
    ("b", 0, False, 2000, 200, True),
    ("b", 1, False, 2001, 201, True),
    ("b", 1, True, None, None, None),
    ("b", 2, False, 1, 1, True),  # second half
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def neurons_table() -> pl.DataFrame:
    model, layer, dead, unigram, bigram, exact = zip(*NEURON_ROWS)
    return pl.DataFrame(
        {
            "model": model,
            "layer": layer,
            "neuron": list(range(len(NEURON_ROWS))),
            "dead": dead,
            "unigram_coverage": unigram,
            "bigram_coverage": bigram,
            "bigram_coverage_exact": exact,
            "token_detector": [u is not None and u <= 5 for u in unigram],
        },
        schema={
            "model": pl.Utf8,
            "layer": pl.Int64,
            "neuron": pl.Int64,
            "dead": pl.Boolean,
            "unigram_coverage": pl.Int64,
            "bigram_coverage": pl.Int64,
            "bigram_coverage_exact": pl.Boolean,
            "token_detector": pl.Boolean,
        },
    )


def layers_table(models: tuple[str, ...] = ("a", "b")) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        depth = N_LAYERS[model]
        detected = rng.integers(0, 6, size=depth)
        detected[1] = 0  # one layer without a detected token
        for layer in range(depth):
            rows.append(
                {
                    "model": model,
                    "layer": layer,
                    "rel_depth": layer / depth,
                    "n_layers_total": depth,
                    "n_neurons": 5,
                    "dead_count": 1,
                    "n_token_detectors": int(rng.integers(0, 4)),
                    "n_detected_tokens": int(detected[layer]),
                    "n_detected_tokens_cumulative": int(detected[: layer + 1].sum()),
                    "n_new_tokens_overall": int(rng.integers(0, detected[layer] + 1)),
                    "n_new_tokens_vs_previous": int(detected[layer]),
                }
            )
    schema = {k: pl.Utf8 if k == "model" else pl.Float64 if k == "rel_depth" else pl.Int64 for k in rows[0]}
    return pl.DataFrame(rows, schema=schema)


def reference_bin(value: int, edges: list[int]) -> int:
    """Index of the bin holding `value`, len(edges) - 1 for beyond the last edge, -1 below the first."""
    if value < edges[0]:
        return -1
    for i in range(len(edges) - 1):
        if edges[i] <= value < edges[i + 1]:
            return i
    return len(edges) - 1


def reference_histogram(rows, order: int, edges: list[int]) -> dict[tuple[str, int], int]:
    """(model, bin index) -> neurons, by the definition of Fig. 2, one row at a time."""
    counts: dict[tuple[str, int], int] = {}
    for model, layer, dead, unigram, bigram, _ in rows:
        value = unigram if order == 1 else bigram
        if dead or value is None or not layer < 0.5 * N_LAYERS[model]:
            continue
        index = reference_bin(value, edges)
        if index >= 0:
            counts[(model, index)] = counts.get((model, index), 0) + 1
    return counts


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_default_labels_are_the_papers():
    assert coverage_bin_labels(DEFAULT_BINS) == [
        "1-5", "6-10", "11-20", "21-50", "51-200", "201-1k", "1k-2k", "2k-50k", "> 50k"
    ]  # fmt: skip
    assert coverage_bin_labels([1, 2, 6, 1500]) == ["1", "2-5", "6-1499", "> 1499"]
    with pytest.raises(ValueError):
        coverage_bin_labels([1, 6, 6])


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("bins", [list(DEFAULT_BINS), [2, 6, 1001], [1, 50001, 60000]])
def test_histogram_matches_loop(order: int, bins: list[int]):
    histogram = coverage_histogram(neurons_table(), layers_table(), order, bins)
    expected = reference_histogram(NEURON_ROWS, order, bins)
    labels = coverage_bin_labels(bins)
    overflow = any(index == len(bins) - 1 for _, index in expected)
    n_bins = len(bins) if overflow else len(bins) - 1
    assert histogram["model"].to_list() == ["a"] * n_bins + ["b"] * n_bins
    assert histogram["bin"].to_list() == labels[:n_bins] * 2
    for model in ("a", "b"):
        rows = histogram.filter(pl.col("model") == model)
        want = [expected.get((model, i), 0) for i in range(n_bins)]
        total = sum(n for (m, _), n in expected.items() if m == model)
        assert rows["n"].to_list() == want
        assert rows["percent"].to_list() == pytest.approx([100.0 * n / total for n in want])


def test_overflow_bar_only_when_present():
    default = coverage_histogram(neurons_table(), layers_table(), 2)
    assert "> 50k" in default["bin"].to_list()  # a's 50001 sits on the last edge
    unigrams = coverage_histogram(neurons_table(), layers_table(), 1)
    assert "> 50k" not in unigrams["bin"].to_list()  # 50000 is the last value of 2k-50k; 70000 is second half
    assert unigrams.filter(pl.col("bin") == "2k-50k")["n"].to_list() == [1, 1]


def test_counted_neurons_and_legend():
    neurons, layers = neurons_table(), layers_table()
    for order, value_index in ((1, 3), (2, 4)):
        kept = [
            row
            for row in NEURON_ROWS
            if not row[2] and row[value_index] is not None and row[1] < 0.5 * N_LAYERS[row[0]]
        ]
        counted = counted_neurons(neurons, layers, order)
        assert counted["coverage"].to_list() == [row[value_index] for row in kept]
        labels = coverage_legend_labels(neurons, layers, order)
        for model in ("a", "b"):
            n = sum(row[0] == model for row in kept)
            upper = sum(row[0] == model and order > 1 and row[5] is False for row in kept)
            assert labels[model] == f"{model} (n={n})" + (f" ({upper} upper bounds)" if upper else "")
    assert "upper bounds" in coverage_legend_labels(neurons, layers, 2)["a"]
    bins = [2, 6, 1001]  # a's coverage 1 lies below the first edge: neither binned nor in the legend's n
    totals = coverage_histogram(neurons, layers, 1, bins).group_by("model", maintain_order=True).agg(pl.col("n").sum())
    labels = coverage_legend_labels(neurons, layers, 1, bins)
    assert [labels[m] for m in totals["model"]] == [f"{m} (n={n})" for m, n in totals.iter_rows()]
    assert labels["a"] != coverage_legend_labels(neurons, layers, 1)["a"]


def test_neurons_without_layers_row_or_model_without_counts():
    neurons = neurons_table()
    layers = layers_table(("a",))  # b has no layers rows: none of its neurons can be placed in depth
    histogram = coverage_histogram(neurons, layers, 1)
    assert histogram.filter(pl.col("model") == "b")["n"].sum() == 0
    assert histogram.filter(pl.col("model") == "b")["percent"].sum() == 0.0
    assert coverage_legend_labels(neurons, layers, 1)["b"] == "b (n=0)"


def test_coverage_bars_match_percentages():
    neurons, layers = neurons_table(), layers_table()
    fig = plot_ngram_coverage({"neurons": neurons, "layers": layers}, {**STYLE, "order": 2, "title": "t"})
    ax = fig.axes[0]
    histogram = coverage_histogram(neurons, layers, 2)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2
    for model, container in zip(("a", "b"), bars):
        heights = [patch.get_height() for patch in container.patches]
        assert heights == pytest.approx(histogram.filter(pl.col("model") == model)["percent"].to_list())
    assert [t.get_text() for t in ax.get_xticklabels()] == histogram["bin"].unique(maintain_order=True).to_list()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # below the axes, over no bar
    assert legend == list(coverage_legend_labels(neurons, layers, 2).values())
    assert ax.get_xlabel() == "number of distinct bigrams covering 95% of firings"
    assert ax.get_title() == "t"
    # the share named is the one the tables were computed with (the figure job passes `analysis`)
    style = {**STYLE, "order": 2, "analysis": {"ngram_coverage": 0.9}}
    relabelled = plot_ngram_coverage({"neurons": neurons, "layers": layers}, style)
    assert relabelled.axes[0].get_xlabel() == "number of distinct bigrams covering 90% of firings"
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_new_token_shares_match_loop():
    layers = layers_table()
    shares = new_token_shares(layers)
    expected = [
        (row["model"], row["layer"], 100 * row["n_new_tokens_overall"] / row["n_detected_tokens"],
         100 * row["n_new_tokens_vs_previous"] / row["n_detected_tokens"])
        for row in layers.iter_rows(named=True)
        if row["n_detected_tokens"] > 0
    ]  # fmt: skip
    assert len(expected) < layers.height
    assert shares.select("model", "layer").rows() == [row[:2] for row in expected]
    assert shares["new_overall_pct"].to_list() == pytest.approx([row[2] for row in expected])
    assert shares["new_vs_previous_pct"].to_list() == pytest.approx([row[3] for row in expected])


def test_detector_lines_and_x_axis():
    layers = layers_table()
    fig = plot_token_detectors({"layers": layers}, STYLE)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer / number of layers"
    for model, line in zip(("a", "b"), ax.get_lines()):
        rows = layers.filter(pl.col("model") == model)
        assert line.get_xdata().tolist() == pytest.approx(rows["rel_depth"].to_list())
        assert line.get_ydata().tolist() == rows["n_token_detectors"].to_list()
    totals = [f"{m} ({layers.filter(pl.col('model') == m)['n_token_detectors'].sum()} total)" for m in ("a", "b")]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == totals and ax.get_legend() is None  # below the axes

    single = plot_token_detectors({"layers": layers_table(("b",))}, STYLE).axes[0]
    assert single.get_xlabel() == "layer"
    assert single.get_lines()[0].get_xdata().tolist() == [0, 1, 2]


def test_paired_lines_share_colour():
    layers = layers_table()
    ax = plot_detected_tokens({"layers": layers}, STYLE).axes[0]
    solid_a, dashed_a = ax.get_lines()[:2]
    assert solid_a.get_color() == dashed_a.get_color() and dashed_a.get_linestyle() == "--"
    rows = layers.filter(pl.col("model") == "a")
    assert solid_a.get_ydata().tolist() == rows["n_detected_tokens"].to_list()
    assert dashed_a.get_ydata().tolist() == rows["n_detected_tokens_cumulative"].to_list()

    ax = plot_new_tokens({"layers": layers}, STYLE).axes[0]
    shares = new_token_shares(layers).filter(pl.col("model") == "b")
    solid_b, dashed_b = ax.get_lines()[2:4]
    assert solid_b.get_xdata().tolist() == pytest.approx(shares["rel_depth"].to_list())
    assert solid_b.get_ydata().tolist() == pytest.approx(shares["new_overall_pct"].to_list())
    assert dashed_b.get_ydata().tolist() == pytest.approx(shares["new_vs_previous_pct"].to_list())

    counted = plot_new_tokens({"layers": layers}, {**STYLE, "values": "count"}).axes[0]
    rows = layers.filter((pl.col("model") == "b") & (pl.col("n_detected_tokens") > 0))
    solid_b, dashed_b = counted.get_lines()[2:4]
    assert solid_b.get_ydata().tolist() == rows["n_new_tokens_overall"].to_list()
    assert dashed_b.get_ydata().tolist() == rows["n_new_tokens_vs_previous"].to_list()
    assert counted.get_ylabel() == "detected tokens that are new"
    with pytest.raises(ValueError, match="fig4 values must be 'percent' or 'count'"):
        plot_new_tokens({"layers": layers}, {**STYLE, "values": "share"})


@pytest.mark.parametrize("plot", [plot_token_detectors, plot_detected_tokens])
def test_count_axes_show_whole_counts_from_zero(plot):
    """Counts that are all 0 (a model without token detectors) get the ticks 0 and 1, not -0.045 .. 0.045."""
    zeros = layers_table().with_columns(
        pl.lit(0).alias(column) for column in ("n_token_detectors", "n_detected_tokens", "n_detected_tokens_cumulative")
    )
    for layers, top in ((zeros, 1.0), (layers_table(), None)):
        ax = plot({"layers": layers}, STYLE).axes[0]
        png_bytes(ax.figure)
        low, high = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if low <= t <= high]
        assert low < 0 < high and (top is None or high == top)
        assert ticks[0] == 0 and all(float(t).is_integer() for t in ticks)


FIGURES = [
    (plot_ngram_coverage, {"order": 1}),
    (plot_ngram_coverage, {"order": 2}),
    (plot_ngram_coverage, {"order": 3}),  # no trigram columns at all: nothing to draw
    (plot_token_detectors, {}),
    (plot_detected_tokens, {}),
    (plot_new_tokens, {}),
]


@pytest.mark.parametrize("plot, extra", FIGURES)
def test_figures_render_with_data(plot, extra):
    fig = plot({"neurons": neurons_table(), "layers": layers_table()}, {**STYLE, **extra})
    assert png_bytes(fig).startswith(b"\x89PNG")
    assert bool(fig.axes[0].texts) == (extra.get("order") == 3)


@pytest.mark.parametrize("plot, extra", FIGURES)
@pytest.mark.parametrize("empty", ["no rows", "no columns"])
def test_figures_render_empty(plot, extra, empty):
    if empty == "no rows":
        tables = {"neurons": neurons_table().clear(), "layers": layers_table().clear()}
    else:
        tables = {"neurons": pl.DataFrame(), "layers": pl.DataFrame()}
    fig = plot(tables, {**STYLE, **extra})
    assert png_bytes(fig).startswith(b"\x89PNG")
    assert fig.axes[0].texts and fig.axes[0].texts[0].get_text().startswith("no ")
