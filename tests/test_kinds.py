"""Kinds of neurons across the papers: the overlap table against counting each pair by hand, and its figure."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from neuron_census.analyses.kinds import kind_overlaps, with_kinds
from neuron_census.plots.kinds import plot_kind_overlaps


def _random_neurons(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, layers in (("b-model", 3), ("a-model", 2)):
        for layer, neuron in itertools.product(range(layers), range(12)):
            rows.append({
                "model": model, "layer": layer, "neuron": neuron, "dead": bool(rng.random() < 0.2),
                "token_detector": bool(rng.random() < 0.4), "positional": bool(rng.random() < 0.3),
                "vocab_role": rng.choice(["suppression", "prediction", None]), "universal": bool(rng.random() < 0.3),
                "probe_features": ["text: digits"] if rng.random() < 0.2 else [],
            })
    return pl.DataFrame(rows)


def test_overlaps_against_counting_each_pair():
    neurons = with_kinds(_random_neurons(0))
    table = kind_overlaps(neurons)
    assert table["model"].unique(maintain_order=True).to_list() == ["b-model", "a-model"]  # the order given
    for model, layer, kind, other, n_kind, n_other, n_both, share in table.iter_rows():
        group = neurons.filter(pl.col("model") == model)
        if layer is not None:
            group = group.filter(pl.col("layer") == layer)
        sets = [set(k) for k in group["kinds"].to_list()]
        assert n_kind == sum(kind in s for s in sets) and n_other == sum(other in s for s in sets)
        assert n_both == sum(kind in s and other in s for s in sets)
        assert share == (n_both / n_kind if n_kind else None)
    names = {m: set(itertools.chain.from_iterable(neurons.filter(pl.col("model") == m)["kinds"].to_list())) for m in ("a-model", "b-model")}
    for model, layers in (("b-model", 3), ("a-model", 2)):
        assert table.filter(pl.col("model") == model).height == (layers + 1) * len(names[model]) ** 2
    assert set(table.filter(pl.col("model") == "a-model")["kind"]) == names["a-model"]


def test_overlap_figure_draws_a_panel_per_model():
    fig = plot_kind_overlaps({"neurons": _random_neurons(1)}, {})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["b-model", "a-model"]
    empty = plot_kind_overlaps({"neurons": pl.DataFrame({"model": ["m"], "layer": [0], "neuron": [0], "dead": [False]})}, {})
    assert "no neuron of any kind" in [t.get_text() for ax in empty.axes for t in ax.texts]


def test_model_summary_counts_and_shares():
    from neuron_census.analyses.kinds import model_summary

    neurons = pl.DataFrame({
        "layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "dead": [True, False, False, False],
        "token_detector": [False, True, True, False], "positional": [False, True, False, True],
        "positional_type": [None, "oscillatory", None, "oscillatory"], "probe_features": [[], ["b", "a", "c"], [], ["x"]],
        "probe_f1": [None, 0.97, None, 0.93],
    })
    assert model_summary(neurons) == {
        "layers": 2, "neurons": 4, "dead %": 25.0, "token detectors": 2, "positional": "oscillatory 2",
        "single-neuron probes": 2, "best probe": "L0 N1, F1 0.97: b; a (+1)",
    }
    assert model_summary(pl.DataFrame({"layer": [0], "neuron": [0]})) == {"layers": 1, "neurons": 1}
