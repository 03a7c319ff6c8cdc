"""Entropy neurons: the intervention curves against a direct computation, and the planted one recovered."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.analyses.entropy import EntropySettings, chosen_neurons, entropy_curves, entropy_neurons
from neuron_census.analyses.weights import weight_columns
from neuron_census.models.adapters import adapter_for
from neuron_census.testing.planted import designed_tokens
from neuron_census.testing.planted_seeds import FAMILY_LAYERS, FAMILY_POSITIONS, FAMILY_VOCAB, build_seed_family


@pytest.fixture(scope="module")
def family():
    return build_seed_family(3, n_layers=FAMILY_LAYERS, vocab=FAMILY_VOCAB, max_positions=FAMILY_POSITIONS)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.from_numpy(designed_tokens("census").astype(np.int64))[:6]


def test_curves_equal_a_direct_computation(family, tokens):
    """Entropy, loss and final-norm scale of the unedited model and of one neuron set to a value, against
    the model's own logits and hand-made edits; holding the norm's scale leaves only the direct effect."""
    model = family.models["a"]
    adapter = adapter_for(model, name="a")
    layer, neuron = family.entropy
    curves = entropy_curves(model, adapter, tokens, layer, [neuron], [], [0.0, 4.0], batch_size=4)
    seen: list[torch.Tensor] = []
    norm = model.model.decoder.final_layer_norm
    hook = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    fc2 = model.model.decoder.layers[layer].fc2

    def direct(value: float | None) -> tuple[float, float, float]:
        seen.clear()
        edit = None
        if value is not None:
            def edit_hook(_m, args):
                x = args[0].clone()
                x[..., neuron] = value
                return (x,)
            edit = fc2.register_forward_pre_hook(edit_hook)
        with torch.no_grad():
            logits = model(input_ids=tokens).logits[:, 1:-1].double()
        if edit is not None:
            edit.remove()
        log_p = torch.log_softmax(logits, -1)
        entropy = float(-(log_p.exp() * log_p).sum(-1).mean())
        loss = float(-log_p.gather(-1, tokens[:, 2:, None]).mean())
        x = seen[0][:, 1:-1].double()
        scale = float(torch.rsqrt(x.var(-1, unbiased=False) + norm.eps).mean())
        return entropy, loss, scale

    rows = {row["value"]: row for row in curves.iter_rows(named=True)}
    for value in (None, 0.0, 4.0):
        entropy, loss, scale = direct(value)
        assert rows[value]["entropy"] == pytest.approx(entropy, rel=1e-4)
        assert rows[value]["loss"] == pytest.approx(loss, rel=1e-4)
        assert rows[value]["norm_scale"] == pytest.approx(scale, rel=1e-4)
    hook.remove()
    # the planted neuron writes in the null space: holding the scale, nothing moves
    assert rows[4.0]["direct_entropy"] == pytest.approx(rows[None]["entropy"], abs=1e-5)
    assert rows[4.0]["entropy"] > rows[0.0]["entropy"] + 1.0


def test_planted_entropy_neuron_is_recovered_exactly(family, tokens):
    """Precision = recall = 1: of the last layer's candidates (the entropy neuron and the three vocabulary
    neurons, which write outside the null space) only the planted one is an entropy neuron; the prediction
    neuron moves the entropy too, but not through the final norm."""
    model = family.models["a"]
    adapter = adapter_for(model, name="a")
    settings = EntropySettings(candidates=4, random=3, values=(0.0, 3.0, 6.0))
    last = FAMILY_LAYERS - 1
    candidates, random = chosen_neurons(weight_columns(adapter, [last]), last, settings)
    assert candidates[0] == family.entropy[1] and set(candidates[1:]) == {n for (_, n) in family.vocab_roles}
    assert not set(random) & set(candidates) and len(random) == 3
    found = entropy_neurons(entropy_curves(model, adapter, tokens, last, candidates, random, settings.values), settings.min_change)
    assert found.filter("entropy_neuron")["neuron"].to_list() == [family.entropy[1]]
    assert found.filter("random")["entropy_change"].abs().max() == 0.0  # their value vectors are 0


def test_entropy_figure_marks_entropy_neurons():
    from neuron_census.plots.roles import plot_entropy_neurons

    rows = [{"model": "m", "layer": 2, "neuron": None, "random": None, "value": None, "entropy": 1.0, "loss": 2.0, "norm_scale": 3.0}]
    for neuron, random, slope in ((7, False, 0.5), (9, False, 0.0), (3, True, 0.01)):
        rows += [
            {"model": "m", "layer": 2, "neuron": neuron, "random": random, "value": v, "entropy": 1 + slope * v, "loss": 2.0, "norm_scale": 3.0}
            for v in (0.0, 2.0)
        ]
    curves = pl.DataFrame(rows)
    found = pl.DataFrame({"model": ["m", "m", "m"], "neuron": [7, 9, 3], "entropy_neuron": [True, False, False]})
    fig = plot_entropy_neurons({"entropy": curves, "entropy_neurons": found}, {})
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == ["m L2 N7 (entropy neuron)", "m L2 N9", "random neurons of the layer"]
    widths = {line.get_label(): line.get_linewidth() for line in fig.axes[0].get_lines()}
    assert widths["m L2 N7 (entropy neuron)"] > widths["m L2 N9"]
