"""Entropy and attention-deactivation neurons: interventions against direct computations, the planted ones recovered."""

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
    found = entropy_neurons(entropy_curves(model, adapter, tokens, last, candidates, random, settings.values, batch_size=8), settings.min_change)
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


# ----------------------------------------------------------------------------- attention deactivation


def _rotary_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Pythia-like GPT-NeoX (a quarter of each head rotated) and Llama with grouped queries, eager attention."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    neox = GPTNeoXConfig(vocab_size=50, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
                         rotary_pct=0.25, attn_implementation="eager")
    llama = LlamaConfig(vocab_size=50, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=32, attn_implementation="eager")
    return GPTNeoXForCausalLM(neox).eval(), LlamaForCausalLM(llama).eval()


def test_manual_attention_to_bos_equals_the_models():
    """The path ablation recomputes a head's attention from its queries and keys: equal to the model's own
    attention weights (eager attention) for OPT, GPT-2, and rotary GPT-NeoX and Llama."""
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

    from neuron_census.analyses.attention import _bos_attention, _input_hooks

    torch.manual_seed(0)
    models = (
        OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, attn_implementation="eager")),
        GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, attn_implementation="eager")),
        *_rotary_models(),
    )
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    for model in models:
        model.eval()
        adapter = adapter_for(model, name="m")
        seen: dict[int, torch.Tensor] = {}
        hooks = _input_hooks({1: adapter.attention_norm(1)}, seen)
        with torch.no_grad():
            attentions = model(input_ids=tokens, output_attentions=True).attentions
        for hook in hooks:
            hook.remove()
        for head in range(4):
            np.testing.assert_allclose(_bos_attention(adapter, 1, head, seen[1], seen[1]), attentions[1][:, head, 1:, 0].numpy(), atol=1e-6)


def test_scores_equal_a_direct_computation():
    """w_out^T W_Q^h k_BOS^h / sqrt(d_head) with the norm's centring and gain, from the model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from neuron_census.analyses.attention import bos_keys, deactivation_scores

    torch.manual_seed(2)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_inner=16, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.ln_1.weight.uniform_(0.5, 1.5)
    adapter = adapter_for(model, name="m")
    keys = bos_keys(model, adapter, 0)
    scores = deactivation_scores(adapter, keys, 9)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[0]]), output_hidden_states=True).hidden_states  # block inputs
        expected = np.full((2, 16), -np.inf)
        for layer in range(2):
            w_out = model.transformer.h[layer].mlp.c_proj.weight  # [16, 32]: rows are value vectors
            for later in range(layer + 1, 3):
                block = model.transformer.h[later]
                qkv_w, qkv_b = block.attn.c_attn.weight, block.attn.c_attn.bias  # [32, 96]
                key = block.ln_1(hidden[later][0, 0]) @ qkv_w[:, 32:64] + qkv_b[32:64]
                passed = (w_out - w_out.mean(dim=1, keepdim=True)) * block.ln_1.weight
                for head in range(4):
                    cols = slice(8 * head, 8 * head + 8)
                    score = (passed @ qkv_w[:, cols]) @ key[cols] / 8**0.5
                    expected[layer] = np.maximum(expected[layer], score.numpy())
    np.testing.assert_allclose(scores.sort("layer", "neuron")["max_score"].to_numpy(), expected.reshape(-1), rtol=1e-4, atol=1e-6)


def test_rotary_scores_are_the_mean_over_query_positions():
    """A rotary model's score: the mean over query positions p = 1..T-1 of (R_p W_Q^h w_out) . k_BOS^h /
    sqrt(d_head), R_p rotating the head's first dimensions by p * inv_freq (rotate-half pairs), by hand."""
    from neuron_census.analyses.attention import bos_keys, deactivation_scores

    torch.manual_seed(3)
    for model in _rotary_models():
        adapter = adapter_for(model, name="m")
        keys = bos_keys(model, adapter, 0)
        seq_len = 7
        scores = deactivation_scores(adapter, keys, seq_len).sort("layer", "neuron")
        inv_freq = (model.gpt_neox if hasattr(model, "gpt_neox") else model.model).rotary_emb.inv_freq.double()
        half = len(inv_freq)

        def rotated(q: torch.Tensor, p: int) -> torch.Tensor:  # [..., d_head]
            cos, sin = torch.cos(p * inv_freq), torch.sin(p * inv_freq)
            first, second = q[..., :half], q[..., half : 2 * half]
            return torch.cat([first * cos - second * sin, second * cos + first * sin, q[..., 2 * half :]], dim=-1)

        expected = np.full((2, 32), -np.inf)
        with torch.no_grad():
            for layer in range(2):
                w_out = adapter.value_vectors(layer).double()
                for later in range(layer + 1, 3):
                    norm = adapter.attention_norm(later)
                    passed = w_out if adapter.rms_norm else w_out - w_out.mean(dim=1, keepdim=True)
                    passed = passed * norm.weight.double()
                    w_q = adapter.query_key_weights(later)[0].double()  # [H, d_head, d]
                    for head in range(4):
                        query = passed @ w_q[head].T  # [N, d_head]
                        key = keys[later][head].double()
                        score = torch.stack([rotated(query, p) @ key for p in range(1, seq_len)]).mean(dim=0) / w_q.shape[1] ** 0.5
                        expected[layer] = np.maximum(expected[layer], score.numpy())
        np.testing.assert_allclose(scores["max_score"].to_numpy(), expected.reshape(-1), rtol=1e-4, atol=1e-6)


def test_planted_deactivation_neuron_is_recovered_exactly(family, tokens):
    """Precision = recall = 1: the planted neuron is the only one that scores above 0 and its path to the
    head's query carries the head's attention to BOS."""
    from neuron_census.analyses.attention import bos_keys, deactivation_scores, path_ablation, top_pairs

    model = family.models["a"]
    adapter = adapter_for(model, name="a")
    pairs = top_pairs(deactivation_scores(adapter, bos_keys(model, adapter, 0), tokens.shape[1]), 8)
    found = path_ablation(model, adapter, tokens, pairs, batch_size=8)
    assert [tuple(row) for row in found.filter("deactivates").select("layer", "neuron", "head_layer", "head").iter_rows()] == [family.deactivation]
    row = found.row(0, named=True)
    assert row["bos_attention"] > row["bos_attention_ablated"] + 0.1


def test_attention_figure_draws_scores_and_ablations():
    from neuron_census.plots.roles import plot_attention_deactivation

    scores = pl.DataFrame({"model": ["m"] * 4, "layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "max_score": [0.1, 0.5, 0.2, 0.3]})
    paths = pl.DataFrame(
        {"model": ["m"], "layer": [0], "neuron": [1], "head_layer": [1], "head": [2], "score": [0.5], "bos_attention": [0.6],
         "bos_attention_ablated": [0.2], "deactivates": [True]}
    )
    fig = plot_attention_deactivation({"attention_scores": scores, "attention_paths": paths}, {})
    left, right = fig.axes
    assert {tuple(line.get_ydata()) for line in left.get_lines()} >= {(0.5, 0.3)}
    assert [label.get_text() for label in right.get_yticklabels()] == ["m L0 N1 -> head 1.2 *"]
    assert sorted(bar.get_width() for bar in right.patches) == [0.2, 0.6]
