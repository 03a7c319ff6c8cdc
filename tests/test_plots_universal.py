"""Figures of universal neurons and vocabulary roles: what they draw, from small hand-made tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from neuron_census.plots.roles import plot_vocab_roles
from neuron_census.plots.universal import PROPERTIES, plot_universal_properties, property_percentiles


@pytest.fixture
def tables() -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(0)
    rows = []
    for model in ("a", "b"):
        for layer in range(3):
            for neuron in range(20):
                rows.append({"model": model, "layer": layer, "neuron": neuron})
    keys = pl.DataFrame(rows)
    n = keys.height
    universal = keys.with_columns(
        universal=pl.Series((np.arange(n) % 7 == 0) & (keys["model"] == "a").to_numpy()),
        act_freq=pl.Series(rng.uniform(size=n)),
        pre_mean=pl.Series(rng.normal(size=n)),
        pre_var=pl.Series(rng.uniform(size=n)),
        pre_skew=pl.Series([None if i % 11 == 0 else v for i, v in enumerate(rng.normal(size=n))], dtype=pl.Float64),
        pre_kurtosis=pl.Series(rng.uniform(1, 20, size=n)),
    )
    universal = universal.with_columns(
        **{column: pl.Series(rng.normal(size=n)) for column, _ in PROPERTIES if column not in universal.columns}
    )
    kurtosis = rng.uniform(2, 6, size=n)
    kurtosis[5] = 40.0
    neurons = keys.with_columns(n_layers_total=pl.lit(3)).with_columns(
        vocab_cos_kurtosis=pl.Series(kurtosis),
        vocab_cos_skew=pl.Series(np.linspace(-1, 1, n)),
        vocab_role=pl.Series(["prediction" if i == 5 else ("partition" if i == 47 else None) for i in range(n)]),
    )
    return {"universal": universal, "neurons": neurons}


def test_property_percentiles_rank_within_each_layer(tables):
    percentiles = property_percentiles(tables["universal"])
    for column in ("pre_skew", "w_out_norm"):
        for (model, layer), group in tables["universal"].group_by("model", "layer"):
            values = group.sort("neuron")[column].to_numpy()
            kept = ~np.isnan(values.astype(float)) if values.dtype != object else np.asarray([v is not None for v in values])
            expected = np.full(len(values), np.nan)
            expected[kept] = (stats.rankdata(values[kept].astype(float)) - 0.5) / kept.sum() * 100
            got = percentiles.filter(pl.col("model") == model, pl.col("layer") == layer).sort("neuron")[column]
            np.testing.assert_allclose(got.to_numpy().astype(float), expected)
    assert percentiles["universal"].sum() == tables["universal"]["universal"].sum()


def test_universal_properties_boxes_per_model_with_universal_neurons(tables):
    fig = plot_universal_properties(tables, {})
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == len(PROPERTIES)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["a (9 universal)", "b (0 universal): nothing to draw"]
    assert len([p for p in ax.patches if p.get_facecolor()[3] > 0]) == len(PROPERTIES)  # one box per property, model a only


def test_universal_properties_without_a_study_says_so():
    empty = {"universal": pl.DataFrame()}
    fig = plot_universal_properties(empty, {})
    assert any("no universal-neuron study" in text.get_text() for text in fig.axes[0].texts)


def test_vocab_roles_draws_layer_shares(tables):
    fig = plot_vocab_roles(tables, {"analysis": {"roles": {"kurtosis": 10}}})
    left, middle, right = fig.axes
    shares = {line.get_label(): line.get_ydata() for line in right.get_lines() if ":" in line.get_label()}
    np.testing.assert_allclose(shares["a: prediction"], [5.0, 0.0, 0.0])  # neuron 5 of layer 0: 1 of 20
    np.testing.assert_allclose(shares["a: partition"], [0.0, 0.0, 5.0])  # row 47 = layer 2, neuron 7
    np.testing.assert_allclose(shares["b: prediction"], [0.0, 0.0, 0.0])
    assert any(line.get_ydata()[0] == 10 for line in left.get_lines())  # the threshold
    skews = [line.get_ydata() for line in middle.get_lines() if len(line.get_ydata()) == 3]
    layer0 = np.linspace(-1, 1, 120)[:20]  # model a, layer 0
    assert any(np.isclose(y[0], np.quantile(layer0, 0.95)) for y in skews)


def test_universal_families_stacks_kinds_and_shows_the_clearest_example(tables):
    from neuron_census.plots.universal import plot_universal_families

    universal = tables["universal"]
    kinds = [None] * universal.height
    families = [None] * universal.height
    vr = np.zeros(universal.height)
    for index, kind, name, value in ((0, "token", "token: the", 0.9), (21, "token", "token: a", 0.95), (22, "position", "position < 4", 0.7)):
        kinds[index], families[index], vr[index] = kind, name, value
    universal = universal.with_columns(
        family_kind=pl.Series(kinds, dtype=pl.Utf8), family=pl.Series(families, dtype=pl.Utf8), best_vr=pl.Series(vr),
        best_mean_on=pl.lit(2.0), best_mean_off=pl.lit(0.5),
    )
    fig = plot_universal_families({"universal": universal}, {})
    panel_a, panel_b, examples = fig.axes
    heights = {(bar.get_x() + bar.get_width() / 2, bar.get_facecolor()): bar.get_height() for bar in panel_a.patches if bar.get_height()}
    assert sorted(heights.values()) == [1, 1, 1]  # layer 0: a token neuron; layer 1: a token and a position neuron
    assert any("no neuron has a family" in t.get_text() for t in panel_b.texts)
    labels = [label.get_text() for label in examples.get_yticklabels()]
    assert labels == ["a L1 N1\ntoken: a (VR 0.95)", "a L1 N2\nposition < 4 (VR 0.70)"]
