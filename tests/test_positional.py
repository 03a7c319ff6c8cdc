"""Positional neurons: mutual information, curve types and tables against slow loops; the figures render."""

from __future__ import annotations

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.figure import Figure

from neuron_census.plots.positional import (
    example_neurons,
    oscillatory_ranges,
    pick_oscillatory_layer,
    plot_oscillatory_ranges,
    plot_positional_examples,
    plot_positional_neurons,
    stacked_dots,
)
from neuron_census.analyses.positional import (
    POSITIONAL_TYPES,
    PositionalSettings,
    classify_curve,
    firing_rates,
    neighbour_r2,
    position_mutual_information,
    find_positional,
    position_rates_table,
    positional_layer_counts,
    positional_table,
)

SETTINGS = PositionalSettings()
STYLE = {"figsize": [6.0, 3.0], "dpi": 40}
T = 32
SQUARE = np.tile([0.0] * 4 + [1.0] * 4, T // 8)
RAMP = np.linspace(0.1, 0.9, T)
SHUFFLED = np.random.default_rng(0).permutation(RAMP)
STEP = np.r_[np.ones(T // 2), np.zeros(T // 2)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------ slow references


def slow_mi(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The paper's formula term by term over the counted positions."""
    n_slots, _, n_neurons = counts.shape
    out = np.zeros((n_slots, n_neurons))
    counted = [p for p in range(len(tokens)) if tokens[p] > 0]
    for slot in range(n_slots):
        for neuron in range(n_neurons):
            fr = sum(counts[slot, p, neuron] for p in counted) / sum(tokens[p] for p in counted)
            if fr in (0.0, 1.0):
                continue
            total = 0.0
            for p in counted:
                rate = counts[slot, p, neuron] / tokens[p]
                if rate > 0:
                    total += rate * math.log(rate / fr)
                if rate < 1:
                    total += (1 - rate) * math.log((1 - rate) / (1 - fr))
            out[slot, neuron] = total / len(counted)
    return out


def slow_r2(f: np.ndarray) -> float:
    interior = list(range(1, len(f) - 1))
    if not interior:
        return 0.0
    mean = sum(f[p] for p in interior) / len(interior)
    den = sum((f[p] - mean) ** 2 for p in interior)
    num = sum((f[p] - (f[p - 1] + f[p + 1]) / 2) ** 2 for p in interior)
    return 0.0 if den == 0 else 1.0 - num / den


def random_state(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uneven token counts, BOS (0 tokens) at 0, another empty position, exact 0 / 1 rates, dead and saturated."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 12, size=10)
    tokens[[0, 6]] = 0
    counts = rng.binomial(tokens[None, :, None], rng.uniform(0, 1, size=(3, 1, 6))).astype(np.int64)
    counts[0, :, 0] = 0  # dead: fr = 0
    counts[1, :, 1] = tokens  # always fires: fr = 1
    counts[2, :, 2] = np.where(np.arange(10) < 5, 0, tokens)  # exact 0 then exact 1
    counts[2, 3, 3] = tokens[3]  # one exact 1 among random rates
    return counts, tokens


def state_from_curves(curves: np.ndarray, n_tokens: int = 100) -> dict[str, np.ndarray]:
    """counts [L, T + 1, N] whose rates over positions 1..T are `curves` [L, N, T] (rounded to 1/n_tokens)."""
    n_slots, n_neurons, length = curves.shape
    tokens = np.r_[0, np.full(length, n_tokens)].astype(np.int64)
    counts = np.zeros((n_slots, length + 1, n_neurons), dtype=np.int64)
    counts[:, 1:, :] = np.rint(np.transpose(curves, (0, 2, 1)) * n_tokens).astype(np.int64)
    return {"counts": counts, "tokens": tokens}


# ------------------------------------------------------------------------------------ statistics


def test_firing_rates_drop_positions_without_tokens():
    counts, tokens = random_state()
    rates, positions = firing_rates(counts, tokens)
    assert positions.tolist() == [p for p in range(10) if tokens[p] > 0]
    for slot in range(3):
        for i, p in enumerate(positions):
            for n in range(6):
                assert rates[slot, i, n] == counts[slot, p, n] / tokens[p]


def test_mutual_information_matches_the_formula():
    counts, tokens = random_state()
    mi = position_mutual_information(counts, tokens)
    np.testing.assert_allclose(mi, slow_mi(counts, tokens), rtol=1e-12, atol=1e-15)
    assert mi[0, 0] == 0.0 and mi[1, 1] == 0.0
    fr = tokens[5:].sum() / tokens.sum()  # rate 0 at positions 1-4, rate 1 at 5, 7, 8, 9
    assert mi[2, 2] == pytest.approx(-(math.log(fr) + math.log(1 - fr)) / 2, rel=1e-12)
    assert np.all(mi >= -1e-15)


def test_mutual_information_of_constant_rates_is_zero_and_shapes_hold():
    tokens = np.array([0, 4, 4, 4])
    counts = np.array([[[0, 0], [1, 4], [1, 4], [1, 4]]])
    np.testing.assert_array_equal(position_mutual_information(counts, tokens), np.zeros((1, 2)))
    assert position_mutual_information(np.zeros((2, 3, 5), dtype=np.int64), np.zeros(3)).shape == (2, 5)
    with pytest.raises(ValueError):
        position_mutual_information(counts, tokens[:3])


# ------------------------------------------------------------------------------------ curve types

CURVES = {
    "square 0/1": (SQUARE, "oscillatory", True),
    "square 0.02/1": (np.where(SQUARE == 0, 0.02, 1.0), "oscillatory", False),
    "0, 1, then 0.02": (np.r_[np.zeros(8), np.ones(8), np.full(8, 0.02)], "oscillatory", False),
    "step 1 -> 0": (STEP, "both_extremes", True),
    "step 1 -> 0.03": (np.where(STEP == 0, 0.03, 1.0), "both_extremes", False),
    "1, ramp, 0": (np.r_[np.ones(10), np.linspace(0.9, 0.1, 12), np.zeros(10)], "both_extremes", True),
    "0, M, 0, then 1 (merged)": (np.r_[np.zeros(5), np.full(5, 0.5), np.zeros(5), np.ones(5)], "both_extremes", True),
    "0 then 0.5": (np.r_[np.zeros(16), np.full(16, 0.5)], "one_extreme", True),
    "0.03 then 0.5": (np.r_[np.full(16, 0.03), np.full(16, 0.5)], "one_extreme", False),
    "0.5 then 1": (np.r_[np.full(16, 0.5), np.ones(16)], "one_extreme", True),
    "0 with a single 1 inside": (np.r_[np.zeros(10), 1.0, np.zeros(10), np.full(10, 0.5)], "one_extreme", True),
    "smooth ramp": (RAMP, "other", True),
    "shuffled ramp": (SHUFFLED, "other", False),
    "single-position flicker": (np.tile([0.5, 0.0, 0.5, 1.0], T // 4), "other", False),
    "alternating 0/1": (np.tile([0.0, 1.0], T // 2), "other", False),
}


@pytest.mark.parametrize("name", list(CURVES))
def test_classify_curve(name):
    curve, kind, strong = CURVES[name]
    assert classify_curve(curve, SETTINGS) == (kind, strong)


def test_runs_of_exactly_min_run_count_and_shorter_ones_do_not():
    curve = np.r_[np.full(5, 0.5), [0, 0], np.full(5, 0.5), [1, 1], np.full(5, 0.5), [0, 0], np.full(5, 0.5)]
    assert classify_curve(curve, SETTINGS) == ("oscillatory", True)
    assert classify_curve(curve, PositionalSettings(min_run=3))[0] == "other"


def test_near_is_inclusive_and_configurable():
    curve = np.r_[np.full(8, 0.05), np.full(8, 0.5)]
    assert classify_curve(curve, SETTINGS) == ("one_extreme", False)
    assert classify_curve(curve, PositionalSettings(near=0.04))[0] == "other"


def test_other_strength_follows_the_smoothness_threshold():
    assert neighbour_r2(SHUFFLED) < 0.5 < neighbour_r2(RAMP)
    assert classify_curve(SHUFFLED, PositionalSettings(other_smoothness=-100.0)) == ("other", True)
    assert classify_curve(RAMP, PositionalSettings(other_smoothness=1.1)) == ("other", False)


def test_neighbour_r2_matches_the_formula():
    rng = np.random.default_rng(1)
    for curve in [rng.uniform(size=20), np.cumsum(rng.normal(size=30)) / 10, RAMP, SHUFFLED, np.sin(np.arange(25))]:
        assert neighbour_r2(curve) == pytest.approx(slow_r2(curve), rel=1e-12, abs=1e-12)
    assert neighbour_r2(RAMP) == pytest.approx(1.0)
    assert neighbour_r2(np.full(10, 0.3)) == 0.0
    assert neighbour_r2(np.array([0.1, 0.9])) == 0.0


# ------------------------------------------------------------------------------------ tables

# slot 0: five designed curves, then a constant (not positional); slot 1: the rest of the designed curves
TABLE_CURVES = [CURVES[name][0] for name in CURVES if len(CURVES[name][0]) == T]
ATTRS = {"layers": [2, 5], "n_neurons": 8, "n_layers_total": 6, "seq_len": T + 1}


@pytest.fixture(scope="module")
def designed() -> dict[str, np.ndarray]:
    flat = np.full(T, 0.3)
    near_flat = np.tile([0.3, 0.32], T // 2)  # positional dependence far below min_mi
    curves = [*TABLE_CURVES[:6], flat, near_flat, *TABLE_CURVES[6:]]
    curves += [flat] * (16 - len(curves))
    return state_from_curves(np.asarray(curves).reshape(2, 8, T))


def test_positional_table(designed):
    table = positional_table(ATTRS, find_positional(designed, SETTINGS))
    assert table.schema == pl.Schema(
        {
            "layer": pl.Int64, "neuron": pl.Int64, "position_mi": pl.Float64, "positional": pl.Boolean,
            "positional_type": pl.Utf8, "positional_strong": pl.Boolean,
        }
    )
    mi = slow_mi(designed["counts"], designed["tokens"])
    rates, _ = firing_rates(designed["counts"], designed["tokens"])
    expected_rows = []
    for slot, layer in enumerate(ATTRS["layers"]):
        for neuron in range(8):
            positional = mi[slot, neuron] > SETTINGS.min_mi
            kind, strong = classify_curve(rates[slot, :, neuron], SETTINGS) if positional else (None, None)
            expected_rows.append((layer, neuron, positional, kind, strong))
    got = table.select("layer", "neuron", "positional", "positional_type", "positional_strong").rows()
    assert got == expected_rows
    np.testing.assert_allclose(table["position_mi"].to_numpy(), mi.reshape(-1), rtol=1e-12, atol=1e-15)
    others = table.filter(~pl.col("positional"))
    assert others["positional_type"].null_count() == others["positional_strong"].null_count() == others.height
    assert table.filter(pl.col("positional"))["positional_strong"].null_count() == 0
    assert table.filter(~pl.col("positional")).height >= 2  # the flat and near-flat neurons
    assert set(table["positional_type"].drop_nulls()) == set(POSITIONAL_TYPES)


def test_position_rates_table(designed):
    rates = position_rates_table("m", ATTRS, find_positional(designed, SETTINGS))
    neurons = positional_table(ATTRS, find_positional(designed, SETTINGS))
    assert rates.schema == pl.Schema(
        {
            "model": pl.Utf8, "layer": pl.Int64, "neuron": pl.Int64, "position": pl.Int64, "fire_rate": pl.Float64,
            "position_mi": pl.Float64, "positional_type": pl.Utf8, "positional_strong": pl.Boolean,
        }
    )
    positional = neurons.filter(pl.col("positional"))
    assert rates.height == positional.height * T
    expected = []
    for layer, neuron, mi, kind, strong in positional.select(
        "layer", "neuron", "position_mi", "positional_type", "positional_strong"
    ).rows():
        slot = ATTRS["layers"].index(layer)
        for position in range(1, T + 1):
            rate = designed["counts"][slot, position, neuron] / designed["tokens"][position]
            expected.append(("m", layer, neuron, position, rate, mi, kind, strong))
    assert rates.rows() == expected


def test_tables_without_positional_neurons():
    state = state_from_curves(np.full((2, 3, 5), 0.4))
    attrs = {**ATTRS, "n_neurons": 3}
    table = positional_table(attrs, find_positional(state, SETTINGS))
    assert table.height == 6 and not table["positional"].any()
    assert table["positional_type"].null_count() == 6 and table["positional_strong"].null_count() == 6
    rates = position_rates_table("m", attrs, find_positional(state, SETTINGS))
    assert rates.height == 0 and rates.schema["positional_type"] == pl.Utf8
    with pytest.raises(ValueError):
        positional_table({**attrs, "layers": [0]}, find_positional(state, SETTINGS))


def random_neurons(seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, n_layers in (("a", 3), ("b", 2)):
        for layer in range(n_layers):
            for neuron in range(30):
                positional = bool(rng.uniform() < 0.6) if layer != 1 else False  # layer 1: none
                if neuron == 0:
                    rows.append((model, layer, neuron, None, None, None))  # no positional statistics
                elif positional:
                    kind, strong = str(rng.choice(POSITIONAL_TYPES)), bool(rng.uniform() < 0.5)
                    rows.append((model, layer, neuron, True, kind, strong))
                else:
                    rows.append((model, layer, neuron, False, None, None))
    return pl.DataFrame(
        rows,
        schema={"model": pl.Utf8, "layer": pl.Int64, "neuron": pl.Int64, "positional": pl.Boolean,
                "positional_type": pl.Utf8, "positional_strong": pl.Boolean},
        orient="row",
    )


def test_positional_layer_counts_against_a_slow_count():
    neurons = random_neurons()
    counts = positional_layer_counts(neurons)
    names = [f"n_{kind}_{label}" for kind in POSITIONAL_TYPES for label in ("strong", "weak")]
    assert counts.columns == ["model", "layer", "n_positional", *names]
    assert all(counts.schema[name] == pl.Int64 for name in ["n_positional", *names])
    expected = {}
    for model, layer, _, positional, kind, strong in neurons.rows():
        row = expected.setdefault((model, layer), dict.fromkeys(["n_positional", *names], 0))
        if positional:
            row["n_positional"] += 1
            row[f"n_{kind}_{'strong' if strong else 'weak'}"] += 1
    assert [(r["model"], r["layer"]) for r in counts.iter_rows(named=True)] == list(expected)
    for row in counts.iter_rows(named=True):
        assert {name: row[name] for name in ["n_positional", *names]} == expected[(row["model"], row["layer"])]
    assert counts.filter(pl.col("layer") == 1)["n_positional"].to_list() == [0, 0]


# ------------------------------------------------------------------------------------ figures


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def texts(fig: Figure) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts]


@pytest.fixture(scope="module")
def rates_two_models(designed) -> pl.DataFrame:
    first = position_rates_table("a", ATTRS, find_positional(designed, SETTINGS))
    second = position_rates_table("b", {**ATTRS, "layers": [0, 1]}, find_positional(designed, SETTINGS))
    second = second.filter(pl.col("layer") == 1)
    return pl.concat([first, second])


def test_example_neurons_against_a_slow_selection(rates_two_models):
    chosen = example_neurons(rates_two_models, "a", 1)
    per_neuron = rates_two_models.filter(pl.col("model") == "a").unique(["layer", "neuron"]).rows(named=True)
    expected = set()
    for kind in POSITIONAL_TYPES:
        for strong in (True, False):
            group = [r for r in per_neuron if r["positional_type"] == kind and r["positional_strong"] == strong]
            if group:
                best = max(group, key=lambda r: (r["position_mi"], -r["layer"], -r["neuron"]))
                expected.add((kind, strong, best["layer"], best["neuron"]))
    got = set(chosen.select("positional_type", "positional_strong", "layer", "neuron").rows())
    assert got == expected
    groups = example_neurons(rates_two_models, "a", 3).group_by("positional_type", "positional_strong").len()
    assert groups["len"].max() <= 3


def test_plot_positional_examples(rates_two_models):
    fig = plot_positional_examples({"position_rates": rates_two_models}, {**STYLE, "n_examples": 2})
    assert png(fig).startswith(b"\x89PNG")
    assert len(fig.axes) == 8
    chosen = example_neurons(rates_two_models, "a", 2)
    assert sum(len(ax.lines) for ax in fig.axes) == chosen.height
    assert texts(fig).count("none") == 8 - chosen.group_by("positional_type", "positional_strong").len().height
    empty = plot_positional_examples({"position_rates": rates_two_models.clear()}, STYLE)
    assert png(empty).startswith(b"\x89PNG") and texts(empty).count("none") == 8


def test_stacked_dots_against_a_slow_stack():
    neurons = random_neurons()
    dots = stacked_dots(neurons)
    expected = []
    for model in ("a", "b"):
        for layer in range(3):
            rows = [r for r in neurons.rows(named=True) if (r["model"], r["layer"]) == (model, layer)]
            rows = [r for r in rows if r["positional"]]
            rows.sort(
                key=lambda r: (POSITIONAL_TYPES.index(r["positional_type"]), not r["positional_strong"], r["neuron"])
            )
            expected += [(model, layer, r["neuron"], stack) for stack, r in enumerate(rows)]
    assert sorted(dots.select("model", "layer", "neuron", "stack").rows()) == sorted(expected)


def test_plot_positional_neurons():
    neurons = random_neurons()
    layers = neurons.select("model", "layer").unique(maintain_order=True)
    fig = plot_positional_neurons({"neurons": neurons, "layers": layers}, STYLE)
    assert png(fig).startswith(b"\x89PNG")
    assert len(fig.axes) == 2
    for ax, model in zip(fig.axes, ("a", "b")):
        n_dots = sum(len(collection.get_offsets()) for collection in ax.collections)
        n_positional = neurons.filter((pl.col("model") == model) & pl.col("positional").fill_null(False)).height
        assert n_dots == n_positional and ax.get_title() == f"{model} ({n_positional})"
    assert len(fig.legends) == 1
    empty = plot_positional_neurons({"neurons": neurons.clear(), "layers": layers.clear()}, STYLE)
    assert png(empty).startswith(b"\x89PNG") and texts(empty) == ["no models"]
    not_positional = neurons.filter(~pl.col("positional").fill_null(True))
    none = plot_positional_neurons({"neurons": not_positional, "layers": layers}, STYLE)
    assert png(none).startswith(b"\x89PNG") and texts(none) == ["no positional neurons"] * 2


def shifted_squares(model: str, layer: int, shifts: list[int]) -> pl.DataFrame:
    """Strong oscillatory neurons firing at 4 of every 8 positions, shifted; plus one weak neuron."""
    rows = []
    for neuron, shift in enumerate(shifts):
        for position in range(1, T + 1):
            rate = 1.0 if (position - shift) % 8 < 4 else 0.0
            rows.append((model, layer, neuron, position, rate, 0.5, "oscillatory", True))
    for position in range(1, T + 1):
        rows.append((model, layer, 99, position, 1.0, 0.5, "oscillatory", False))
    return pl.DataFrame(
        rows,
        schema={"model": pl.Utf8, "layer": pl.Int64, "neuron": pl.Int64, "position": pl.Int64, "fire_rate": pl.Float64,
                "position_mi": pl.Float64, "positional_type": pl.Utf8, "positional_strong": pl.Boolean},
        orient="row",
    )


@pytest.fixture(scope="module")
def oscillating() -> pl.DataFrame:
    parts = [shifted_squares("a", 0, [0, 2]), shifted_squares("b", 1, [3, 1, 6]), shifted_squares("b", 2, [5])]
    return pl.concat(parts)


def test_oscillatory_ranges_against_a_slow_scan(oscillating):
    assert pick_oscillatory_layer(oscillating, None, None) == ("b", 1)
    assert pick_oscillatory_layer(oscillating, "a", None) == ("a", 0)
    assert pick_oscillatory_layer(oscillating, "b", 2) == ("b", 2)
    ranges = oscillatory_ranges(oscillating, "b", 1, 0.5)
    expected = []
    for neuron in (0, 1, 2):
        curve = oscillating.filter((pl.col("model") == "b") & (pl.col("layer") == 1) & (pl.col("neuron") == neuron))
        start = None
        for position, rate in curve.sort("position").select("position", "fire_rate").rows():
            if rate >= 0.5 and start is None:
                start = position
            if rate < 0.5 and start is not None:
                expected.append((neuron, start, position - start))
                start = None
        if start is not None:
            expected.append((neuron, start, T + 1 - start))
    assert sorted(ranges.rows()) == sorted(expected)
    order = list(dict.fromkeys(ranges["neuron"].to_list()))
    assert order == sorted(order, key=lambda n: min((s, w) for m, s, w in expected if m == n))
    assert order == [2, 1, 0]  # first ranges: neuron 2 at 1 only (shift 6), neuron 1 at 1-4, neuron 0 at 3-6
    assert 99 not in ranges["neuron"].to_list()


def test_plot_oscillatory_ranges(oscillating):
    fig = plot_oscillatory_ranges({"position_rates": oscillating}, STYLE)
    assert png(fig).startswith(b"\x89PNG")
    (ax,) = fig.axes
    assert len(ax.collections) == 3 and "b" in ax.get_title() and "layer 1" in ax.get_title()
    chosen = plot_oscillatory_ranges({"position_rates": oscillating}, {**STYLE, "model": "a"})
    assert len(chosen.axes[0].collections) == 2
    missing = plot_oscillatory_ranges({"position_rates": oscillating}, {**STYLE, "model": "a", "layer": 7})
    assert png(missing).startswith(b"\x89PNG") and texts(missing) == ["no strong oscillatory neurons in a layer 7"]
    empty = plot_oscillatory_ranges({"position_rates": oscillating.clear()}, {**STYLE, "title": "Fig 9"})
    assert png(empty).startswith(b"\x89PNG")
    assert texts(empty) == ["no strong oscillatory neurons in any layer of any model"]
    assert empty.axes[0].get_title() == "Fig 9"
    unknown = plot_oscillatory_ranges({"position_rates": oscillating}, {**STYLE, "model": "z"})
    assert texts(unknown) == ["no strong oscillatory neurons in any layer of z"]


def test_oscillatory_ranges_split_at_every_drop_and_include_the_threshold():
    curve = [1.0, 0.4, 0.5, 1.0, 0.0, 0.2, 0.9]
    rates = pl.DataFrame(
        {
            "model": "m", "layer": 0, "neuron": 4, "position": list(range(1, 8)), "fire_rate": curve,
            "position_mi": 0.3, "positional_type": "oscillatory", "positional_strong": True,
        }
    )
    assert oscillatory_ranges(rates, "m", 0, 0.5).rows() == [(4, 1, 1), (4, 3, 2), (4, 7, 1)]
    assert oscillatory_ranges(rates, "m", 0, 0.95).rows() == [(4, 1, 1), (4, 4, 1)]
