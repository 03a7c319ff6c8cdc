"""OPT models built in code whose neurons do known things: the pipeline's ground truth.

Construction: every token and every position owns one residual dimension (embeddings are scaled one-hot
vectors), attention outputs are zero and value vectors are zero, so every layer's FFN sees
LayerNorm(e_token + e_position), which has exactly two equal high entries. A neuron reading
dimension t with bias halfway between the high and low LayerNorm outputs fires exactly on token t;
one reading a set of position dimensions fires exactly on those positions (the bias accounts
for how many dimensions the neuron reads). Firing predicates are
therefore known exactly, for any token sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

N_SPECIAL = 2  # <bos> = 0, <unk> = 1, as in the `words` tokenizer
EMBED_SCALE = 4.0


@dataclass(frozen=True)
class PlantedNeuron:
    """One neuron with a known role: `kind` in never, always, tokens, positions."""

    layer: int
    neuron: int
    kind: str
    tokens: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()

    def fires(self, tokens: np.ndarray) -> np.ndarray:
        """Where this neuron fires on token ids [n_seq, seq_len] (BOS masking is the caller's)."""
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
        return {
            "never": lambda: np.zeros(tokens.shape, dtype=bool),
            "always": lambda: np.ones(tokens.shape, dtype=bool),
            "tokens": lambda: np.isin(tokens, self.tokens),
            "positions": lambda: np.isin(positions, self.positions),
        }[self.kind]()


@dataclass(frozen=True)
class PlantedRecipe:
    """Sizes of a planted model and the roles of its neurons; unlisted neurons never fire."""

    vocab_size: int
    max_positions: int
    n_layers: int
    n_neurons: int
    neurons: tuple[PlantedNeuron, ...] = field(default=())

    @property
    def d_model(self) -> int:
        return self.vocab_size + self.max_positions

    def all_neurons(self) -> list[PlantedNeuron]:
        """Every neuron of the model with its role, unlisted ones as `never`."""
        listed = {(n.layer, n.neuron): n for n in self.neurons}
        return [
            listed.get((layer, neuron), PlantedNeuron(layer, neuron, "never"))
            for layer in range(self.n_layers)
            for neuron in range(self.n_neurons)
        ]


def _basic() -> PlantedRecipe:
    neurons = (
        PlantedNeuron(0, 0, "always"),
        PlantedNeuron(0, 1, "tokens", tokens=(5,)),
        PlantedNeuron(0, 2, "tokens", tokens=(7, 8)),
        PlantedNeuron(0, 3, "positions", positions=tuple(range(10, 20))),
        PlantedNeuron(0, 4, "positions", positions=tuple(range(0, 8))),
        PlantedNeuron(1, 0, "tokens", tokens=(12,)),
        PlantedNeuron(1, 1, "positions", positions=tuple(range(32, 64))),
        PlantedNeuron(1, 2, "always"),
        PlantedNeuron(1, 3, "tokens", tokens=tuple(range(N_SPECIAL, 32, 2))),
        PlantedNeuron(2, 5, "positions", positions=tuple(p for p in range(64) if (p // 4) % 2 == 0)),
    )
    return PlantedRecipe(vocab_size=32, max_positions=64, n_layers=3, n_neurons=8, neurons=neurons)


RECIPES: dict[str, Callable[[], PlantedRecipe]] = {"basic": _basic}


def get_recipe(name: str) -> PlantedRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown planted recipe '{name}'; known: {sorted(RECIPES)}")
    return RECIPES[name]()


def planted_words(recipe: PlantedRecipe) -> list[str]:
    """Words of the matching `words` tokenizer: ids N_SPECIAL.. map to w02, w03, ..."""
    return [f"w{i:02d}" for i in range(N_SPECIAL, recipe.vocab_size)]


def _layer_norm_levels(d_model: int, eps: float) -> tuple[float, float]:
    """LayerNorm output at the two high entries and at every other entry of EMBED_SCALE*(e_i + e_j)."""
    mean = 2 * EMBED_SCALE / d_model
    var = 2 * EMBED_SCALE**2 / d_model - mean**2
    scale = 1 / np.sqrt(var + eps)
    return (EMBED_SCALE - mean) * scale, -mean * scale


def build_planted_model(recipe_name: str) -> OPTForCausalLM:
    """Build the planted OPT model of `recipe_name` (deterministic, no randomness)."""
    recipe = get_recipe(recipe_name)
    d_model = recipe.d_model
    config = OPTConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=d_model,
        num_hidden_layers=recipe.n_layers,
        ffn_dim=recipe.n_neurons,
        num_attention_heads=1,
        max_position_embeddings=recipe.max_positions,
        word_embed_proj_dim=d_model,
        do_layer_norm_before=True,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = OPTForCausalLM(config)
    decoder = model.model.decoder
    high, low = _layer_norm_levels(d_model, decoder.layers[0].final_layer_norm.eps)

    def bias_for(n_dims: int) -> float:
        # w.x is n_dims*low off the set and (high - low) more on it: put the bias halfway.
        return -(n_dims * low + (high - low) / 2)
    with torch.no_grad():
        decoder.embed_tokens.weight.zero_()
        decoder.embed_tokens.weight[:, : recipe.vocab_size] = EMBED_SCALE * torch.eye(recipe.vocab_size)
        offset = decoder.embed_positions.offset
        decoder.embed_positions.weight.zero_()
        for position in range(recipe.max_positions):
            decoder.embed_positions.weight[position + offset, recipe.vocab_size + position] = EMBED_SCALE
        for layer in decoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.final_layer_norm.weight.fill_(1.0)
            layer.final_layer_norm.bias.zero_()
            layer.fc1.weight.zero_()
            layer.fc1.bias.fill_(-1.0)
            layer.fc2.weight.zero_()
            layer.fc2.bias.zero_()
        for neuron in recipe.neurons:
            fc1 = decoder.layers[neuron.layer].fc1
            if neuron.kind == "always":
                fc1.bias[neuron.neuron] = 1.0
            elif neuron.kind == "tokens":
                fc1.weight[neuron.neuron, list(neuron.tokens)] = 1.0
                fc1.bias[neuron.neuron] = bias_for(len(neuron.tokens))
            elif neuron.kind == "positions":
                dims = [recipe.vocab_size + p for p in neuron.positions]
                fc1.weight[neuron.neuron, dims] = 1.0
                fc1.bias[neuron.neuron] = bias_for(len(dims))
    model.eval()
    return model
