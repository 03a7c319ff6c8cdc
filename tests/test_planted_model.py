"""Planted models must fire exactly as their neurons' predicates say, and the designed data must show every role."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from neuron_census.models.loading import load_model
from neuron_census.testing.planted import (
    CENSUS_HALF,
    CENSUS_RARE,
    CENSUS_WORDS,
    PlantedNeuron,
    PlantedRecipe,
    bigram_neuron,
    build_planted_model,
    census_tokens,
    get_recipe,
    token_neuron,
)

RECIPE_NAMES = ("basic", "census", "probing")
SEEDS = (0, 1, 2)
MARGIN = 0.5  # every pre-activation is at least this far from 0 (float noise is ~1e-4)
CENSUS = get_recipe("census")


def oscillating(positions: np.ndarray) -> np.ndarray:
    return (positions // 4) % 2 == 0


@cache
def model(name: str):
    return build_planted_model(name)


def random_tokens(recipe: PlantedRecipe, seed: int) -> np.ndarray:
    """Any ids at all, specials included: the predicates hold everywhere."""
    return np.random.default_rng(seed).integers(0, recipe.vocab_size, size=(12, recipe.max_positions))


def token_data(recipe: PlantedRecipe, data: str | int) -> np.ndarray:
    return census_tokens(recipe) if data == "designed" else random_tokens(recipe, data)


def pre_activations(name: str, tokens: np.ndarray) -> np.ndarray:
    """fc1 outputs [L, n_seq, seq_len, N] of a forward pass."""
    layers = model(name).model.decoder.layers
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.fc1.register_forward_hook(lambda _m, _i, out, k=k: outputs.__setitem__(k, out.detach()))
        for k, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(name)(torch.from_numpy(tokens))
    finally:
        for handle in handles:
            handle.remove()
    return np.stack([outputs[k].reshape(*tokens.shape, -1).numpy() for k in range(len(layers))])


def predicted_fires(recipe: PlantedRecipe, tokens: np.ndarray) -> np.ndarray:
    fires = np.zeros((recipe.n_layers, *tokens.shape, recipe.n_neurons), dtype=bool)
    for neuron in recipe.all_neurons():
        fires[neuron.layer, ..., neuron.neuron] = neuron.fires(tokens)
    return fires


def loop_fires(neuron: PlantedNeuron, tokens: np.ndarray) -> np.ndarray:
    """The additive predicate one place at a time."""
    weights = [dict(neuron.token_weights), dict(neuron.position_weights), dict(neuron.previous_weights)]
    out = np.zeros(tokens.shape, dtype=bool)
    for s in range(tokens.shape[0]):
        for p in range(tokens.shape[1]):
            previous = tokens[s, p - 1] if p > 0 else tokens[s, 0]
            keys = (tokens[s, p], p, previous)
            out[s, p] = sum(w.get(int(k), 0.0) for w, k in zip(weights, keys)) > neuron.threshold
    return out


def rates(neuron: PlantedNeuron, tokens: np.ndarray) -> np.ndarray:
    """Firing rate per position 1.. (BOS excluded)."""
    return neuron.fires(tokens)[:, 1:].mean(axis=0)


def census_neuron(layer: int, neuron: int) -> PlantedNeuron:
    return CENSUS.all_neurons()[layer * CENSUS.n_neurons + neuron]


# ---- the model computes the predicates -----------------------------------------------------------


@pytest.mark.parametrize("data", ["designed", *SEEDS])
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_fc1_sign_is_the_planted_predicate(name: str, data: str | int):
    recipe = get_recipe(name)
    tokens = token_data(recipe, data)
    pre = pre_activations(name, tokens)
    np.testing.assert_array_equal(pre > 0, predicted_fires(recipe, tokens))
    assert np.abs(pre).min() > MARGIN


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_fires_is_the_additive_predicate(name: str):
    recipe = get_recipe(name)
    tokens = random_tokens(recipe, 5)[:3]
    for neuron in recipe.all_neurons():
        np.testing.assert_array_equal(neuron.fires(tokens), loop_fires(neuron, tokens))


def census_rules() -> dict[tuple[int, int], object]:
    """The census predicates as specified, on (token, position, previous token) arrays (graded ones aside)."""
    half, rare = np.array(CENSUS_HALF), CENSUS_RARE
    return {
        (0, 0): lambda t, p, v: np.ones_like(t, dtype=bool),
        (0, 1): lambda t, p, v: t == 5,
        (0, 2): lambda t, p, v: np.isin(t, [7, 8]),
        (0, 3): lambda t, p, v: (v == 3) & (t == 4),
        (0, 4): lambda t, p, v: oscillating(p),
        (0, 5): lambda t, p, v: p < 24,
        (0, 6): lambda t, p, v: (p >= 40) & np.isin(t, half),
        (0, 8): lambda t, p, v: (t == 30) & (p % 2 == 0),
        (1, 0): lambda t, p, v: t == 12,
        (1, 1): lambda t, p, v: t == 5,
        (1, 2): lambda t, p, v: (v == 10) & (t == 11),
        (1, 3): lambda t, p, v: oscillating(p) | (t == rare),
        (1, 4): lambda t, p, v: (p < 24) | (t == rare),
        (1, 5): lambda t, p, v: ((p >= 40) & np.isin(t, half)) | (t == rare),
        (1, 7): lambda t, p, v: np.ones_like(t, dtype=bool),
        (2, 0): lambda t, p, v: t == 20,
        (2, 1): lambda t, p, v: np.isin(t, [21, 22]),
    }


@pytest.mark.parametrize("data", ["designed", 3])
def test_census_predicates_are_the_specified_ones(data: str | int):
    tokens = token_data(CENSUS, data)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    previous = np.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
    rules, graded = census_rules(), {(0, 7), (1, 6)}
    for neuron in CENSUS.all_neurons():
        key = (neuron.layer, neuron.neuron)
        if key in graded:
            continue
        rule = rules.get(key, lambda t, p, v: np.zeros_like(t, dtype=bool))
        np.testing.assert_array_equal(neuron.fires(tokens), rule(tokens, positions, previous), err_msg=str(key))
        assert (neuron.role == "dead") == (key not in rules)


# ---- value vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("apply_final_norm", [False, True])
def test_value_vectors_rank_promoted_on_top_and_suppressed_at_the_bottom(apply_final_norm: bool):
    loaded = load_model("p", {"source": "planted", "recipe": "census"})
    planted = [n for n in CENSUS.all_neurons() if n.promotes or n.suppresses]
    assert len(planted) == 6
    for layer in range(CENSUS.n_layers):
        values = loaded.adapter.value_vectors(layer)
        logits = loaded.adapter.project_to_vocab(values, apply_final_norm=apply_final_norm).numpy()
        for neuron in (n for n in CENSUS.all_neurons() if n.layer == layer):
            row = logits[neuron.neuron]
            if not (neuron.promotes or neuron.suppresses):
                assert not values[neuron.neuron].any()
                continue
            others = np.setdiff1d(np.arange(CENSUS.vocab_size), [*neuron.promotes, *neuron.suppresses])
            if neuron.promotes:
                assert row[list(neuron.promotes)].min() > row[others].max() + 1e-6
            if neuron.suppresses:
                assert row[list(neuron.suppresses)].max() < row[others].min() - 1e-6


def test_basic_has_no_value_vectors_and_no_head():
    loaded = load_model("p", {"source": "planted", "recipe": "basic"})
    assert all(not loaded.adapter.value_vectors(layer).any() for layer in range(3))
    assert loaded.adapter.d_model == 96
    assert not any(layer.self_attn.out_proj.weight.any() for layer in loaded.adapter.decoder_layers())


# ---- designed data --------------------------------------------------------------------------------


def test_census_tokens_design():
    tokens = census_tokens(CENSUS)
    assert tokens.shape == (80, 64)
    np.testing.assert_array_equal(tokens, census_tokens(get_recipe("census")))
    assert (tokens[:, 0] == 0).all()
    words = np.array(CENSUS_WORDS)
    assert len(set(CENSUS_WORDS)) == 40 and len(set(CENSUS_HALF)) == 20 and set(CENSUS_HALF) <= set(CENSUS_WORDS)
    for block in (tokens[:40], tokens[40:]):
        for p in range(1, 64):
            np.testing.assert_array_equal(np.sort(block[:, p]), np.sort(words))
    triggers = {t for n in CENSUS.neurons for t in (*n.tokens, *(t for b in n.bigrams for t in b))}
    assert triggers <= set(CENSUS_WORDS)


def test_census_tokens_of_basic_use_all_its_words():
    tokens = census_tokens(get_recipe("basic"))
    assert tokens.shape == (60, 64)
    for p in range(1, 64):
        assert np.bincount(tokens[:, p], minlength=32).tolist() == [0, 0] + [2] * 30


def test_strong_positional_rates_are_exactly_0_or_1_where_planted():
    tokens, p = census_tokens(CENSUS), np.arange(1, 64)
    np.testing.assert_array_equal(rates(census_neuron(0, 4), tokens), oscillating(p).astype(float))
    np.testing.assert_array_equal(rates(census_neuron(0, 5), tokens), (p < 24).astype(float))
    np.testing.assert_array_equal(rates(census_neuron(0, 6), tokens), np.where(p >= 40, 0.5, 0.0))


def test_weak_positional_rates_stop_at_the_rare_word():
    tokens, p = census_tokens(CENSUS), np.arange(1, 64)
    assert (tokens[:, 1:] == CENSUS_RARE).sum(axis=0).tolist() == [2] * 63
    np.testing.assert_array_equal(rates(census_neuron(1, 3), tokens), np.where(oscillating(p), 1.0, 0.025))
    np.testing.assert_array_equal(rates(census_neuron(1, 4), tokens), np.where(p < 24, 1.0, 0.025))
    np.testing.assert_array_equal(rates(census_neuron(1, 5), tokens), np.where(p >= 40, 0.5, 0.025))
    for layer, neuron in [(0, 4), (0, 5), (0, 6), (1, 3), (1, 4), (1, 5)]:
        planted = census_neuron(layer, neuron)
        assert (rates(planted, tokens).min() == 0) == planted.positional_strong


def test_graded_pair_is_smooth_and_jagged():
    tokens = census_tokens(CENSUS)
    smooth, jagged = rates(census_neuron(0, 7), tokens), rates(census_neuron(1, 6), tokens)
    for rate in (smooth, jagged):
        assert rate.min() == pytest.approx(0.1) and rate.max() == pytest.approx(0.9)
    np.testing.assert_array_equal(np.sort(smooth), np.sort(jagged))
    steps, jumps = np.diff(smooth), np.abs(np.diff(jagged))
    assert (steps >= 0).all() and steps.max() <= 1 / 40 + 1e-12
    assert jumps.mean() > 0.1 and (np.diff(jagged) < 0).any()


def occurrences_and_fires(neuron: PlantedNeuron, tokens: np.ndarray, token_set) -> tuple[np.ndarray, np.ndarray]:
    """Where (p >= 1) a token of `token_set` occurs, and where the neuron fires."""
    return np.isin(tokens, list(token_set))[:, 1:], neuron.fires(tokens)[:, 1:]


def test_token_detectors_fire_on_every_occurrence_and_nowhere_else():
    tokens = census_tokens(CENSUS)
    detectors = [n for n in CENSUS.all_neurons() if n.role == "token_detector"]
    assert len(detectors) == 6
    for neuron in detectors:
        occurs, fires = occurrences_and_fires(neuron, tokens, neuron.tokens)
        assert occurs.any()
        np.testing.assert_array_equal(fires, occurs)


def test_bigram_detectors_fire_on_their_bigram_only():
    tokens = census_tokens(CENSUS)
    bigram_detectors = [n for n in CENSUS.all_neurons() if n.role == "bigram_detector"]
    assert [n.bigrams for n in bigram_detectors] == [((3, 4),), ((10, 11),)]
    for neuron in bigram_detectors:
        (previous, current), = neuron.bigrams
        bigram = np.zeros(tokens.shape, dtype=bool)
        for s in range(tokens.shape[0]):
            for p in range(1, tokens.shape[1]):
                bigram[s, p] = tokens[s, p - 1] == previous and tokens[s, p] == current
        occurs, fires = occurrences_and_fires(neuron, tokens, [current])
        assert bigram.any()
        np.testing.assert_array_equal(fires, bigram[:, 1:])
        assert 0.4 < fires[occurs].mean() < 0.6  # first block only: not a detector of `current`


def test_not_detector_fires_on_half_of_its_token():
    tokens = census_tokens(CENSUS)
    neuron = census_neuron(0, 8)
    assert neuron.role == "not_detector"
    occurs, fires = occurrences_and_fires(neuron, tokens, neuron.tokens)
    assert not (fires & ~occurs).any()
    assert fires[occurs].mean() == pytest.approx(31 / 63)


def test_non_positional_rates_do_not_depend_on_position():
    tokens = census_tokens(CENSUS)
    steady = [n for n in CENSUS.all_neurons() if n.role in ("token_detector", "always")]
    assert len(steady) == 8
    for neuron in steady:
        rate = rates(neuron, tokens)
        assert rate[0] > 0 and (rate == rate[0]).all()


def test_census_roles():
    counts = {}
    for neuron in CENSUS.all_neurons():
        counts[neuron.role] = counts.get(neuron.role, 0) + 1
    assert counts == {
        "always": 2, "token_detector": 6, "bigram_detector": 2, "positional": 8, "not_detector": 1, "dead": 29
    }
    positional = {
        (n.layer, n.neuron): (n.positional_type, n.positional_strong)
        for n in CENSUS.all_neurons()
        if n.role == "positional"
    }
    assert positional == {
        (0, 4): ("oscillatory", True), (0, 5): ("both_extremes", True), (0, 6): ("one_extreme", True),
        (0, 7): ("other", True), (1, 3): ("oscillatory", False), (1, 4): ("both_extremes", False),
        (1, 5): ("one_extreme", False), (1, 6): ("other", False),
    }


# ---- recipe checks --------------------------------------------------------------------------------


def test_bad_recipes_are_refused():
    sizes = {"vocab_size": 16, "max_positions": 8, "n_layers": 1, "n_neurons": 2}
    with pytest.raises(ValueError, match="no previous-token head"):
        PlantedRecipe(**sizes, neurons=(bigram_neuron(0, 0, 3, 4),))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        PlantedRecipe(**sizes, neurons=(token_neuron(0, 0, (16,)),))
    with pytest.raises(ValueError, match="outside 1 layers"):
        PlantedRecipe(**sizes, neurons=(token_neuron(0, 2, (3,)),))
    with pytest.raises(ValueError, match="positional_type"):
        PlantedNeuron(0, 0, role="positional")
    with pytest.raises(ValueError, match="positional_type"):
        PlantedNeuron(0, 0, role="always", positional_strong=True)
    with pytest.raises(ValueError, match="role"):
        PlantedNeuron(0, 0, role="detector")
    with pytest.raises(ValueError, match="'dead' with a 'tokens' predicate"):
        token_neuron(0, 0, (3,), role="dead")
    with pytest.raises(ValueError, match="'token_detector' with a 'never' predicate"):
        PlantedNeuron(0, 0, role="token_detector")
    with pytest.raises(ValueError, match="coprime"):
        census_tokens(PlantedRecipe(**sizes, design_words=tuple(range(2, 16))))
