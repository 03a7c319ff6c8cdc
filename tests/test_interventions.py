"""Writing hooks on FFN neurons must edit exactly the cells asked for, in a forward pass and in `generate`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from neuron_census.interventions import Intervention, apply_intervention, intervened
from neuron_census.models.adapters import adapter_for
from neuron_census.models.zoo import architecture_config
from neuron_census.testing.planted import build_planted_model

# census recipe: neuron 2/0 fires on token 20 and suppresses it; 0/0 always fires; 0/4 fires at positions 0-3, 8-11...
TOKENS = torch.tensor([[0, 5, 20, 12, 20, 7, 30, 9]])
LAST = 2  # last layer of the census model


def planted(dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return build_planted_model("census").to(dtype)


def tiny_llama() -> PreTrainedModel:
    """The zoo's Llama-style architecture (gated SiLU FFN, RMSNorm, RoPE) cut to 2 layers and tiny widths."""
    config = architecture_config("tinyllama-1.1b", n_layers=2)
    config.update({"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "head_dim": 8, "vocab_size": 96, "max_position_embeddings": 64})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@contextmanager
def recording(module: torch.nn.Module, what: str) -> Iterator[list[torch.Tensor]]:
    """Everything `module` reads ("input", after every pre-hook edit) or writes ("output") while open.

    A forward hook sees the input that forward ran on; its output only as edited by forward hooks
    registered before it, so outputs are recorded only on modules whose output no intervention edits.
    """
    seen: list[torch.Tensor] = []

    def record(_module: torch.nn.Module, args: tuple, out: torch.Tensor | tuple) -> None:
        tensor = args[0] if what == "input" else out
        seen.append((tensor[0] if isinstance(tensor, tuple) else tensor).detach().clone())

    handle = module.register_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def hook_count(model: torch.nn.Module) -> int:
    """Forward and forward-pre hooks on every module (the with_kwargs / always_call dicts only flag these)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def logits(model: PreTrainedModel, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    return model(tokens).logits


# ---- the pure core ---------------------------------------------------------------------------------


def test_apply_intervention_edits_only_the_named_cells_at_absolute_positions() -> None:
    x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    edit = Intervention(0, [1, 3], "add", torch.tensor([10.0, 20.0]), positions=[4, 6, 8, 20])
    out = apply_intervention(x, edit, offset=5)  # the window holds absolute positions 5..9
    expected = x.clone()
    for row in (1, 3):  # absolute 6 and 8
        expected[:, row, 1] += 10.0
        expected[:, row, 3] += 20.0
    assert torch.equal(out, expected)
    assert torch.equal(x, torch.arange(40, dtype=torch.float32).reshape(2, 5, 4))  # input untouched
    assert apply_intervention(x, edit, offset=30) is x  # no named position in the window
    scaled = apply_intervention(x, Intervention(0, [0, 2], "scale", torch.tensor([2.0, -0.5]), positions=[0]))
    expected = x.clone()
    expected[:, 0, 0] *= 2.0
    expected[:, 0, 2] *= -0.5
    assert torch.equal(scaled, expected)
    every = apply_intervention(x, Intervention(0, [0], "set", -1.0), offset=7)
    assert torch.equal(every[..., 0], torch.full((2, 5), -1.0)) and torch.equal(every[..., 1:], x[..., 1:])


# ---- 1. exact effect on the residual stream and the logits ------------------------------------------


def test_set_activation_moves_the_residual_by_the_value_vector_and_logits_through_the_final_norm() -> None:
    model = planted(torch.float64)
    adapter = adapter_for(model)
    decoder = model.model.decoder
    layer, neuron, position, value = LAST, 0, 2, 10.0
    with recording(decoder.layers[layer].fc2, "input") as acts, recording(decoder.layers[layer], "output") as outs:
        old_logits = logits(model)
        with intervened(model, [Intervention(layer, [neuron], "set", value, positions=[position])]):
            new_logits = logits(model)
    old_acts, new_acts = (a.reshape(TOKENS.shape[1], -1) for a in acts)  # OPT feeds fc2 [batch * seq, N]
    old_h, new_h = outs
    original = old_acts[position, neuron]
    assert 0.1 < original < value  # the planted neuron fires on token 20
    assert new_acts[position, neuron] == value

    value_vector = decoder.layers[layer].fc2.weight[:, neuron]  # float64 copy of adapter.value_vectors row
    torch.testing.assert_close(value_vector.float(), adapter.value_vectors(layer)[neuron])
    expected = torch.zeros_like(old_h)
    expected[0, position] = (value - original) * value_vector
    torch.testing.assert_close(new_h - old_h, expected, rtol=0, atol=1e-12)
    others = [p for p in range(TOKENS.shape[1]) if p != position]
    assert torch.equal(new_h[0, others], old_h[0, others])  # last layer: nothing else moves, bit for bit

    head = lambda h: model.lm_head(decoder.final_layer_norm(h))  # noqa: E731
    torch.testing.assert_close(new_logits - old_logits, head(new_h) - head(old_h), rtol=0, atol=1e-12)
    lens = adapter.project_to_vocab(new_h[0], apply_final_norm=True) - adapter.project_to_vocab(old_h[0], True)
    torch.testing.assert_close(lens, (new_logits - old_logits)[0].float(), rtol=0, atol=1e-5)
    assert torch.equal(new_logits[0, others], old_logits[0, others])
    assert int((new_logits - old_logits)[0, position].argmin()) == 20  # more of a neuron that suppresses 20


def test_set_preactivation_goes_through_the_relu() -> None:
    model = planted()
    fc2 = model.model.decoder.layers[LAST].fc2
    edits = [Intervention(LAST, [0, 5], "set", torch.tensor([2.5, -1.0]), positions=[2, 6], target="preactivation")]
    with recording(fc2, "input") as acts:
        logits(model)
        with intervened(model, edits):
            logits(model)
    old, new = (a.reshape(TOKENS.shape[1], -1) for a in acts)
    expected = old.clone()
    expected[[2, 6], 0] = 2.5
    expected[[2, 6], 5] = 0.0  # relu(-1)
    assert torch.equal(new, expected)


# ---- 2. scale by 0 is zeroing, and nothing else moves ----------------------------------------------------


def test_scale_by_zero_equals_set_zero_and_leaves_other_cells_bit_for_bit() -> None:
    model = planted()
    fc2 = model.model.decoder.layers[0].fc2
    neurons, positions = [1, 2], [1, 5]  # 0/1 fires on token 5 (position 1), 0/2 on token 7 (position 5)
    runs = {}
    with recording(fc2, "input") as acts:
        runs["base"] = logits(model)
        for op in ("scale", "set"):
            with intervened(model, [Intervention(0, neurons, op, 0.0, positions=positions)]):
                runs[op] = logits(model)
    base, scaled, zeroed = (a.reshape(TOKENS.shape[1], -1) for a in acts)
    assert base[1, 1] > 0.1 and base[5, 2] > 0.1
    assert torch.equal(scaled, zeroed)
    assert torch.equal(runs["scale"], runs["set"])
    edited = torch.zeros_like(base, dtype=torch.bool)
    edited[torch.tensor(positions)[:, None], torch.tensor(neurons)[None, :]] = True
    assert torch.all(scaled[edited] == 0)
    assert torch.equal(scaled[~edited], base[~edited])
    # attention after layer 0 writes nothing in the planted model, so only the edited positions' logits move
    others = [p for p in range(TOKENS.shape[1]) if p not in positions]
    assert torch.equal(runs["scale"][0, others], runs["base"][0, others])
    assert all(not torch.equal(runs["scale"][0, p], runs["base"][0, p]) for p in positions)


# ---- 3. pre-activation of a gated FFN -------------------------------------------------------------------


def test_add_to_gated_preactivation_changes_the_gate_output_by_exactly_the_value() -> None:
    model = tiny_llama()
    adapter = adapter_for(model)
    assert adapter.gated and adapter.n_neurons == 48
    mlp = adapter.decoder_layers()[1].mlp
    tokens = torch.tensor([[1, 17, 42, 5, 88, 23]])
    neurons, positions, value = [3, 7, 40], [1, 4], torch.tensor([0.5, -1.0, 2.0])
    edit = Intervention(1, neurons, "add", value, positions=positions, target="preactivation")
    with recording(mlp.act_fn, "input") as gates, recording(mlp.up_proj, "output") as ups, \
            recording(mlp.down_proj, "input") as acts:  # act_fn reads the (edited) gate_proj output
        logits(model, tokens)
        with intervened(model, [edit]):
            logits(model, tokens)
    old, new = gates
    rows, columns = torch.tensor(positions)[:, None], torch.tensor(neurons)[None, :]
    expected = old.clone()
    expected[0, rows, columns] = old[0, rows, columns] + value
    assert torch.equal(new, expected)  # exactly the added value there, bit for bit elsewhere
    assert torch.equal(ups[0], ups[1])  # the up projection is not the pre-activation
    torch.testing.assert_close(acts[1], torch.nn.functional.silu(new) * ups[1])
    changed = (acts[1] != acts[0])[0]
    assert changed.nonzero().tolist() == [[p, n] for p in positions for n in neurons]


# ---- 4. generation with the KV cache ------------------------------------------------------------------


GENERATION_CASES = {
    # OPT feeds its neurons flat [batch * seq, N]; the Llama-style model [batch, seq, N]
    "planted": (planted, Intervention(LAST, [0, 1], "set", 40.0, positions=[5])),
    "llama": (tiny_llama, Intervention(1, list(range(8)), "set", 5.0, positions=[5])),
}


@pytest.mark.parametrize("case", GENERATION_CASES)
def test_generate_edits_exactly_the_step_that_computes_the_position(case: str) -> None:
    build, edit = GENERATION_CASES[case]
    model = build()
    prompt = TOKENS[:, :4]  # step k computes position 3 + k; position 5 is step 2
    step = 5 - (prompt.shape[1] - 1)
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "use_cache": True,
                "output_logits": True, "return_dict_in_generate": True, "pad_token_id": 1}
    before = logits(model)
    hooks = hook_count(model)
    with torch.no_grad():
        base = model.generate(prompt, **settings)
        with intervened(model, [edit]):
            new = model.generate(prompt, **settings)
            by_forward = logits(model, new.sequences[:, :-1])  # the same intervention without a cache
        again = model.generate(prompt, **settings)
    assert len(new.logits) == len(base.logits) == 4
    for k in range(step):
        assert torch.equal(new.logits[k], base.logits[k]), f"step {k} (position {3 + k}) changed"
    assert (new.logits[step] - base.logits[step]).abs().max() > 1e-3
    # every step agrees with a cache-free forward pass: the edit landed at position 5 and nowhere else
    for k, step_logits in enumerate(new.logits):
        torch.testing.assert_close(step_logits, by_forward[:, 3 + k], rtol=0, atol=1e-5)
    assert hook_count(model) == hooks
    assert torch.equal(logits(model), before)
    assert torch.equal(again.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.logits, base.logits, strict=True))


# ---- 5. hooks go on exceptions too -------------------------------------------------------------------


def test_hooks_are_removed_after_an_exception_in_the_block() -> None:
    model = planted()
    before, hooks = logits(model), hook_count(model)
    edits = [Intervention(LAST, [0], "scale", 3.0), Intervention(0, [1], "add", 1.0, target="preactivation")]
    with pytest.raises(RuntimeError, match="boom"):
        with intervened(model, edits):
            assert hook_count(model) == hooks + 4  # two hooks for the position window, one per edit
            assert not torch.equal(logits(model), before)
            raise RuntimeError("boom")
    assert hook_count(model) == hooks
    assert torch.equal(logits(model), before)


# ---- 6. bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Intervention(0, [1], "multiply", 1.0), "unknown op 'multiply'"),
        (lambda: Intervention(0, [1], "set", 1.0, target="residual"), "unknown target 'residual'"),
        (lambda: Intervention(0, [1], "set", 1.0, positions=[2, -3]), "position -3 is negative"),
        (lambda: Intervention(0, [4, -2], "set", 1.0), "neuron -2 is negative"),
        (lambda: Intervention(-1, [0], "set", 1.0), "layer -1 is negative"),
        (lambda: Intervention(0, [1, 1], "set", 1.0), "neuron 1 is listed twice"),
        (lambda: Intervention(0, [1.5], "set", 1.0), "neuron must be an integer, got 1.5"),
        (lambda: Intervention(0, [1, 2], "set", torch.ones(3)), r"value of shape \[3\] does not match 2 neurons"),
    ],
)
def test_bad_specs_fail_naming_the_culprit(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (Intervention(3, [0], "set", 1.0), r"layer 3 is outside 0\.\.2 of model"),
        (Intervention(1, [2, 16], "set", 1.0), r"neuron 16 is outside 0\.\.15 of layer 1"),
    ],
)
def test_out_of_range_for_the_model_fails_before_any_hook(edit: Intervention, message: str) -> None:
    model = planted()
    hooks = hook_count(model)
    with pytest.raises(ValueError, match=message):
        with intervened(model, [Intervention(0, [0], "set", 1.0), edit]):
            pytest.fail("entered the block")
    assert hook_count(model) == hooks
