"""Paired capture: several models over the same tokens in lockstep, seen together by one accumulator."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from strategy_cases import SPECS, sample_tokens

from neuron_census.capture.engine import PairedModel, capture_paired
from neuron_census.capture.placement import Placement
from neuron_census.models.loading import load_model


class Recorder:
    """A test accumulator: every model's activations of every (layer, batch), as they come."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, dict[str, np.ndarray]]] = []

    def update(self, item) -> None:
        self.items.append((item.layer, item.batch.index, {name: acts.cpu().numpy() for name, acts in item.acts.items()}))


def permuted_copy(model: torch.nn.Module, adapter, order: torch.Tensor) -> torch.nn.Module:
    """The same function with every layer's FFN neurons renumbered: fc1 rows and fc2 columns permuted."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer in twin.model.decoder.layers:
            layer.fc1.weight.copy_(layer.fc1.weight[order])
            layer.fc1.bias.copy_(layer.fc1.bias[order])
            layer.fc2.weight.copy_(layer.fc2.weight[:, order])
    return twin


@pytest.mark.parametrize("strategy", ["resident", "layerwise"])
def test_a_model_paired_with_itself_and_a_permuted_copy(strategy, tmp_path):
    """Paired with itself: identical activations; with a neuron-permuted copy (the same function): the
    activations permuted, per (layer, batch), in the order the strategy runs them."""
    placement = Placement(strategy=strategy)
    loaded = load_model("m", SPECS["opt-125m"], placement=placement)
    twin = load_model("m", SPECS["opt-125m"], placement=placement)
    order = torch.randperm(loaded.adapter.n_neurons, generator=torch.Generator().manual_seed(0))
    permuted = permuted_copy(twin.model, twin.adapter, order)
    from neuron_census.models.adapters import adapter_for

    models = {
        "a": PairedModel(loaded.model, loaded.adapter, "t"),
        "again": PairedModel(loaded.model, loaded.adapter, "t"),
        "permuted": PairedModel(permuted, adapter_for(permuted), "t"),
    }
    tokens = sample_tokens(loaded.adapter.vocab_size)  # 7 rows in batches of 3
    recorder = Recorder()
    capture_paired(
        models, tokens, [recorder], layers=(0, 2), first_seq_id=0, has_bos=True, batch_size=3,
        device=torch.device("cpu"), placement=placement, offload_dir=tmp_path,
    )
    steps = [(layer, batch) for layer, batch, _ in recorder.items]
    if strategy == "resident":
        assert steps == [(layer, batch) for batch in range(3) for layer in (0, 2)]
    else:
        assert steps == [(layer, batch) for layer in (0, 2) for batch in range(3)]
    for _, batch, acts in recorder.items:
        assert acts["a"].shape == (3 if batch < 2 else 1, 24, loaded.adapter.n_neurons)
        np.testing.assert_array_equal(acts["again"], acts["a"])
        np.testing.assert_allclose(acts["permuted"], acts["a"][..., order.numpy()], rtol=1e-5, atol=1e-5)
        assert (acts["a"] > 0).any()


def test_models_of_two_tokenizers_are_refused():
    loaded = load_model("m", SPECS["opt-125m"])
    models = {"first": PairedModel(loaded.model, loaded.adapter, "t1"), "second": PairedModel(loaded.model, loaded.adapter, "t2")}
    with pytest.raises(ValueError, match="models 'first' and 'second' have different tokenizers"):
        capture_paired(
            models, sample_tokens(100), [], layers=None, first_seq_id=0, has_bos=True, batch_size=3, device=torch.device("cpu")
        )


def test_paired_capture_hands_out_pre_activations_when_asked():
    """`read_preactivation`: each item's preacts are the input of the nonlinearity (ReLU(preacts) = acts)."""
    loaded = load_model("m", SPECS["opt-125m"])
    seen = []

    class Both:
        def update(self, item) -> None:
            seen.append((item.acts["m"].clone(), item.preacts["m"].clone()))

    capture_paired(
        {"m": PairedModel(loaded.model, loaded.adapter, "t")}, sample_tokens(loaded.adapter.vocab_size), [Both()],
        layers=(1,), first_seq_id=0, has_bos=True, batch_size=4, device=torch.device("cpu"), read_preactivation=True,
    )
    assert len(seen) == 2
    for acts, preacts in seen:
        assert (preacts < 0).any()
        torch.testing.assert_close(torch.relu(preacts), acts)
