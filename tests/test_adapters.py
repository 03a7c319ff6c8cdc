"""FFN adapters on the real architectures (random weights): hook points, value vectors, vocabulary path."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from neuron_census.models.adapters import FFNAdapter, adapter_for
from neuron_census.models.zoo import ARCHITECTURES, HUB_IDS, build_random_model

# name -> (n_layers override, family, n_layers, n_neurons, d_model, vocab, context, activation, gated)
CASES: dict[str, tuple[Any, ...]] = {
    "opt-125m": (None, "opt", 12, 3072, 768, 50272, 2048, "relu", False),
    "opt-350m": (None, "opt", 24, 4096, 1024, 50272, 2048, "relu", False),
    "gpt2": (None, "gpt2", 12, 3072, 768, 50257, 1024, "gelu_new", False),
    "pythia-70m": (None, "gpt_neox", 6, 2048, 512, 50304, 2048, "gelu", False),
    "pythia-160m": (2, "gpt_neox", 2, 3072, 768, 50304, 2048, "gelu", False),
    "tinyllama-1.1b": (2, "llama", 2, 5632, 2048, 32000, 2048, "silu", True),
}

# Published total parameter counts: OPT paper / model cards (nominal), Pythia README (exact), Llama-2 and
# TinyLlama model cards.
PUBLISHED_PARAMS = {
    "opt-66b": 66e9,
    "opt-30b": 30e9,
    "opt-13b": 13e9,
    "opt-6.7b": 6.7e9,
    "pythia-6.9b": 6_857_302_016,
    "pythia-2.8b": 2_775_208_960,
    "pythia-1.4b": 1_414_647_808,
    "pythia-70m": 70_426_624,
    "llama-2-7b": 6.74e9,
    "tinyllama-1.1b": 1.1e9,
    "gpt2": 124e6,
    "gpt2-medium": 355e6,
    "opt-125m": 125e6,
}

TOKENS = torch.tensor([[3, 17, 250, 9, 1000, 42, 7], [11, 5, 900, 31, 4, 77, 123]])


def _perturb(model: PreTrainedModel, seed: int = 1) -> None:
    """Random biases and norm gains, so bias and norm handling is actually exercised (init leaves 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                base = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, PreTrainedModel, FFNAdapter]:
    name = request.param
    model = build_random_model(name, seed=0, n_layers=CASES[name][0])
    _perturb(model)
    return name, model, adapter_for(model)


# ---- hand-written FFN of each family, from the FFN's input norm ----------------------------------------


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight


def _gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))


