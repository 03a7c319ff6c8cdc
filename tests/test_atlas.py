"""The neuron atlas's parts: top examples against a sort of every kept one, contexts, which neurons get pages,
and what a page shows (only the sections with data)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from neuron_census.analyses.kinds import neuron_kinds, ordered_kinds
from neuron_census.atlas.examples import examples_table, top_examples
from neuron_census.atlas.index import COLUMNS, index_page, layer_rows_script
from neuron_census.atlas.pages import neuron_page, rate_svg
from neuron_census.atlas.selection import page_neurons


def test_top_examples_against_sorting_every_kept_one():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_data, kept, n_neurons, k = rng.integers(1, 4), rng.integers(1, 5), 6, rng.integers(1, 9)
        values = rng.integers(0, 4, size=(n_data, kept, n_neurons)).astype(np.float32)  # many ties
        seq = rng.integers(0, 50, size=values.shape)
        pos = rng.integers(0, 8, size=values.shape)
        seq[rng.random(values.shape) < 0.2] = -1  # empty slots
        data, value, seq_out, pos_out = top_examples(values, seq, pos, k)
        for n in range(n_neurons):
            entries = sorted((-values[d, i, n], d, seq[d, i, n], pos[d, i, n]) for d in range(n_data) for i in range(kept) if seq[d, i, n] >= 0)[:k]
            got = [(-value[r, n], data[r, n], seq_out[r, n], pos_out[r, n]) for r in range(min(k, n_data * kept)) if data[r, n] >= 0]
            assert got == entries, (trial, n)
            assert (data[len(entries):, n] == -1).all()
    with pytest.raises(ValueError, match="one shape"):
        top_examples(np.zeros((1, 2, 3)), np.zeros((1, 2, 2)), np.zeros((1, 2, 3)), 1)


def test_examples_table_contexts_and_focus():
    sequences = {(0, 4): np.arange(100, 120), (1, 9): np.arange(200, 220)}
    texts = [f"t{i}" for i in range(220)]
    picked = (np.array([[0, 1], [1, -1]]), np.array([[2.0, 5.0], [1.0, np.nan]]), np.array([[4, 9], [9, -1]]), np.array([[3, 18], [0, -1]]))
    table = examples_table(7, [0, 1], picked, ["web", "code"], lambda d, s: sequences[(d, s)], texts, before=2, after=1)
    rows = table.select("neuron", "rank", "activation", "dataset", "seq", "position", "context", "focus").rows()
    assert rows == [
        (0, 0, 2.0, "web", 4, 3, ["t101", "t102", "t103", "t104"], 2),
        (0, 1, 1.0, "code", 9, 0, ["t200", "t201"], 0),  # nothing before position 0
        (1, 0, 5.0, "code", 9, 18, ["t216", "t217", "t218", "t219"], 2),  # the sequence ends one after
    ]
    assert table["layer"].unique().to_list() == [7]


def _neurons(layer: int, kinds: dict[int, dict]) -> pl.DataFrame:
    rows = [{"layer": layer, "neuron": n, "dead": False, "token_detector": False, "positional": False, **kinds.get(n, {})} for n in range(10)]
    return pl.DataFrame(rows)


def test_page_neurons_flagged_first_bounded_and_seeded():
    table = pl.concat([
        _neurons(0, {1: {"dead": True}, 2: {"token_detector": True}, 3: {"token_detector": True, "positional": True}, 8: {"positional": True}}),
        _neurons(1, {}),
    ])
    pages = page_neurons(table, per_layer=2, others=3, seed=1)
    layer0 = pages.filter(pl.col("layer") == 0)["neuron"].to_list()
    flagged = set(layer0) & {1, 2, 3, 8}
    assert flagged == {2, 3}  # two kinds first, then by neuron; dead (1) ranks last; the cap is 2
    assert len(layer0) == 5 and set(layer0) - flagged <= {0, 4, 5, 6, 7, 9}  # three others, never a flagged one
    assert pages.filter(pl.col("layer") == 1).height == 3
    assert pages.equals(page_neurons(table, per_layer=2, others=3, seed=1))
    assert not pages.equals(page_neurons(table, per_layer=2, others=3, seed=2))
    every = page_neurons(table, per_layer=10, others=0)
    assert every.rows() == [(0, 1), (0, 2), (0, 3), (0, 8)]


def test_a_page_shows_only_the_sections_with_data():
    row = {"layer": 2, "neuron": 5, "dead": False, "fire_freq": 0.25, "token_detector": True, "detected_token_strings": [" the", "<b>"]}
    page = neuron_page("m", row)
    assert 'id="detectors"' in page and '<span class="tok">&lt;b&gt;</span>' in page  # token text escaped
    for section in ("examples", "vocab", "universal", "subupdates", "probing"):
        assert f'id="{section}"' not in page, section
    full = neuron_page(
        "m", {**row, "vocab_top_tokens": ["a"], "vocab_top_scores": [1.5], "max_corr": 0.9, "probe_features": ["text: digits"], "probe_f1": 0.97},
        examples=[{"activation": 3.0, "dataset": "web", "seq": 1, "position": 4, "context": ["x", " y", "z"], "focus": 1}],
        rates=np.array([0.0, 0.5, 1.0]),
        matches=[{"other": "m2", "match_layer": 2, "match_neuron": 7, "max_corr": 0.9, "baseline": 0.4}],
        subupdates={"count": 3, "examples": [{"score": 1.0, "promotes": True, "context": "a → b"}]},
    )
    for section in ("examples", "vocab", "universal", "subupdates", "probing"):
        assert f'id="{section}"' in full, section
    assert "<mark> y</mark>" in full and "L2 N7" in full and "text: digits" in full and "<polyline" in full
    assert neuron_page("m", {**row, "token_detector": False, "detected_token_strings": []}).count('class="kind"') == 0


def test_kinds_follow_the_papers_order():
    row = {"dead": False, "token_detector": True, "positional": True, "positional_type": "oscillatory", "vocab_role": "suppression", "universal": True,
           "probe_features": ["x"]}
    assert neuron_kinds(row) == ["token detector", "positional", "suppression neuron", "universal", "single-neuron probe"]
    assert neuron_kinds({"vocab_role": None, "family": float("nan")}) == []
    assert ordered_kinds(["universal", "zzz", "dead", "universal"]) == ["dead", "universal", "zzz"]


def test_index_and_row_scripts():
    script = layer_rows_script(3, [[0, 0.5, "dead", "", "", ""], [1, None, "", " the", "", "neurons/L3-N1.html"]])
    assert script.startswith("atlasRows(3, ") and json.loads(script[len("atlasRows(3, ") : -3])[1][5] == "neurons/L3-N1.html"
    with pytest.raises(ValueError):
        layer_rows_script(0, [[0, float("nan"), "", "", "", ""]])  # JSON has no NaN: the job writes null
    page = index_page("m", [0, 3], ["dead"], [{"layer": 0, "neurons": 4, "counts": {"dead": 1}, "pages": 2}, {"layer": 3, "neurons": 4, "counts": {"dead": 0}, "pages": 1}], 3, 200, 4)
    assert "8 neurons in 2 layers; 3 have a page" in page and json.dumps(list(COLUMNS)) in page
    assert rate_svg(np.array([0.5])) == ""


def test_report_tables_link_neurons_to_their_atlas_pages(tmp_path):
    from neuron_census.report import csv_table, summary_table

    (tmp_path / "atlas" / "m" / "neurons").mkdir(parents=True)
    (tmp_path / "atlas" / "m" / "neurons" / "L1-N2.html").write_text("page")
    csv = tmp_path / "table.csv"
    pl.DataFrame({"model": ["m", "m", "other"], "layer": [1, 1, 1], "neuron": [2, 3, 2], "note": ["<x>", "y", "z"]}).write_csv(csv)
    table = csv_table(csv, {"m": "atlas/m"}, tmp_path, max_rows=2)
    assert table.count("<a href=") == 1 and '<a href="atlas/m/neurons/L1-N2.html">2</a>' in table  # only pages that exist
    assert "&lt;x&gt;" in table and "The first 2 of 3 rows" in table and "<td>z</td>" not in table
    summary = summary_table({"m": {"layers": 2, "best probe": "x"}, "n": {"layers": 1, "dead %": 5.0}}, {"m": "atlas/m"})
    assert '<a href="atlas/m/index.html">m</a>' in summary and "<td>n</td>" in summary
    assert summary.index("<th>layers</th>") < summary.index("<th>dead %</th>") < summary.index("<th>best probe</th>")  # a fixed order


def test_report_shows_a_drawn_table_as_html(tmp_path):
    from neuron_census.report import render_report

    png, caption, csv = tmp_path / "f.png", tmp_path / "f.rst", tmp_path / "f.csv"
    png.write_bytes(b"\x89PNG")
    caption.write_text("A caption.")
    pl.DataFrame({"model": ["m"], "layer": [0], "neuron": [1]}).write_csv(csv)
    entry = {"name": "f", "png": str(png), "caption": str(caption), "csv": str(csv), "category": "Group"}
    both = render_report([entry], "t", {}, root=tmp_path)
    assert both.count("<img") == 1 and both.count("class=data") == 1 and "<li>Group: " in both
    only = render_report([{**entry, "table_only": True}], "t", {}, root=tmp_path)
    assert only.count("<img") == 0 and only.count("class=data") == 1
