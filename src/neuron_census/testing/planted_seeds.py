"""Models that stand in for training seeds, with known universal neurons: the other models hold rescaled
copies of some of the reference's neurons, at other places and in other layers, and random neurons elsewhere.

Attention and FFN outputs write nothing, so every FFN reads the same normalised embedding of (token,
position) in every layer of every model: a copy of a ReLU neuron (its input row and bias times c > 0)
fires c times as strongly on the same tokens, a correlation of exactly 1 wherever it is placed.

The reference's last layer also holds three neurons with a role in vocabulary space, written to the
residual stream only after every captured activation: a prediction neuron (its value vector is one token's
unembedding), a suppression neuron (minus another's) and a partition neuron (a direction that the
unembedding, untied from the input embedding, splits the vocabulary along: half the tokens hold +r, half
-r). The other two take their tokens' unembeddings without r, so only the partition neuron moves whole
halves of the vocabulary.

A fourth neuron of the last layer is an entropy neuron: its value vector has norm 1 (three times the
residual stream's) in the null space of the unembedding (or along its least-read direction), so it changes no logit directly but, set high,
shrinks the final norm's scale and flattens every prediction.

A neuron of the first layer deactivates head 0 of the second: it writes a little into a dimension
(`CHANNEL`) that no embedding fills and no neuron reads, and that head's query weights read the difference
between it and another such dimension (which cancels the norm's centring) as a large step towards the key
of BOS (`BOS_ID`), so the head attends to BOS where the neuron fires. Attention writes
nothing in this family, so the head's weights are free to change.

Three embedding dimensions, shared by the whole family, stand out only for one token (`FAMILY_TOKEN`), for
the positions below `FAMILY_POSITION`, and for the positions of the designed data's `opening` documents
(below `planted.DESIGNED_CUT`); the reference reads each with one neuron: a token-family, a position-family
and a context-family neuron, whose activation is almost only a function of that feature.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

from neuron_census.testing.planted import (
    DESIGNED_CUT,
    DESIGNED_SOURCES,
    FAMILY_LAYERS,
    FAMILY_POSITIONS,
    FAMILY_VOCAB,
    SEED_RECIPES,
)


@dataclass(frozen=True)
class SeedFamily:
    models: dict[str, OPTForCausalLM]  # the reference first
    universal: frozenset[tuple[int, int]]  # (layer, neuron) of the reference copied into every other model
    partners: dict[str, dict[tuple[int, int], tuple[int, int]]]  # per other model: reference neuron -> its copy
    dead: frozenset[tuple[int, int]]  # reference neurons that never fire
    vocab_roles: dict[tuple[int, int], str]  # reference neurons that write: their role in vocabulary space
    entropy: tuple[int, int]  # the reference's entropy neuron
    deactivation: tuple[int, int, int, int]  # (layer, neuron) of the reference that deactivates (head layer, head)
    families: dict[tuple[int, int], tuple[str, int | str]]  # reference neurons of a family: ("token", id), ("position", below), ("context", source)


BOS_ID = 0  # the planted words tokenizer's <bos>, at position 0 of every sequence of the designed data
CHANNEL, CHANNEL_REFERENCE = -3, -4  # embedding dimensions that only the deactivation neuron and its head use
CONTEXT_DIM = -5  # the embedding dimension that marks the designed data's `opening` documents; the last 5 are planted
FAMILY_TOKEN, FAMILY_POSITION = 5, 8  # the token whose identity, and the position below which, a neuron reads


def family_member(recipe: str) -> OPTForCausalLM:
    """One model of the pipeline's planted family (`models.<name>: {source: planted, recipe: seeds-b}`):
    it reads the planted `words` tokenizer and the designed data of the census recipe."""
    return copy.deepcopy(_pipeline_family().models[SEED_RECIPES[recipe]])


@functools.cache
def _pipeline_family() -> SeedFamily:
    """Built once per process: a study's job loads every member."""
    return build_seed_family(len(SEED_RECIPES), n_layers=FAMILY_LAYERS, vocab=FAMILY_VOCAB, max_positions=FAMILY_POSITIONS)