def _gelu_erf(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def _ffn_by_hand(family: str, block: torch.nn.Module, model: PreTrainedModel) -> tuple[torch.nn.Module, Callable]:
    """(module whose forward input x feeds the FFN norm, x -> activations [..., N] by hand)."""
    if family == "opt":
        pre_ln = model.config.do_layer_norm_before
        norm = block.final_layer_norm if pre_ln else block.self_attn_layer_norm
        return norm, lambda x: torch.clamp(_layer_norm(x, norm) @ block.fc1.weight.T + block.fc1.bias, min=0)
    if family == "gpt2":
        mlp = block.mlp
        return block.ln_2, lambda x: _gelu_tanh(_layer_norm(x, block.ln_2) @ mlp.c_fc.weight + mlp.c_fc.bias)
    if family == "gpt_neox":
        norm, mlp = block.post_attention_layernorm, block.mlp
        return norm, lambda x: _gelu_erf(_layer_norm(x, norm) @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
    norm, mlp = block.post_attention_layernorm, block.mlp

    def gated(x: torch.Tensor) -> torch.Tensor:
        h = _rms_norm(x, norm)
        gate = h @ mlp.gate_proj.weight.T
        return gate * torch.sigmoid(gate) * (h @ mlp.up_proj.weight.T)

    return norm, gated


def _run_with_hooks(model: PreTrainedModel, hooks: list[tuple[torch.nn.Module, str, Callable]]) -> Any:
    handles = []
    for module, kind, fn in hooks:
        register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
        handles.append(register(fn))
    try:
        with torch.no_grad():
            return model(input_ids=TOKENS, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def test_shapes_match_the_published_config(case: tuple[str, PreTrainedModel, FFNAdapter]) -> None:
    name, _model, adapter = case
    _, family, n_layers, n_neurons, d_model, vocab, context, activation, gated = CASES[name]
    got = (adapter.family, adapter.n_layers, adapter.n_neurons, adapter.d_model, adapter.vocab_size)
    assert got == (family, n_layers, n_neurons, d_model, vocab)
    assert (adapter.context_length, adapter.activation, adapter.gated) == (context, activation, gated)
    assert adapter.value_vectors(0).shape == (n_neurons, d_model)
    assert adapter.value_vectors(0).dtype == torch.float32
    d_unembed = 512 if name == "opt-350m" else d_model
    assert adapter.unembedding().shape == (vocab, d_unembed)


def test_hook_receives_the_activation_recomputed_by_hand(case: tuple[str, PreTrainedModel, FFNAdapter]) -> None:
    _name, model, adapter = case
    layer = adapter.n_layers - 1
    norm_input, by_hand = _ffn_by_hand(adapter.family, adapter.decoder_layers()[layer], model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        (norm_input, "pre", lambda _m, args: seen.__setitem__("x", args[0])),
        (adapter.neuron_input_module(layer), "pre", lambda _m, args: seen.__setitem__("acts", args[0])),
    ]
    gate_module = adapter.gate_output_module(layer)
    if gate_module is not None:
        hooks.append((gate_module, "post", lambda _m, _args, out: seen.__setitem__("gate", out)))
    _run_with_hooks(model, hooks)
    n_tokens, n = TOKENS.numel(), adapter.n_neurons
    # OPT flattens tokens before fc1: [B*T, N]; the others keep [B, T, N]
    expected_shape = (n_tokens, n) if adapter.family == "opt" else (*TOKENS.shape, n)
    assert seen["acts"].shape == expected_shape
    expected = by_hand(seen["x"]).reshape(n_tokens, n)
    torch.testing.assert_close(seen["acts"].reshape(n_tokens, n), expected, rtol=1e-4, atol=1e-5)
    assert (seen["acts"] != 0).float().mean() > 0.3  # not a degenerate all-zero layer
    if adapter.gated:
        block = adapter.decoder_layers()[layer]
        gate = F.silu(_rms_norm(seen["x"], block.post_attention_layernorm) @ block.mlp.gate_proj.weight.T)
        torch.testing.assert_close(seen["gate"].reshape(n_tokens, n), gate.reshape(n_tokens, n), rtol=1e-4, atol=1e-5)
    else:
        assert gate_module is None


def test_value_vectors_rebuild_the_ffn_output(case: tuple[str, PreTrainedModel, FFNAdapter]) -> None:
    _name, model, adapter = case
    for layer in (0, adapter.n_layers - 1):
        projection = adapter.neuron_input_module(layer)
        seen: dict[str, torch.Tensor] = {}
        _run_with_hooks(
            model,
            [
                (projection, "pre", lambda _m, args: seen.__setitem__("acts", args[0])),
                (projection, "post", lambda _m, _args, out: seen.__setitem__("out", out)),
            ],
        )
        acts = seen["acts"].reshape(-1, adapter.n_neurons)
        out = seen["out"].reshape(-1, adapter.d_model)
        bias = projection.bias if projection.bias is not None else torch.zeros(adapter.d_model)
        values = adapter.value_vectors(layer)
        torch.testing.assert_close(acts @ values, out - bias, rtol=1e-4, atol=1e-4)
        # per neuron: one unit of neuron i alone adds exactly row i
        unit = torch.zeros(1, adapter.n_neurons)
        unit[0, 5] = 1.0
        with torch.no_grad():
            torch.testing.assert_close(projection(unit)[0] - bias, values[5])


def test_project_to_vocab_is_the_models_own_head(case: tuple[str, PreTrainedModel, FFNAdapter]) -> None:
    name, model, adapter = case
    last = adapter.decoder_layers()[adapter.n_layers - 1]
    seen: dict[str, torch.Tensor] = {}

    def keep(_m: torch.nn.Module, _args: Any, out: Any) -> None:
        seen["h"] = out[0] if isinstance(out, tuple) else out

    logits = _run_with_hooks(model, [(last, "post", keep)]).logits
    residual = seen["h"].reshape(-1, adapter.d_model)
    projected = adapter.project_to_vocab(residual, apply_final_norm=True)
    assert projected.dtype == torch.float32 and projected.shape == (TOKENS.numel(), adapter.vocab_size)
    torch.testing.assert_close(projected, logits.reshape(-1, adapter.vocab_size), rtol=1e-4, atol=1e-4)
    # without the final norm: only (project_out then) the unembedding, checked by hand
    embed = model.get_input_embeddings().weight
    if name == "opt-350m":
        assert adapter.final_norm() is None
        by_hand = residual @ model.model.decoder.project_out.weight.T @ embed.T
    else:
        assert adapter.final_norm() is not None
        by_hand = residual @ adapter.unembedding().T
    unnormed = adapter.project_to_vocab(residual, apply_final_norm=False)
    torch.testing.assert_close(unnormed, by_hand, rtol=1e-4, atol=1e-3)
    if model.config.tie_word_embeddings:
        assert adapter.unembedding().data_ptr() == embed.data_ptr()


BIG = ["opt-66b", "pythia-6.9b", "llama-2-7b", "tinyllama-1.1b", "opt-6.7b", "gpt2-medium"]


@pytest.mark.parametrize("architecture", BIG)
def test_big_architectures_build_on_meta_with_published_size(architecture: str) -> None:
    model = build_random_model(architecture, device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / PUBLISHED_PARAMS[architecture] - 1) < 0.02
    adapter = adapter_for(model)
    config = ARCHITECTURES[architecture]
    assert adapter.n_layers == config.get("num_hidden_layers", config.get("n_layer"))
    assert adapter.value_vectors(adapter.n_layers - 1).shape == (adapter.n_neurons, adapter.d_model)
    assert adapter.value_vectors(0).device.type == "meta"


def test_published_sizes_of_the_smaller_architectures() -> None:
    for architecture in ("pythia-70m", "pythia-1.4b", "pythia-2.8b", "opt-13b", "opt-30b", "gpt2", "opt-125m"):
        model = build_random_model(architecture, device="meta")
        n_params = sum(p.numel() for p in model.parameters())
        assert abs(n_params / PUBLISHED_PARAMS[architecture] - 1) < 0.02, architecture


def test_every_architecture_has_an_adapter_and_a_hub_id() -> None:
    assert set(HUB_IDS) == set(ARCHITECTURES)
    assert HUB_IDS["opt-125m"] == "facebook/opt-125m" and HUB_IDS["pythia-70m"] == "EleutherAI/pythia-70m"
    for architecture in ARCHITECTURES:
        model = build_random_model(architecture, device="meta", n_layers=1)
        adapter = adapter_for(model)
        assert adapter.n_layers == 1
        assert adapter.family == ARCHITECTURES[architecture]["model_type"]


def test_random_models_are_seeded_and_keep_layer_shapes() -> None:
    a = build_random_model("pythia-70m", seed=4, n_layers=1)
    b = build_random_model("pythia-70m", seed=4, n_layers=1)
    c = build_random_model("pythia-70m", seed=5, n_layers=1)
    state = torch.get_rng_state()
    build_random_model("pythia-70m", seed=6, n_layers=1)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.gpt_neox.layers[0].mlp.dense_h_to_4h.weight, c.gpt_neox.layers[0].mlp.dense_h_to_4h.weight)
    full = build_random_model("pythia-70m", device="meta")
    shapes = [p.shape for p in a.gpt_neox.layers[0].parameters()]
    assert shapes == [p.shape for p in full.gpt_neox.layers[5].parameters()]
    half = build_random_model("pythia-70m", seed=4, n_layers=1, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_other_gated_families_use_the_llama_adapter(model_type: str) -> None:
    config = AutoConfig.for_model(
        model_type,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    _perturb(model)
    adapter = adapter_for(model)
    assert (adapter.family, adapter.gated, adapter.n_neurons, adapter.context_length) == ("llama", True, 48, 64)
    norm_input, by_hand = _ffn_by_hand("llama", adapter.decoder_layers()[1], model)
    seen: dict[str, torch.Tensor] = {}
    tokens = TOKENS % 96
    handles = [
        norm_input.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0])),
        adapter.neuron_input_module(1).register_forward_pre_hook(lambda _m, args: seen.__setitem__("acts", args[0])),
    ]
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(seen["acts"], by_hand(seen["x"]), rtol=1e-4, atol=1e-5)
    assert adapter.project_to_vocab(torch.zeros(1, 32), apply_final_norm=True).shape == (1, 96)
    assert logits.shape == (*tokens.shape, 96)


def test_project_to_vocab_in_bfloat16_returns_float32() -> None:
    model = build_random_model("pythia-70m", n_layers=1)
    _perturb(model)
    vectors = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))
    reference = adapter_for(model).project_to_vocab(vectors, apply_final_norm=True)
    half = adapter_for(model.to(torch.bfloat16))
    projected = half.project_to_vocab(vectors, apply_final_norm=True)
    assert projected.dtype == torch.float32
    # bf16 weights, float32 arithmetic: only the weight rounding (~0.4% relative) remains
    assert (projected - reference).abs().max() < 0.02 * reference.abs().max()
    assert half.value_vectors(0).dtype == torch.float32


def test_bad_requests_name_the_culprit() -> None:
    model = build_random_model("pythia-70m", n_layers=1, device="meta")
    adapter = adapter_for(model, name="tiny")
    with pytest.raises(ValueError, match="layer 1 is outside 0..0 of model 'tiny'"):
        adapter.neuron_input_module(1)
    with pytest.raises(ValueError, match="layer -1"):
        adapter.value_vectors(-1)
    with pytest.raises(ValueError, match=r"must be \[k, 512\]"):
        adapter.project_to_vocab(torch.zeros(2, 7), apply_final_norm=True)


def test_unknown_model_type_is_refused() -> None:
    config = AutoConfig.for_model("gpt_neo", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                  attention_types=[[["global"], 1]], max_position_embeddings=32)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    message = r"no FFN adapter for model type 'gpt_neo' \(model 'neo'\); supported: opt, gpt2"
    with pytest.raises(ValueError, match=message):
        adapter_for(model, name="neo")
