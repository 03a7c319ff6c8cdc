"""Capture on a model whose neurons are known by construction must recover exactly what was planted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_census.accumulators.token_fire_count import decode_token_fire_keys
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import N_SPECIAL, get_recipe
from neuron_census.analyses.tables import layer_table, neuron_table

RECIPE = get_recipe("basic")
N_SEQ, SEQ_LEN = 24, 64


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    rng = np.random.default_rng(1)
    tokens = rng.integers(N_SPECIAL, RECIPE.vocab_size, size=(N_SEQ, SEQ_LEN))
    tokens[:, 0] = 0  # BOS
    return tokens


def run_capture(loaded, tokens: np.ndarray, **settings):
    return capture_tokens(
        loaded.model,
        loaded.adapter,
        tokens,
        model_name="planted",
        first_seq_id=0,
        has_bos=True,
        settings=CaptureSettings(**settings),
        device=torch.device("cpu"),
        progress=False,
    )


@pytest.fixture(scope="module")
def captured(tokens):
    loaded = load_model("planted", {"source": "planted", "recipe": "basic"})
    layers, states = run_capture(loaded, tokens, batch_size=5, top_k=4)
    return loaded, layers, states


def expected_fires(tokens: np.ndarray) -> np.ndarray:
    """[L, n_seq, seq_len, N] firing predicate of every planted neuron, BOS masked."""
    fires = np.zeros((RECIPE.n_layers, *tokens.shape, RECIPE.n_neurons), dtype=bool)
    for neuron in RECIPE.all_neurons():
        fires[neuron.layer, :, :, neuron.neuron] = neuron.fires(tokens)
    fires[:, :, 0, :] = False
    return fires


def test_fire_counts_match_construction(captured, tokens):
    _, layers, states = captured
    assert layers == tuple(range(RECIPE.n_layers))
    expected = expected_fires(tokens)
    np.testing.assert_array_equal(states["fire_count"]["counts"], expected.sum(axis=(1, 2)))
    np.testing.assert_array_equal(states["fire_count"]["tokens"], [N_SEQ * (SEQ_LEN - 1)] * RECIPE.n_layers)


def test_dead_set_is_exactly_the_never_firing_neurons(captured):
    loaded, layers, states = captured
    attrs = {"layers": list(layers), "n_neurons": RECIPE.n_neurons}
    table = neuron_table("planted", attrs, states)
    dead = {(r["layer"], r["neuron"]) for r in table.filter(table["dead"]).iter_rows(named=True)}
    planted_dead = {(n.layer, n.neuron) for n in RECIPE.all_neurons() if n.kind == "never"}
    assert dead == planted_dead
    always = table.filter((table["layer"] == 0) & (table["neuron"] == 0))
    assert always["fire_freq"].item() == 1.0
    layers_frame = layer_table(table, RECIPE.n_layers)
    expected_dead_frac = [
        sum(n.kind == "never" for n in RECIPE.all_neurons() if n.layer == layer) / RECIPE.n_neurons
        for layer in range(RECIPE.n_layers)
    ]
    np.testing.assert_allclose(layers_frame["dead_frac"].to_numpy(), expected_dead_frac)
    np.testing.assert_allclose(layers_frame["rel_depth"].to_numpy(), np.arange(RECIPE.n_layers) / RECIPE.n_layers)


def test_position_counts_match_planted_ranges(captured, tokens):
    _, _, states = captured
    counts = states["position_fire_count"]["counts"]
    np.testing.assert_array_equal(counts, expected_fires(tokens).sum(axis=1))
    # the 10..19 neuron fires at every sequence exactly there, nowhere else
    assert counts[0, 10:20, 3].tolist() == [N_SEQ] * 10
    assert counts[0, :10, 3].sum() == 0 and counts[0, 20:, 3].sum() == 0
    np.testing.assert_array_equal(states["position_fire_count"]["tokens"], [0] + [N_SEQ] * (SEQ_LEN - 1))


def test_token_neurons_fire_only_on_their_tokens(captured, tokens):
    _, _, states = captured
    slot, token, neuron = decode_token_fire_keys(
        states["token_fire_count"]["keys"], RECIPE.vocab_size, RECIPE.n_neurons
    )
    counts = states["token_fire_count"]["counts"]
    occurrences = np.bincount(tokens[:, 1:].reshape(-1), minlength=RECIPE.vocab_size)
    on_token_5 = (slot == 0) & (neuron == 1)
    assert token[on_token_5].tolist() == [5]
    assert counts[on_token_5].tolist() == [occurrences[5]]
    on_7_8 = (slot == 0) & (neuron == 2)
    assert token[on_7_8].tolist() == [7, 8]
    assert counts[on_7_8].tolist() == [occurrences[7], occurrences[8]]
    np.testing.assert_array_equal(states["token_count"]["counts"], occurrences)


def test_top_k_points_at_firing_tokens(captured, tokens):
    _, _, states = captured
    seq, pos = states["top_k"]["seq"][0, :, 1], states["top_k"]["pos"][0, :, 1]
    assert (tokens[seq, pos] == 5).all()
    assert (states["top_k"]["values"][0, :, 1] > 0).all()


def test_capture_stops_after_last_analysed_layer(tokens):
    loaded = load_model("planted", {"source": "planted", "recipe": "basic"})
    calls: list[int] = []
    later = loaded.adapter.neuron_input_module(RECIPE.n_layers - 1)
    handle = later.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        layers, states = run_capture(loaded, tokens, layers=(0, 1), batch_size=8)
    finally:
        handle.remove()
    assert layers == (0, 1)
    assert calls == []
    assert states["fire_count"]["counts"].shape == (2, RECIPE.n_neurons)


def test_bad_capture_inputs_are_refused(tokens):
    loaded = load_model("planted", {"source": "planted", "recipe": "basic"})
    with pytest.raises(ValueError, match="exceed model 'planted' context of 64"):
        run_capture(loaded, np.zeros((2, 65), dtype=np.int64))
    with pytest.raises(ValueError, match="outside model 'planted' vocabulary"):
        run_capture(loaded, np.full((2, 8), RECIPE.vocab_size))
    with pytest.raises(ValueError, match="capture.layers"):
        run_capture(loaded, tokens, layers=(7,))


def test_non_finite_activations_are_reported_not_counted(tokens):
    loaded = load_model("planted", {"source": "planted", "recipe": "basic"})
    with torch.no_grad():
        loaded.model.model.decoder.layers[1].fc1.bias[2] = torch.inf
    with pytest.raises(FloatingPointError, match="model 'planted' layer 1: non-finite activations"):
        run_capture(loaded, tokens)