def build_seed_family(
    n_models: int = 3,
    *,
    n_layers: int = 3,
    n_neurons: int = 256,
    d_model: int = 128,
    vocab: int = 300,
    max_positions: int = 128,
    n_universal: int = 8,
    seed: int = 0,
) -> SeedFamily:
    rng = np.random.default_rng(seed)
    config = OPTConfig(
        vocab_size=vocab, hidden_size=d_model, ffn_dim=n_neurons, num_hidden_layers=n_layers, num_attention_heads=4,
        max_position_embeddings=max_positions + 2, word_embed_proj_dim=d_model, do_layer_norm_before=True, activation_function="relu",
        pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    reference = OPTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in reference.model.decoder.layers:
            for silent in (layer.self_attn.out_proj, layer.fc2):
                silent.weight.zero_()
                silent.bias.zero_()
    dims = _plant_feature_dimensions(reference)
    _redraw_neurons(reference, rng)
    cells = [(layer, neuron) for layer in range(n_layers) for neuron in range(n_neurons)]
    chosen = rng.choice(len(cells), size=n_universal + 1, replace=False)
    universal, dead = frozenset(cells[i] for i in chosen[:-1]), cells[chosen[-1]]
    layers = reference.model.decoder.layers
    with torch.no_grad():
        layers[dead[0]].fc1.bias[dead[1]] = -1e4
    models, partners = {"a": reference}, {}
    for name in "bcdefghij"[: n_models - 1]:
        model = copy.deepcopy(reference)
        _redraw_neurons(model, rng)
        places = rng.choice(len(cells), size=n_universal, replace=False)
        partners[name] = dict(zip(sorted(universal), (cells[i] for i in places)))
        with torch.no_grad():
            for (layer, neuron), (to_layer, to_neuron) in partners[name].items():
                scale = float(rng.uniform(0.5, 2.0))
                target = model.model.decoder.layers[to_layer].fc1
                target.weight[to_neuron] = layers[layer].fc1.weight[neuron] * scale
                target.bias[to_neuron] = layers[layer].fc1.bias[neuron] * scale
        models[name] = model
    roles = _plant_vocab_roles(reference, rng, taken={*universal, dead})  # after the copies: the reference's own
    entropy = _plant_entropy_neuron(reference, rng, taken={*universal, dead, *roles})
    free = [cell for cell in cells if cell[0] == 1 and cell not in {*universal, dead, *roles}]
    families = {}
    with torch.no_grad():
        features = (("token", FAMILY_TOKEN), ("position", FAMILY_POSITION), ("context", DESIGNED_SOURCES[0]))
        for (layer, neuron), (feature, dim) in zip(free, zip(features, dims)):
            fc1 = layers[layer].fc1
            fc1.weight[neuron] = 0.0
            fc1.weight[neuron, dim] = 1.0
            fc1.bias[neuron] = -2.0  # the normalised dimension is about 4.6 where the feature holds, near 0 elsewhere
            families[layer, neuron] = feature
    deactivation = _plant_deactivation_neuron(reference, rng, taken={*universal, dead, *families})
    return SeedFamily(models, universal, partners, frozenset({dead}), roles, entropy, deactivation, families)


def _plant_deactivation_neuron(model: OPTForCausalLM, rng: np.random.Generator, taken: set[tuple[int, int]]) -> tuple[int, int, int, int]:
    """Neuron n of layer 0 writes 0.002 of the residual's spread per dimension into CHANNEL per unit
    activation (moving the norm of every later input by a few millionths); the query of head 0 of layer 1
    reads normalised CHANNEL minus CHANNEL_REFERENCE (0 without the neuron, whatever the norm's mean) as
    0.5 logit units towards BOS's key per unit activation (module docstring)."""
    decoder = model.model.decoder
    neuron = int(rng.choice([n for n in range(model.config.ffn_dim) if (0, n) not in taken]))
    d_head = model.config.hidden_size // model.config.num_attention_heads
    attention = decoder.layers[1].self_attn
    write = 0.002
    with torch.no_grad():
        rest = torch.cat([decoder.embed_tokens.weight[:, :CONTEXT_DIM], decoder.embed_positions.weight[:, :CONTEXT_DIM]])
        decoder.layers[0].fc2.weight[:, neuron] = 0.0
        decoder.layers[0].fc2.weight[CHANNEL, neuron] = write * float(rest.std()) * 2**0.5
        seen: list[torch.Tensor] = []
        hook = decoder.layers[1].self_attn_layer_norm.register_forward_hook(lambda _m, _a, out: seen.append(out))
        model(input_ids=torch.tensor([[BOS_ID]]), use_cache=False)
        hook.remove()
        key = attention.k_proj(seen[0][0, 0])[:d_head]
        step = key / key.norm() * (0.5 / write * d_head**0.5 / float(key.norm()))
        attention.q_proj.weight[:d_head, CHANNEL] += step
        attention.q_proj.weight[:d_head, CHANNEL_REFERENCE] -= step
    return 0, neuron, 1, 0


def _plant_entropy_neuron(model: OPTForCausalLM, rng: np.random.Generator, taken: set[tuple[int, int]]) -> tuple[int, int]:
    """A last-layer neuron writing a unit vector orthogonal to the all-ones direction (which the norms
    remove) and to every unembedding row where the vocabulary leaves room (the pipeline's family: 48 tokens
    in 128 dimensions), else along the direction the unembedding reads least."""
    last = len(model.model.decoder.layers) - 1
    neuron = int(rng.choice([n for n in range(model.config.ffn_dim) if (last, n) not in taken]))
    unembedding = model.lm_head.weight.detach().double().numpy()
    d = unembedding.shape[1]
    centred = np.linalg.qr(np.eye(d) - 1.0 / d, mode="reduced")[0][:, : d - 1]  # a basis orthogonal to the ones
    _, singular, vh = np.linalg.svd(unembedding @ centred, full_matrices=True)
    rank = int((singular > singular.max() * 1e-9).sum())
    basis = vh[rank:] if rank < d - 1 else vh[-1:]  # exact null directions, or the least read one
    vector = centred @ (basis.T @ rng.standard_normal(len(basis)))
    with torch.no_grad():
        model.model.decoder.layers[last].fc2.weight[:, neuron] = torch.from_numpy(vector / np.linalg.norm(vector)).float()
    return last, neuron


def _plant_feature_dimensions(model: OPTForCausalLM) -> tuple[int, int, int]:
    """The last two embedding dimensions and CONTEXT_DIM: 5 standard deviations of the rest for FAMILY_TOKEN
    (the first), for the positions below FAMILY_POSITION (the second) and for those below DESIGNED_CUT
    (CONTEXT_DIM), 0 elsewhere; CHANNEL and CHANNEL_REFERENCE 0 everywhere."""
    tokens, positions = model.model.decoder.embed_tokens.weight, model.model.decoder.embed_positions.weight
    offset = model.model.decoder.embed_positions.offset  # OPT's learned positions start at row 2
    token_dim, position_dim, context_dim = tokens.shape[1] - 2, tokens.shape[1] - 1, tokens.shape[1] + CONTEXT_DIM
    with torch.no_grad():
        height = 5.0 * float(torch.cat([tokens[:, :CONTEXT_DIM], positions[:, :CONTEXT_DIM]]).std()) * 2**0.5
        for table in (tokens, positions):
            table[:, CONTEXT_DIM:] = 0.0
        tokens[FAMILY_TOKEN, token_dim] = height
        positions[offset : offset + FAMILY_POSITION, position_dim] = height
        positions[offset : offset + DESIGNED_CUT, context_dim] = height
    return token_dim, position_dim, context_dim


def _plant_vocab_roles(model: OPTForCausalLM, rng: np.random.Generator, taken: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Prediction, suppression and partition neurons in the last layer (module docstring)."""
    last = len(model.model.decoder.layers) - 1
    n_neurons = model.config.ffn_dim
    free = [neuron for neuron in range(n_neurons) if (last, neuron) not in taken]
    neurons = rng.choice(free, size=3, replace=False)
    vocab, d_model = model.lm_head.weight.shape
    unembedding = rng.standard_normal((vocab, d_model))
    split = rng.standard_normal(d_model)
    split /= np.linalg.norm(split)
    unembedding -= np.outer(unembedding @ split, split)  # r is the only direction the halves differ along
    halves = np.where(rng.permutation(vocab) < vocab // 2, 1.0, -1.0)
    size = float(np.linalg.norm(unembedding, axis=1).mean())
    promoted, suppressed = rng.choice(vocab, size=2, replace=False)
    values = {"prediction": unembedding[promoted], "suppression": -unembedding[suppressed], "partition": split}
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.from_numpy(unembedding + size * np.outer(halves, split)).float())
        for neuron, vector in zip(neurons, values.values()):
            model.model.decoder.layers[last].fc2.weight[:, neuron] = torch.from_numpy(1e-3 * vector).float()
    return {(last, int(neuron)): role for neuron, role in zip(neurons, values)}


def _redraw_neurons(model: OPTForCausalLM, rng: np.random.Generator) -> None:
    """Every FFN neuron a new Gaussian input row and no bias: independent of every other model's. No row
    reads CHANNEL or CHANNEL_REFERENCE."""
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.weight.copy_(torch.from_numpy(rng.standard_normal(tuple(layer.fc1.weight.shape)).astype(np.float32)))
            layer.fc1.weight[:, [CHANNEL, CHANNEL_REFERENCE]] = 0.0
            layer.fc1.bias.zero_()
