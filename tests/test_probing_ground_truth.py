"""Sparse probing recovers what the probing recipe plants, through the jobs the rules run: spans from token
shards, a samples-only capture per shard, a sweep per layer, the tables and the neurons.parquet join.

Planted (`testing.planted._probing`): in layer 0 the word w10 (neuron 1) and positions below 8 (neuron 5)
each have a neuron of their own, and the words w20-w22 one neuron each (2-4); layer 1 has one neuron for all
three (0). So the single neurons at F1 = 1 are exactly {(w10, 0, 1), (position < 8, 0, 5), (triple, 1, 0)}:
precision and recall 1 over every (feature, layer) probed; every informed ranking puts the planted neuron
first; the triple needs k = 3 in layer 0.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from neuron_census.jobs.census import capture_job, tokenize_job
from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.probing import probe_layer_job, probe_spans_job, probe_tables_job
from neuron_census.testing.planted import CENSUS_WORDS, planted_words

TOKENIZER = {"source": "words", "words": [f"w{i:02d}" for i in range(2, 48)]}
MODEL = {"source": "planted", "recipe": "probing"}
STUDY = {
    "families": ["position", "words"], "words": {"single": ["w10"], "triple": ["w20", "w21", "w22"]},
    "position_bins": [8, 16], "limit": 10_000, "positive_share": 0.5, "seed": 42, "max_mip_k": 3,
}
PLANTED = {("words: single", 0, 1), ("position < 8", 0, 5), ("words: triple", 1, 0)}
INFORMED = ("mean_difference", "f_statistic", "mutual_information", "l1_logistic", "linear_svm", "optimal")


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    root = tmp_path_factory.mktemp("probing")
    dataset = {"source": "planted", "recipe": "probing", "seq_len": 64, "sequences_per_shard": 40, "n_shards": 2}
    shards = [root / f"shard-{i}.zarr" for i in range(2)]
    for i, shard in enumerate(shards):
        tokenize_job("planted", TOKENIZER, "designed", dataset, i, shard)
    probe_spans_job("planted-probing", "planted", TOKENIZER, STUDY, shards, root / "spans.parquet", root / "samples.parquet")
    with_text = {**STUDY, "families": ["position", "words", "text"]}  # word-level tokens: some text features have one class
    probe_spans_job("planted-probing", "planted", TOKENIZER, with_text, shards, root / "text-spans.parquet", root / "text-samples.parquet")
    settings = {"accumulators": ["samples"], "sample_spans": str(root / "samples.parquet"), "batch_size": 16, "device": "cpu"}
    stores = [root / f"samples-{i}.zarr" for i in range(2)]
    for shard, store in zip(shards, stores):
        capture_job(ModelJob("planted-probing", MODEL, "planted", TOKENIZER, settings), shard, store)
    layers = [root / f"layer-{layer}.parquet" for layer in range(2)]
    for layer, out in enumerate(layers):
        probe_layer_job("planted-probing", layer, STUDY, [(root / "spans.parquet", stores)], out)
    probe_tables_job(layers, 0.99, root / "probes.parquet", root / "best.parquet", root / "features.parquet")
    # the same spans as two datasets, one shard each: pooled per feature, the sweep must come out the same
    spans = pl.read_parquet(root / "spans.parquet")
    parts = []
    for i, rows in enumerate((pl.col("seq") < 40, pl.col("seq") >= 40)):
        spans.filter(rows).write_parquet(root / f"part-{i}.parquet")
        parts.append((root / f"part-{i}.parquet", [stores[i]]))
    probe_layer_job("planted-probing", 1, STUDY, parts, root / "pooled.parquet")
    names = ("spans", "probes", "best", "features", "pooled", "layer-1", "text-spans")
    return {name: pl.read_parquet(root / f"{name}.parquet") for name in names}


def test_features_without_both_classes_are_left_out(probed):
    kept = set(probed["text-spans"]["feature"].unique().to_list())
    assert {"text: digits", "text: leading space", "text: capitalised"}.isdisjoint(kept)  # every word has digits, none a space
    assert {"position < 8", "words: single", "words: triple"} <= kept


def test_datasets_pool_per_feature(probed):
    ignore = ["seconds", "solver_status"]  # solver wall time; the status of a solve stopped by time would differ
    assert probed["pooled"].drop(ignore).equals(probed["layer-1"].drop(ignore))


def test_spans_cover_both_shards_with_global_sequence_ids(probed):
    spans = probed["spans"]
    assert spans["seq"].min() == 0 and spans["seq"].max() == 79  # shard 1's rows numbered 40..79
    single = spans.filter(pl.col("feature") == "words: single")
    assert single["label"].sum() == 2 * 63 and len(single) == 2 * 2 * 63  # w10 once per position per block, balanced


def test_single_neurons_found_are_exactly_the_planted_ones(probed):
    best = probed["best"]
    assert len(best) == 4 * 2  # every feature at both layers
    found = {(r["feature"], r["layer"], r["neuron"]) for r in best.filter(pl.col("monosemantic")).iter_rows(named=True)}
    assert found == PLANTED
    perfect = probed["probes"].filter((pl.col("k") == 1) & (pl.col("f1") == 1.0))
    assert {(r["feature"], r["layer"], r["neurons"][0]) for r in perfect.iter_rows(named=True)} == PLANTED


def test_every_informed_ranking_puts_the_planted_neuron_first(probed):
    first = probed["probes"].filter(pl.col("k") == 1).select("feature", "layer", "method", neuron=pl.col("neurons").list.first())
    for feature, layer, neuron in PLANTED:
        chosen = first.filter((pl.col("feature") == feature) & (pl.col("layer") == layer))
        assert dict(chosen.select("method", "neuron").iter_rows()) | {"random": neuron} == dict.fromkeys((*INFORMED, "random"), neuron)


def test_the_split_feature_needs_three_neurons(probed):
    triple = probed["probes"].filter((pl.col("feature") == "words: triple") & (pl.col("layer") == 0))
    f1 = {(r["method"], r["k"]): r["f1"] for r in triple.iter_rows(named=True)}
    assert max(f1[(m, 1)] for m in INFORMED) < 0.6 and max(f1[(m, 2)] for m in INFORMED) < 0.85
    assert f1[("optimal", 3)] == f1[("mean_difference", 3)] == 1.0
    optimal = triple.filter((pl.col("method") == "optimal") & (pl.col("k") == 3)).row(0, named=True)
    assert sorted(optimal["neurons"]) == [2, 3, 4] and optimal["solver_status"] == "optimal"


def test_neurons_parquet_columns(probed):
    from neuron_census.analyses.tables import with_probe_columns

    neurons = pl.DataFrame({"model": ["m"] * 16, "layer": np.repeat([0, 1], 8), "neuron": np.tile(np.arange(8), 2)})
    joined = with_probe_columns(neurons, probed["features"])
    tagged = {(r["layer"], r["neuron"]): r["probe_features"] for r in joined.iter_rows(named=True) if r["probe_features"]}
    assert tagged == {(0, 1): ["words: single"], (0, 5): ["position < 8"], (1, 0): ["words: triple"]}
    assert joined["probe_f1"].null_count() == 13


def test_planted_words_match_the_tokenizer():
    assert TOKENIZER["words"] == planted_words_of_recipe()
    assert 10 in CENSUS_WORDS and {20, 21, 22} <= set(CENSUS_WORDS)


def planted_words_of_recipe() -> list[str]:
    from neuron_census.testing.planted import get_recipe

    return planted_words(get_recipe("probing"))


def test_probing_words_must_be_in_the_vocabulary():
    from neuron_census.data.tokenization import load_tokenizer
    from neuron_census.jobs.probing import word_forms

    tokenizer = load_tokenizer("planted", TOKENIZER)
    assert word_forms(tokenizer, "w10") == [(10,)]
    with pytest.raises(ValueError, match=r"probing word 'w99' is not in the vocabulary of tokenizer 'planted'"):
        word_forms(tokenizer, "w99")
