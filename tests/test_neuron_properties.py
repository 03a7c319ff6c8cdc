"""Neuron properties (Gurnee et al. 2024, Sec. 4.1): pre-activation moments over the paired capture's tokens
against scipy, and the weight statistics against direct computations."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from neuron_census.accumulators.preactivation_moments import PreactivationMoments, combine, property_columns
from neuron_census.capture.sources import PairedActivations, TokenBatch

N_SEQ, SEQ_LEN, WIDTH, LAYERS = 10, 9, 6, (1, 3)
NEWLINE = 4


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=(len(LAYERS), N_SEQ, SEQ_LEN, WIDTH)).astype(np.float32) - 2.0  # skewed
    x[0, :, :, 1] = -3.0  # constant: never positive, no skew or kurtosis
    x[1, :, :, 2] = 500.0 + 0.01 * rng.standard_t(3, size=(N_SEQ, SEQ_LEN))  # spread 1e-5 of the mean, heavy tails
    x[1, :, :, 5] *= 40.0
    return {"x": x, "tokens": rng.integers(0, 8, size=(N_SEQ, SEQ_LEN))}


def feed(accumulator: PreactivationMoments, data, sequences: slice, batch_size: int) -> None:
    rows = np.arange(N_SEQ)[sequences]
    for index, start in enumerate(range(0, len(rows), batch_size)):
        chosen = rows[start : start + batch_size]
        mask = torch.ones(len(chosen), SEQ_LEN, dtype=torch.bool)
        mask[:, 0] = False
        batch = TokenBatch(index, torch.from_numpy(data["tokens"][chosen]), torch.from_numpy(chosen), mask, int(chosen[0]), 1, False)
        for slot, layer in enumerate(LAYERS):
            preacts = torch.from_numpy(data["x"][slot][chosen])
            accumulator.update(PairedActivations(batch, layer, {"m": preacts.relu()}, {"m": preacts}))


def moments() -> PreactivationMoments:
    return PreactivationMoments("m", LAYERS, WIDTH, torch.device("cpu"), dropped_tokens=[NEWLINE])


def expected(data) -> dict[str, np.ndarray]:
    keep = (data["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)
    x = np.stack([data["x"][slot][keep].astype(np.float64) for slot in range(len(LAYERS))])  # [L, n, N]
    constant = x.std(axis=1) == 0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on the constant neuron
        skew = np.where(constant, np.nan, stats.skew(x, axis=1))
        kurtosis = np.where(constant, np.nan, stats.kurtosis(x, axis=1, fisher=False))
    return {
        "act_freq": (x > 0).mean(axis=1).reshape(-1),
        "pre_mean": x.mean(axis=1).reshape(-1),
        "pre_var": x.var(axis=1).reshape(-1),
        "pre_skew": skew.reshape(-1),
        "pre_kurtosis": kurtosis.reshape(-1),
    }


@pytest.mark.parametrize("batch_size", [1, 4, 10])
def test_preactivation_moments_equal_scipy_in_one_pass_and_merged(data, batch_size):
    """BOS and newline tokens dropped; a constant neuron has no skew or kurtosis; a heavy-tailed neuron whose
    spread is 1e-5 of its mean keeps its skew and kurtosis (no raw power sums)."""
    one = moments()
    feed(one, data, slice(None), batch_size)
    parts = [moments(), moments(), moments()]
    feed(parts[0], data, slice(0, 3), 2)
    feed(parts[1], data, slice(3, 3), 2)  # an empty shard
    feed(parts[2], data, slice(3, None), 3)
    merged = PreactivationMoments.merge([part.state() for part in parts])
    want = expected(data)
    assert np.isnan(want["pre_skew"][1]) and want["pre_kurtosis"][WIDTH + 2] > 3.5
    for state in (one.state(), merged):
        got = property_columns(state)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
        assert (state["count"] == ((data["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)).sum()).all()


def test_pairwise_combination_is_exact_for_unequal_sets():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=50) * 3 + 10
    parts = [x[:7], x[7:]]

    def central(values):
        mean = values.mean()
        return {"mean": mean} | {f"m{k}": ((values - mean) ** k).sum() for k in (2, 3, 4)}

    got = combine(central(parts[0]), 7, central(parts[1]), 43)
    for key, value in central(x).items():
        assert got[key] == pytest.approx(value, rel=1e-10)



def test_activation_properties_join_the_layer_groups_of_several_blocks(data):
    """Blocks "0-0" and "1-0" hold the moments of one layer group each: every neuron gets its row."""
    from neuron_census.analyses.universal import activation_properties

    groups = [PreactivationMoments("m", [layer], WIDTH, torch.device("cpu"), dropped_tokens=[NEWLINE]) for layer in LAYERS]
    for group in groups:
        feed(group, data, slice(None), 4)
    table = activation_properties([group.state() for group in reversed(groups)])
    assert table["layer"].to_list() == [layer for layer in LAYERS for _ in range(WIDTH)]
    assert table["neuron"].to_list() == list(range(WIDTH)) * len(LAYERS)
    np.testing.assert_allclose(table["pre_var"].to_numpy(), expected(data)["pre_var"], rtol=1e-9)


# ------------------------------------------------------------------------------------ weight statistics


def _small_model(family: str) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=97, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32))
    elif family == "opt-post-ln":
        model = OPTForCausalLM(OPTConfig(
            vocab_size=97, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=16, do_layer_norm_before=False
        ))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_inner=64, n_layer=2, n_head=4))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # biases and norm gains away from 0 and 1, so that folding them matters
        for name, param in model.named_parameters():
            if param.ndim == 1:
                base = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                param.copy_(base + 0.3 * torch.randn(param.shape, generator=generator))
    return model.eval()


FAMILIES = ["opt", "opt-post-ln", "gpt2", "gpt_neox", "llama"]


def _normalised(x: torch.Tensor, rms: bool, eps: float = 1e-5) -> torch.Tensor:
    """The norm's output before its gain and bias."""
    if rms:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


