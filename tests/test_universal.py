"""Universal neurons: streaming cross-model Pearson correlation, the rotated baseline, planted seeds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.accumulators.correlation import NeuronCorrelation, co_key, pearson, within_key
from neuron_census.analyses.universal import _rotated_pearson, best_matches, random_rotation, universality
from neuron_census.capture.engine import PairedModel, capture_paired
from neuron_census.capture.sources import PairedActivations, TokenBatch
from neuron_census.models.adapters import adapter_for
from neuron_census.testing.planted_seeds import build_seed_family

N_SEQ, SEQ_LEN, WIDTH, LAYERS = 12, 7, 5, (0, 1, 2)
NEWLINE = 3


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(len(LAYERS), N_SEQ, SEQ_LEN, WIDTH)).astype(np.float32)
    a[1, :, :, 2] = 0.0  # dead
    a[2, :, :, 4] = 1000.0 + 0.01 * rng.normal(size=(N_SEQ, SEQ_LEN))  # spread small next to the mean
    b = rng.normal(size=a.shape).astype(np.float32)
    b[0, :, :, 1] = 2.0 * a[2, :, :, 0] + 1.0  # a copy, rescaled, in another layer
    b[2, :, :, 3] = -a[0, :, :, 3]
    b[1, :, :, 0] = 7.0  # constant
    c = (0.5 * a + rng.normal(size=a.shape)).astype(np.float32)
    tokens = rng.integers(0, 10, size=(N_SEQ, SEQ_LEN))
    return {"a": a, "b": b, "c": c, "tokens": tokens}


def feed(accumulator: NeuronCorrelation, data, sequences: slice, batch_size: int, layerwise: bool = False) -> None:
    rows = np.arange(N_SEQ)[sequences]
    batches = []
    for index, start in enumerate(range(0, len(rows), batch_size)):
        chosen = rows[start : start + batch_size]
        mask = torch.ones(len(chosen), SEQ_LEN, dtype=torch.bool)
        mask[:, 0] = False
        tokens = torch.from_numpy(data["tokens"][chosen])
        batches.append((TokenBatch(index, tokens, torch.from_numpy(chosen), mask, int(chosen[0]), 1, False), chosen))
    order = [(b, layer) for layer in LAYERS for b in batches] if layerwise else [(b, layer) for b in batches for layer in LAYERS]
    for (batch, chosen), layer in order:
        acts = {name: torch.from_numpy(data[name][layer][chosen]) for name in ("a", "b", "c")}
        accumulator.update(PairedActivations(batch, layer, acts, {name: None for name in acts}))


def counted(data, name: str, layers) -> np.ndarray:
    keep = (data["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)
    return np.concatenate([data[name][layer][keep] for layer in layers], axis=1).astype(np.float64)


def reference_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.corrcoef(x, y, rowvar=False)[: x.shape[1], x.shape[1] :]
    constant = (x.std(0) == 0)[:, None] | (y.std(0) == 0)[None, :]
    return np.where(constant, 0.0, r)


def correlation(layers_a=LAYERS, layers_b=LAYERS) -> NeuronCorrelation:
    return NeuronCorrelation("a", ["b", "c"], layers_a, layers_b, WIDTH, torch.device("cpu"), dropped_tokens=[NEWLINE])


@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_streaming_pearson_equals_corrcoef_in_one_pass_and_merged(data, batch_size):
    """BOS and newline tokens dropped, a dead and a constant neuron at 0, a neuron whose spread is 1e-5 of its
    mean exact; shards merge to one pass."""
    one = correlation()
    feed(one, data, slice(None), batch_size)
    halves = [correlation(), correlation()]
    feed(halves[0], data, slice(0, 5), 2)
    feed(halves[1], data, slice(5, None), 3)
    merged = NeuronCorrelation.merge([halves[0].state(), halves[1].state()])
    x = counted(data, "a", LAYERS)
    for other in ("b", "c"):
        y = counted(data, other, LAYERS)
        expected = reference_pearson(x, y)
        for state in (one.state(), merged):
            assert state["count"][0] == len(x)
            np.testing.assert_allclose(pearson(state, other), expected, rtol=0, atol=1e-6)
            for slot in range(len(LAYERS)):  # the co-moments within each layer of the other model
                part = y[:, slot * WIDTH : (slot + 1) * WIDTH]
                centred = part - part.mean(0)
                np.testing.assert_allclose(state[within_key(other)][slot], centred.T @ centred, rtol=0, atol=1e-4)  # float32 products of sums ~100
    r = pearson(one.state(), "b")
    assert r[2 * WIDTH + 0, 0 * WIDTH + 1] == pytest.approx(1.0, abs=1e-6)  # the rescaled copy
    assert r[0 * WIDTH + 3, 2 * WIDTH + 3] == pytest.approx(-1.0, abs=1e-6)
    assert (r[1 * WIDTH + 2] == 0).all() and (r[:, 1 * WIDTH + 0] == 0).all()  # dead and constant: 0, not NaN
    assert abs(r[2 * WIDTH + 4, 0]) < 0.5 and r[2 * WIDTH + 4].any()


def test_blocks_of_layer_pairs_are_slices_of_the_whole(data):
    whole = correlation()
    feed(whole, data, slice(None), 4)
    block = correlation(layers_a=(1, 2), layers_b=(0,))
    feed(block, data, slice(None), 4)
    expected = pearson(whole.state(), "c")[WIDTH:, :WIDTH]
    np.testing.assert_allclose(pearson(block.state(), "c"), expected, rtol=0, atol=1e-6)  # float32 products


def test_layerwise_order_is_refused(data):
    with pytest.raises(ValueError, match="every layer of a batch before the next batch"):
        feed(correlation(), data, slice(None), 4, layerwise=True)


def test_rotated_baseline_from_co_moments_equals_rotating_the_activations(data):
    """corr(x, yR) from C and the within-layer co-moments equals corrcoef on the rotated activations."""
    whole = correlation()
    feed(whole, data, slice(None), 5)
    state = whole.state()
    x = counted(data, "a", LAYERS)
    rotation = random_rotation(WIDTH, np.random.default_rng(1))
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(WIDTH), atol=1e-12)
    for slot in range(len(LAYERS)):
        y = counted(data, "b", [LAYERS[slot]]) @ rotation
        np.testing.assert_allclose(_rotated_pearson(state, "b", slot, rotation), reference_pearson(x, y), atol=1e-6)
    assert co_key("b") in state


def test_planted_universal_neurons_are_recovered():
    """Three models in lockstep through capture; the reference's neurons copied (rescaled, elsewhere, in
    other layers) into both others are exactly the universal ones, each matched to its copy."""
    family = build_seed_family(3, n_universal=8)
    models = {name: PairedModel(model, adapter_for(model), "t") for name, model in family.models.items()}
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 300, size=(48, 32))
    tokens[:, 0] = 2
    accumulator = NeuronCorrelation("a", ["b", "c"], (0, 1, 2), (0, 1, 2), 256, torch.device("cpu"))
    capture_paired(models, tokens, [accumulator], layers=accumulator.layers, first_seq_id=0, has_bos=True, batch_size=16, device=torch.device("cpu"))
    matches = best_matches([accumulator.state()], seed=0)
    table = universality(matches, threshold=0.5)
    found = {(row["layer"], row["neuron"]) for row in table.filter("universal").iter_rows(named=True)}
    assert found == set(family.universal)  # precision = recall = 1
    for row in matches.iter_rows(named=True):
        cell = (row["layer"], row["neuron"])
        if cell in family.universal:
            assert (row["match_layer"], row["match_neuron"]) == family.partners[row["other"]][cell]
            assert row["max_corr"] == pytest.approx(1.0, abs=1e-5)
    ((layer, neuron),) = family.dead
    dead = table.filter(pl.col("layer") == layer, pl.col("neuron") == neuron)
    assert dead["max_corr"].to_list() == [0.0] and dead["excess_corr"].to_list() == [0.0]  # correlation 0, not NaN


def test_best_matches_over_blocks_of_layer_pairs_equal_one_block():
    """Four blocks of one capture ((0) and (1, 2) against (0, 1) and (2)) give the tables of one block."""
    family = build_seed_family(3, n_universal=8, seed=1)
    models = {name: PairedModel(model, adapter_for(model), "t") for name, model in family.models.items()}
    tokens = np.random.default_rng(1).integers(3, 300, size=(32, 32))
    whole = NeuronCorrelation("a", ["b", "c"], (0, 1, 2), (0, 1, 2), 256, torch.device("cpu"))
    blocks = [
        NeuronCorrelation("a", ["b", "c"], layers_a, layers_b, 256, torch.device("cpu"))
        for layers_a in ((0,), (1, 2))
        for layers_b in ((0, 1), (2,))
    ]
    capture_paired(models, tokens, [whole, *blocks], layers=(0, 1, 2), first_seq_id=0, has_bos=True, batch_size=16, device=torch.device("cpu"))
    expected = best_matches([whole.state()], seed=3).sort("other", "layer", "neuron")
    got = best_matches((block.state() for block in reversed(blocks)), seed=3).sort("other", "layer", "neuron")  # any order
    assert got.select("layer", "neuron", "other", "match_layer", "match_neuron").equals(
        expected.select("layer", "neuron", "other", "match_layer", "match_neuron")
    )
    for column in ("max_corr", "baseline"):
        np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="with a layer twice"):
        best_matches([block.state() for block in blocks] + [blocks[0].state()])