@pytest.mark.parametrize("family", FAMILIES)
def test_processed_weights_compute_what_the_model_computes(family):
    """Folded input weights on the norm's unscaled output give the model's pre-activations; centred writing
    weights change no normalised residual; the folded, centred unembedding gives the model's logits up to a
    constant per position."""
    from neuron_census.analyses.weights import layer_weights, unembedding_directions
    from neuron_census.models.adapters import adapter_for

    model = _small_model(family)
    adapter = adapter_for(model, name=family)
    rms = adapter.rms_norm
    seen: dict[str, torch.Tensor] = {}
    norm = adapter.ffn_norm(1)
    hooks = [
        norm.register_forward_pre_hook(lambda _m, args: seen.__setitem__("residual", args[0])),
        adapter.preactivation_module(1).register_forward_hook(lambda _m, _a, out: seen.__setitem__("preacts", out)),
    ]
    final = adapter.final_norm()
    if final is not None:
        hooks.append(final.register_forward_pre_hook(lambda _m, args: seen.__setitem__("final", args[0])))
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
        for hook in hooks:
            hook.remove()
        w_in, b_in, w_out = layer_weights(adapter, 1, processed=True)
        unscaled = _normalised(seen["residual"], rms, getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))
        preacts = seen["preacts"].reshape(*seen["residual"].shape[:-1], -1)  # post-LN OPT flattens the FFN input
        torch.testing.assert_close(unscaled @ w_in.T + b_in, preacts, atol=1e-4, rtol=1e-4)
        raw_in, raw_b, raw_out = layer_weights(adapter, 1, processed=False)
        torch.testing.assert_close(norm(seen["residual"]) @ raw_in.T + raw_b, preacts, atol=1e-4, rtol=1e-4)
        if not rms:  # centred as TransformerLens centres them
            for weights in (w_in, w_out):
                assert weights.mean(dim=1).abs().max() < 1e-6
            x = torch.randn(5, adapter.d_model)
            torch.testing.assert_close(_normalised(x + w_out[:5], False), _normalised(x + raw_out[:5], False), atol=1e-5, rtol=1e-4)
        if final is not None:
            directions = unembedding_directions(adapter, processed=True)
            shift = getattr(final, "bias", None)  # the final norm's bias: a logit bias per token (TransformerLens's b_U)
            token_bias = 0 if shift is None else adapter.unembedding() @ shift
            eps = getattr(final, "variance_epsilon", getattr(final, "eps", None))
            mine = _normalised(seen["final"], rms, eps) @ directions.T + token_bias
            centred = logits - logits.mean(-1, keepdim=True)
            torch.testing.assert_close(mine - mine.mean(-1, keepdim=True), centred, atol=1e-4, rtol=1e-4)
            assert directions.mean(dim=0).abs().max() < 1e-6  # over the vocabulary
            assert rms or directions.mean(dim=1).abs().max() < 1e-6  # over d_model


def null_fraction(vectors: np.ndarray, unembedding: np.ndarray) -> np.ndarray:
    """Share of each vector's squared norm along the unembedding's right-singular directions of the 2% (at
    least 1, and at least the rank deficit) smallest singular values."""
    _, singular, vh = np.linalg.svd(unembedding, full_matrices=True)
    k = max(1, round(0.02 * unembedding.shape[1]), unembedding.shape[1] - np.linalg.matrix_rank(unembedding))
    smallest = np.argsort(np.concatenate([singular, np.zeros(len(vh) - len(singular))]))[:k]
    return ((vectors @ vh[smallest].T) ** 2).sum(axis=1) / (vectors**2).sum(axis=1)


@pytest.mark.parametrize("processing", ["processed", "raw"])
def test_weight_columns_equal_direct_computation(processing):
    from neuron_census.analyses.weights import layer_weights, unembedding_directions, weight_columns
    from neuron_census.models.adapters import adapter_for

    adapter = adapter_for(_small_model("opt-post-ln"), name="post-ln")  # w_out mapped by project_out
    table = weight_columns(adapter, [1], processing=processing, max_chunk_bytes=4000).sort("neuron")
    w_in, b_in, w_out = (t.double().numpy() for t in layer_weights(adapter, 1, processed=processing == "processed"))
    tokens = unembedding_directions(adapter, processed=processing == "processed").double().numpy()
    tokens = tokens[np.linalg.norm(tokens, axis=1) > 0]
    assert processing == "processed" or len(tokens) == 96  # OPT's padding row is 0
    with torch.no_grad():
        mapped = adapter.unembedding_space(torch.from_numpy(w_out).float()).double().numpy()
    cos = (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) @ (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).T
    norms = np.linalg.norm(w_in, axis=1), np.linalg.norm(w_out, axis=1)
    expected = {
        "w_in_norm": norms[0],
        "w_out_norm": norms[1],
        "b_in": b_in,
        "in_out_cos": (w_in * w_out).sum(axis=1) / (norms[0] * norms[1]),
        "l2_penalty": norms[0] ** 2 + norms[1] ** 2,
        "vocab_cos_mean": cos.mean(axis=1),
        "vocab_cos_var": cos.var(axis=1),
        "vocab_cos_skew": stats.skew(cos, axis=1),
        "vocab_cos_kurtosis": stats.kurtosis(cos, axis=1, fisher=False),
        "null_frac": null_fraction(mapped, tokens),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(table[key].to_numpy(), value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_planted_vocabulary_roles_are_recovered_exactly():
    """Prediction, suppression and partition neurons of the planted seed family, precision = recall = 1 under
    both weight readings; neurons that write nothing have no cosines and no role, nor do the entropy neuron
    (which writes in the unembedding's null space) and the attention-deactivation neuron."""

    from neuron_census.analyses.weights import vocab_roles, weight_columns
    from neuron_census.models.adapters import adapter_for
    from neuron_census.testing.planted_seeds import FAMILY_LAYERS, FAMILY_POSITIONS, FAMILY_VOCAB, build_seed_family

    family = build_seed_family(3, n_layers=FAMILY_LAYERS, vocab=FAMILY_VOCAB, max_positions=FAMILY_POSITIONS)
    adapter = adapter_for(family.models["a"], name="a")
    assert sorted(family.vocab_roles.values()) == ["partition", "prediction", "suppression"]
    for processing in ("processed", "raw"):
        table = weight_columns(adapter, range(FAMILY_LAYERS), processing=processing)
        table = table.with_columns(vocab_role=vocab_roles(table))
        found = {(row["layer"], row["neuron"]): row["vocab_role"] for row in table.drop_nulls("vocab_role").iter_rows(named=True)}
        assert found == family.vocab_roles
        assert table["vocab_cos_var"].null_count() == table.height - 5  # the entropy and deactivation neurons write too


def test_a_study_references_neuron_table_joins_what_the_study_found():
    """neurons.parquet of a study's reference gains the universal table's columns (not the weight statistics
    it already holds), the entropy and attention flags where those neurons were tested (null elsewhere), and
    layers.parquet counts universal and family neurons per layer."""
    from neuron_census.analyses.tables import layer_table, with_study_columns

    keys = {"model": ["m"] * 4, "layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1]}
    neurons = pl.DataFrame(
        keys | {"n_tokens": [9] * 4, "dead": [False] * 4, "fire_freq": [0.5] * 4, "w_in_norm": [1.0, 2.0, 3.0, 4.0]}
    )
    universal = pl.DataFrame(
        keys | {"max_corr": [0.9, 0.1, 0.8, 0.2], "universal": [True, False, True, False], "family": ["token: a", None, None, None],
                "w_in_norm": [-1.0] * 4}
    )
    entropy = pl.DataFrame(
        {"model": ["m"] * 2, "layer": [1, 1], "neuron": [1, 0], "random": [False, True], "entropy_change": [0.7, 0.01],
         "entropy_neuron": [True, False]}
    )
    scores = pl.DataFrame(
        {"model": ["m"] * 2, "layer": [0, 0], "neuron": [0, 1], "max_score": [3.0, -1.0], "max_head_layer": [1, 1], "max_head": [2, 0],
         "min_score": [0.0, -2.0], "min_head_layer": [1, 1], "min_head": [0, 1]}
    )
    paths = pl.DataFrame(
        {"model": ["m"], "layer": [0], "neuron": [0], "head_layer": [1], "head": [2], "score": [3.0], "bos_attention": [0.6],
         "bos_attention_ablated": [0.1], "deactivates": [True]}
    )
    joined = with_study_columns(neurons, universal, entropy, scores, paths)
    assert joined.select("layer", "neuron").rows() == neurons.select("layer", "neuron").rows()
    assert joined["w_in_norm"].to_list() == [1.0, 2.0, 3.0, 4.0] and joined["max_corr"].to_list() == [0.9, 0.1, 0.8, 0.2]
    assert joined["entropy_neuron"].to_list() == [None, None, False, True]
    assert joined["entropy_change"].to_list() == [None, None, 0.01, 0.7]
    assert joined["bos_score"].to_list() == [3.0, -1.0, None, None] and joined["bos_head"].to_list() == [2, 0, None, None]
    assert joined["deactivates"].to_list() == [True, None, None, None]
    layers = layer_table(joined, 2)
    assert layers["n_universal"].to_list() == [1, 1] and layers["n_family"].to_list() == [1, 0]


@pytest.mark.parametrize("shape", [(3000, 48), (20, 48)])
def test_null_space_spans_the_smallest_singular_directions(shape):
    """A tall unembedding (vocabulary > width) and a wide one (its rank deficit is null too): the projector
    onto `null_space` equals the one onto the reference's directions, without a [vocab, vocab] factor."""
    from neuron_census.analyses.weights import null_space

    rng = np.random.default_rng(1)
    unembedding = rng.standard_normal(shape) * np.linspace(0.1, 3.0, shape[1])
    null = null_space(torch.from_numpy(unembedding)).numpy()
    _, singular, vh = np.linalg.svd(unembedding, full_matrices=True)
    k = max(1, round(0.02 * shape[1]), shape[1] - np.linalg.matrix_rank(unembedding))
    smallest = vh[np.argsort(np.concatenate([singular, np.zeros(len(vh) - len(singular))]))[:k]]
    assert null.shape == (shape[1], k)
    np.testing.assert_allclose(null @ null.T, smallest.T @ smallest, atol=1e-10)
