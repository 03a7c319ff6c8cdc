"""OPT models built in code whose neurons do known things: the pipeline's ground truth.

Construction: every token and every position owns one residual dimension (embeddings are scaled one-hot
vectors). Without a previous-token head, attention outputs are zero, so every layer's FFN sees
LayerNorm(e_token + e_position): two equal high entries, every other entry at one low level. With the
head (layer 0 only), position p attends to p - 1 (position 0 to itself) through the one-hot position
dimensions and copies that token's identity into a third block of "previous token" dimensions, so the
FFN sees LayerNorm(e_token + e_position + e_previous): three high entries. Either way LayerNorm maps the
input to two known levels, so a neuron whose fc1 row holds `token_weights`, `position_weights` and
`previous_weights` on those dimensions, with the bias set from the levels, fires exactly when

    token_weight[x_p] + position_weight[p] + previous_weight[x_{p-1}] > threshold

(x_{-1} := x_0). Each neuron's value vector (its fc2 column) is a small multiple of the embedding
directions of the tokens it promotes minus those it suppresses: small enough that later layers' predicates
stay exact, clear enough to rank those tokens at the ends of its vocabulary projection. Firing predicates
are therefore known exactly, for any token sequence, and each neuron also records the role the analyses
must recover for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import gcd
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a model is built: the recipes and designed tokens need neither
    import torch
    from transformers import OPTForCausalLM

N_SPECIAL = 2  # <bos> = 0, <unk> = 1, as in the `words` tokenizer
EMBED_SCALE = 4.0
VALUE_SCALE = 1e-3  # value vectors: far below every predicate margin, still a clean ranking
ATTENTION_GAP = 200.0  # logit gap of the previous-token head: exp(-gap) is 0 in float32
CONSTANT_BIAS = 1.0  # fc1 bias magnitude of neurons that read nothing (always / never)
DESIGN_STEP = 7  # cyclic step of the second block of designed data (coprime with its word count)

ROLES = ("dead", "always", "token_detector", "not_detector", "bigram_detector", "positional")
POSITIONAL_TYPES = ("oscillatory", "both_extremes", "one_extreme", "other")

Weights = tuple[tuple[int, float], ...]


def _pairs(weights: Mapping[int, float]) -> Weights:
    """Sorted (id, weight) pairs: a hashable, order-free form of a sparse weight table."""
    return tuple(sorted((int(key), float(value)) for key, value in weights.items() if value != 0))


def _unit(ids: Iterable[int]) -> Weights:
    return _pairs({int(i): 1.0 for i in ids})


def _lookup(weights: Weights, ids: np.ndarray) -> np.ndarray:
    """weights[ids] with unlisted ids at 0 (float64, shape of `ids`)."""
    size = max([int(ids.max(initial=0))] + [key for key, _ in weights]) + 1
    table = np.zeros(size)
    for key, value in weights:
        table[key] = value
    return table[ids]


@dataclass(frozen=True)
class PlantedNeuron:
    """One neuron: an additive firing predicate and the role the analyses must recover for it.

    Fires iff token_weights[x_p] + position_weights[p] + previous_weights[x_{p-1}] > threshold (unlisted
    ids weigh 0). Expected roles: `role` in ROLES; `positional_type` in POSITIONAL_TYPES and
    `positional_strong` for positional neurons (None otherwise); `tokens` the trigger tokens (detected ones
    for a token detector, the ones it fires on only sometimes for a not_detector); `bigrams` the
    (previous, current) triggers of a bigram detector; `promotes` / `suppresses` the tokens its value
    vector ranks at the top / bottom of the vocabulary.
    """

    layer: int
    neuron: int
    token_weights: Weights = ()
    position_weights: Weights = ()
    previous_weights: Weights = ()
    threshold: float = 0.5
    role: str = "dead"
    positional_type: str | None = None
    positional_strong: bool | None = None
    tokens: tuple[int, ...] = ()
    bigrams: tuple[tuple[int, int], ...] = ()
    promotes: tuple[int, ...] = ()
    suppresses: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"neuron {self.layer}/{self.neuron}: role {self.role!r} not in {ROLES}")
        if self.role == "positional":
            described = self.positional_type in POSITIONAL_TYPES and self.positional_strong is not None
        else:
            described = self.positional_type is None and self.positional_strong is None
        if not described:
            raise ValueError(
                f"neuron {self.layer}/{self.neuron}: positional neurons (only) need positional_type in "
                f"{POSITIONAL_TYPES} and positional_strong"
            )
        constant_role = {"never": "dead", "always": "always"}.get(self.kind)
        if (constant_role or self.role in ("dead", "always")) and constant_role != self.role:
            raise ValueError(f"neuron {self.layer}/{self.neuron}: role {self.role!r} with a {self.kind!r} predicate")

    @property
    def kind(self) -> str:
        """Shape of the predicate: never, always, tokens, positions (the simple cases) or additive."""
        read = (bool(self.token_weights), bool(self.position_weights), bool(self.previous_weights))
        if not any(read):
            return "always" if 0 > self.threshold else "never"
        return {(True, False, False): "tokens", (False, True, False): "positions"}.get(read, "additive")

    def fires(self, tokens: np.ndarray) -> np.ndarray:
        """Where this neuron fires on token ids [n_seq, seq_len] (BOS masking is the caller's).

        The previous token at p = 0 is the token at 0 itself, as the previous-token head sees it."""
        tokens = np.asarray(tokens)
        positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
        previous = np.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)
        score = (
            _lookup(self.token_weights, tokens)
            + _lookup(self.position_weights, positions)
            + _lookup(self.previous_weights, previous)
        )
        return score > self.threshold


# ---- constructors ---------------------------------------------------------------------------------


def _positional(positional_type: str, strong: bool) -> dict[str, Any]:
    return {"role": "positional", "positional_type": positional_type, "positional_strong": strong}


def always(layer: int, neuron: int) -> PlantedNeuron:
    return PlantedNeuron(layer, neuron, threshold=-0.5, role="always")


def token_neuron(layer: int, neuron: int, tokens: Iterable[int], **expected: Any) -> PlantedNeuron:
    """Fires iff the current token is in `tokens`; a token detector of them unless `expected` says otherwise."""
    tokens = tuple(sorted(set(tokens)))
    roles = {"role": "token_detector", "tokens": tokens, **expected}
    return PlantedNeuron(layer, neuron, token_weights=_unit(tokens), **roles)


def position_neuron(
    layer: int, neuron: int, positions: Iterable[int], positional_type: str, strong: bool = True
) -> PlantedNeuron:
    """Fires iff the position is in `positions`, whatever the tokens."""
    return PlantedNeuron(layer, neuron, position_weights=_unit(positions), **_positional(positional_type, strong))


def bigram_neuron(layer: int, neuron: int, previous: int, current: int, **expected: Any) -> PlantedNeuron:
    """Fires iff the previous token is `previous` and the current one `current` (needs the previous-token head)."""
    roles = {"role": "bigram_detector", "bigrams": ((previous, current),), **expected}
    return PlantedNeuron(
        layer, neuron, token_weights=_unit([current]), previous_weights=_unit([previous]), threshold=1.5, **roles
    )


def token_position_neuron(
    layer: int, neuron: int, token_set: Iterable[int], position_set: Iterable[int], *, both: bool, **expected: Any
) -> PlantedNeuron:
    """Fires iff the token is in `token_set` and (`both`) or (not `both`) the position in `position_set`."""
    threshold = 1.5 if both else 0.5
    return PlantedNeuron(layer, neuron, _unit(token_set), _unit(position_set), threshold=threshold, **expected)


def graded_neuron(
    layer: int, neuron: int, tokens: Mapping[int, float], positions: Sequence[float], threshold: float, **expected: Any
) -> PlantedNeuron:
    """Real-valued token and position weights: how many tokens clear the threshold varies with position."""
    position_weights = _pairs(dict(enumerate(positions)))
    return PlantedNeuron(layer, neuron, _pairs(tokens), position_weights, threshold=threshold, **expected)


# ---- recipes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedRecipe:
    """Sizes of a planted model and the roles of its neurons; unlisted neurons never fire.

    `previous_token_head` adds the layer-0 previous-token head and its block of residual dimensions;
    `design_words` are the words of the designed data (`census_tokens`), every word when empty.
    """

    vocab_size: int
    max_positions: int
    n_layers: int
    n_neurons: int
    neurons: tuple[PlantedNeuron, ...] = field(default=())
    previous_token_head: bool = False
    design_words: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for neuron in self.neurons:
            where = f"neuron {neuron.layer}/{neuron.neuron}"
            if not (0 <= neuron.layer < self.n_layers and 0 <= neuron.neuron < self.n_neurons):
                raise ValueError(f"{where} is outside {self.n_layers} layers x {self.n_neurons} neurons")
            if neuron.previous_weights and not self.previous_token_head:
                raise ValueError(f"{where} reads the previous token, but the recipe has no previous-token head")
            read = [key for key, _ in neuron.token_weights + neuron.previous_weights]
            if any(not 0 <= i < self.vocab_size for i in [*read, *neuron.promotes, *neuron.suppresses]):
                raise ValueError(f"{where} names tokens outside the vocabulary of {self.vocab_size}")
            if any(not 0 <= p < self.max_positions for p, _ in neuron.position_weights):
                raise ValueError(f"{where} names positions outside 0..{self.max_positions - 1}")

    @property
    def d_model(self) -> int:
        return self.vocab_size * (2 if self.previous_token_head else 1) + self.max_positions

    def position_dim(self, position: int) -> int:
        return self.vocab_size + position

    def previous_dim(self, token: int) -> int:
        return self.vocab_size + self.max_positions + token

    def all_neurons(self) -> list[PlantedNeuron]:
        """Every neuron of the model with its role, unlisted ones dead (`kind` never)."""
        listed = {(n.layer, n.neuron): n for n in self.neurons}
        return [
            listed.get((layer, neuron), PlantedNeuron(layer, neuron))
            for layer in range(self.n_layers)
            for neuron in range(self.n_neurons)
        ]


def _oscillating(max_positions: int) -> tuple[int, ...]:
    """Positions in the 'on' half of every period of 8: on for 4, off for 4."""
    return tuple(p for p in range(max_positions) if (p // 4) % 2 == 0)


def _basic() -> PlantedRecipe:
    neurons = (
        always(0, 0),
        token_neuron(0, 1, (5,)),
        token_neuron(0, 2, (7, 8)),
        position_neuron(0, 3, range(10, 20), "both_extremes"),
        position_neuron(0, 4, range(0, 8), "both_extremes"),
        token_neuron(1, 0, (12,)),
        position_neuron(1, 1, range(32, 64), "both_extremes"),
        always(1, 2),
        token_neuron(1, 3, range(N_SPECIAL, 32, 2), role="not_detector"),  # 15 tokens: too many to detect
        position_neuron(2, 5, _oscillating(64), "oscillatory"),
    )
    return PlantedRecipe(vocab_size=32, max_positions=64, n_layers=3, n_neurons=8, neurons=neurons)


CENSUS_WORDS = tuple(range(N_SPECIAL, 42))  # W: 40 words; 3 -> 4 and 10 -> 11 are neighbours
CENSUS_HALF = CENSUS_WORDS[::2]  # half of W: rate exactly 0.5 at every position of the designed data
CENSUS_RARE = 38  # one word of HALF, in no other role: twice per position, rate 2/80


def _census() -> PlantedRecipe:
    n_positions = 64
    words, half, rare = CENSUS_WORDS, CENSUS_HALF, CENSUS_RARE
    oscillating, low_range, high_range = _oscillating(n_positions), range(0, 24), range(40, n_positions)
    # graded neurons: token weight = rank of the word, position weight offset so that exactly counts[p] words
    # clear 0, from 10% of the words at p = 1 up to 90% at the end (half-integer scores: 0.5 away from any tie)
    share = 0.1 + (0.9 - 0.1) * np.clip(np.arange(n_positions) - 1, 0, None) / (n_positions - 2)
    counts = np.rint(share * len(words)).astype(int)
    tokens = {word: float(rank) for rank, word in enumerate(words)}
    ramp = counts - len(words) + 0.5
    shuffled = ramp.copy()
    shuffled[1:] = np.random.default_rng(0).permutation(ramp[1:])
    weak_one_extreme = {**{w: 1.0 for w in half}, rare: 2.0}
    neurons = (
        always(0, 0),
        token_neuron(0, 1, (5,), suppresses=(5,), promotes=(9,)),
        token_neuron(0, 2, (7, 8), suppresses=(7, 8), promotes=(10,)),
        bigram_neuron(0, 3, 3, 4),
        position_neuron(0, 4, oscillating, "oscillatory"),
        position_neuron(0, 5, low_range, "both_extremes"),
        token_position_neuron(0, 6, half, high_range, both=True, **_positional("one_extreme", True)),
        graded_neuron(0, 7, tokens, ramp, 0.0, **_positional("other", True)),
        token_position_neuron(0, 8, (30,), range(0, n_positions, 2), both=True, role="not_detector", tokens=(30,)),
        token_neuron(1, 0, (12,), promotes=(12,)),
        token_neuron(1, 1, (5,), suppresses=(5,)),
        bigram_neuron(1, 2, 10, 11),
        token_position_neuron(1, 3, (rare,), oscillating, both=False, **_positional("oscillatory", False)),
        token_position_neuron(1, 4, (rare,), low_range, both=False, **_positional("both_extremes", False)),
        graded_neuron(
            1, 5, weak_one_extreme, [1.0 if p in high_range else 0.0 for p in range(n_positions)], 1.5,
            **_positional("one_extreme", False),
        ),
        graded_neuron(1, 6, tokens, shuffled, 0.0, **_positional("other", False)),
        always(1, 7),
        token_neuron(2, 0, (20,), suppresses=(20,)),
        token_neuron(2, 1, (21, 22), suppresses=(21, 22)),
    )
    sizes = {"vocab_size": 48, "max_positions": n_positions, "n_layers": 3, "n_neurons": 16}
    return PlantedRecipe(**sizes, neurons=neurons, previous_token_head=True, design_words=words)


PROBING_SINGLE = 10  # one word, one neuron (layer 0 neuron 1): a k = 1 probe
PROBING_TRIPLE = (20, 21, 22)  # three words, one neuron each in layer 0 (neurons 2-4), one neuron for all in layer 1
PROBING_EARLY = 8  # positions below this: layer 0 neuron 5


def _probing() -> PlantedRecipe:
    """Sparse probing's ground truth (Gurnee et al. 2023): in layer 0 the word PROBING_SINGLE and the early
    positions each have a neuron of their own (k = 1 reads them with F1 = 1), while the word set
    PROBING_TRIPLE is split over three neurons (k = 3 reads it, no single neuron does); layer 1 has one
    neuron for the whole set. Distractors fire on half of the words (PROBING_SINGLE and two of the triple
    among them), on graded token scores, or always."""
    words = CENSUS_WORDS
    rng = np.random.default_rng(1)
    scores = {word: float(score) for word, score in zip(words, rng.permutation(len(words)) - len(words) // 2)}
    neurons = (
        always(0, 0),
        token_neuron(0, 1, (PROBING_SINGLE,)),
        *(token_neuron(0, 2 + i, (word,)) for i, word in enumerate(PROBING_TRIPLE)),
        position_neuron(0, 5, range(0, PROBING_EARLY), "both_extremes"),
        token_neuron(0, 6, CENSUS_HALF, role="not_detector"),
        graded_neuron(0, 7, scores, [0.0] * 64, 0.5, role="not_detector"),  # integer scores: half the words
        token_neuron(1, 0, PROBING_TRIPLE),
        token_neuron(1, 1, CENSUS_HALF, role="not_detector"),
        always(1, 2),
    )
    return PlantedRecipe(vocab_size=48, max_positions=64, n_layers=2, n_neurons=8, neurons=neurons, design_words=words)


RECIPES: dict[str, Callable[[], PlantedRecipe]] = {"basic": _basic, "census": _census, "probing": _probing}
# The pipeline's planted seed family (built by `planted_seeds`, which imports torch): each recipe's member and
# the family's shape, here so that config checks and the Snakefile know them without importing torch.
SEED_RECIPES = {"seeds-a": "a", "seeds-b": "b", "seeds-c": "c"}
FAMILY_VOCAB, FAMILY_LAYERS, FAMILY_POSITIONS = 48, 3, 64  # the planted words tokenizer and designed data


def get_recipe(name: str) -> PlantedRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown planted recipe '{name}'; known: {sorted(RECIPES)}")
    return RECIPES[name]()


def planted_shape(name: str) -> tuple[int, int]:
    """(layers, context positions) of the model of a recipe: a census recipe or a seed family's member."""
    if name in SEED_RECIPES:
        return FAMILY_LAYERS, FAMILY_POSITIONS
    if name not in RECIPES:
        raise ValueError(f"unknown planted recipe '{name}'; known: {sorted(RECIPES) + sorted(SEED_RECIPES)}")
    recipe = RECIPES[name]()
    return recipe.n_layers, recipe.max_positions


def planted_words(recipe: PlantedRecipe) -> list[str]:
    """Words of the matching `words` tokenizer: ids N_SPECIAL.. map to w02, w03, ..."""
    return [f"w{i:02d}" for i in range(N_SPECIAL, recipe.vocab_size)]


def census_tokens(recipe: PlantedRecipe) -> np.ndarray:
    """Designed token ids [2 * n, max_positions] on which every planted role holds exactly ([80, 64] for census).

    With W = recipe.design_words (n words; all words when empty) and BOS at position 0, two cyclic Latin
    blocks of n sequences: token(s, p) = W[(s + p) mod n] in the first and W[(s + DESIGN_STEP * p) mod n] in
    the second (DESIGN_STEP coprime with n). At every position p >= 1 each word of W occurs exactly once per block,
    so the multiset of tokens is the same at every position: rates of token-based neurons do not depend
    on position, a word set of n/2 words (HALF) has rate exactly 0.5, one word (RARE) rate 2/(2n), and
    graded rates are exact. W[j] is preceded by W[j - 1] in the first block and by W[j - DESIGN_STEP] in
    the second (p >= 2; BOS at p = 1), so a bigram of neighbours in W (3 -> 4, 10 -> 11) covers only the
    first block's occurrences of its second word.
    """
    words = np.asarray(recipe.design_words or range(N_SPECIAL, recipe.vocab_size))
    n, seq_len = len(words), recipe.max_positions
    if gcd(DESIGN_STEP, n) != 1:
        raise ValueError(f"designed data needs a word count coprime with {DESIGN_STEP}, got {n}")
    seqs, positions = np.arange(n)[:, None], np.arange(seq_len)[None, :]
    blocks = [words[(seqs + step * positions) % n] for step in (1, DESIGN_STEP)]
    tokens = np.concatenate(blocks).astype(np.int64)
    tokens[:, 0] = 0  # BOS
    return tokens


def designed_tokens(recipe_name: str) -> np.ndarray:
    """The designed token data of recipe `recipe_name` (see `census_tokens`)."""
    return census_tokens(get_recipe(recipe_name))


DESIGNED_SOURCES, DESIGNED_CUT = ("opening", "body"), 24  # no power of two: no position feature is the context


def designed_sources(tokens: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Source labels of designed data: each sequence holds two labelled documents, an `opening` before
    position DESIGNED_CUT and a `body` from there (BOS unlabelled), so a context feature exists that no token
    or position feature equals."""
    codes = np.where(np.arange(tokens.shape[1]) < DESIGNED_CUT, 0, 1).astype(np.int16)
    codes = np.broadcast_to(codes, tokens.shape).copy()
    codes[:, 0] = -1
    return codes, DESIGNED_SOURCES


# ---- model ----------------------------------------------------------------------------------------


def _layer_norm_levels(d_model: int, n_high: int, eps: float) -> tuple[float, float]:
    """LayerNorm output at the n_high high entries and at every other entry of EMBED_SCALE * (sum of n_high e_i)."""
    mean = n_high * EMBED_SCALE / d_model
    var = n_high * EMBED_SCALE**2 / d_model - mean**2
    scale = 1 / np.sqrt(var + eps)
    return (EMBED_SCALE - mean) * scale, -mean * scale


def _plant_previous_token_head(attention: torch.nn.Module, norm: torch.nn.LayerNorm, recipe: PlantedRecipe) -> None:
    """Layer-0 head: p attends to max(p - 1, 0) only, and writes EMBED_SCALE * e_previous into the previous block.

    Its input is LayerNorm(e_token + e_position) (two high entries). Query slot max(p - 1, 0) and key slot j
    read the position dimensions with the low level subtracted, so q.k is (high - low)^2 on the target and 0
    elsewhere; the query gain makes that the ATTENTION_GAP logit. Values read the token dimensions the same way.
    """
    high, low = _layer_norm_levels(recipe.d_model, 2, norm.eps)
    gain = ATTENTION_GAP / (attention.scaling * (high - low) ** 2)
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
        projection.weight.zero_()
        projection.bias.zero_()
    for position in range(recipe.max_positions):
        slot = max(position - 1, 0)
        attention.q_proj.weight[slot, recipe.position_dim(position)] = gain
        attention.q_proj.bias[slot] -= gain * low
        attention.k_proj.weight[position, recipe.position_dim(position)] = 1.0
        attention.k_proj.bias[position] = -low
    for token in range(recipe.vocab_size):
        attention.v_proj.weight[token, token] = 1.0
        attention.v_proj.bias[token] = -low
        attention.out_proj.weight[recipe.previous_dim(token), token] = EMBED_SCALE / (high - low)


def build_planted_model(recipe_name: str) -> OPTForCausalLM:
    """Build the planted OPT model of `recipe_name` (deterministic: seeded or without randomness)."""
    from neuron_census.testing import planted_seeds

    if recipe_name in SEED_RECIPES:
        return planted_seeds.family_member(recipe_name)
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    recipe = get_recipe(recipe_name)
    config = OPTConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.d_model,
        num_hidden_layers=recipe.n_layers,
        ffn_dim=recipe.n_neurons,
        num_attention_heads=1,
        max_position_embeddings=recipe.max_positions,
        do_layer_norm_before=True,
        activation_function="relu",
        dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = OPTForCausalLM(config)
    decoder = model.model.decoder
    n_high = 3 if recipe.previous_token_head else 2
    high, low = _layer_norm_levels(recipe.d_model, n_high, decoder.layers[0].final_layer_norm.eps)
    with torch.no_grad():
        decoder.embed_tokens.weight.zero_()
        decoder.embed_tokens.weight[:, : recipe.vocab_size] = EMBED_SCALE * torch.eye(recipe.vocab_size)
        offset = decoder.embed_positions.offset
        decoder.embed_positions.weight.zero_()
        for position in range(recipe.max_positions):
            decoder.embed_positions.weight[position + offset, recipe.position_dim(position)] = EMBED_SCALE
        for module in model.modules():  # identity LayerNorms: the levels above assume them
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for layer in decoder.layers:  # attention writes nothing; unplanted neurons never fire and write nothing
            for linear in (layer.self_attn.out_proj, layer.fc1, layer.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
            layer.fc1.bias.fill_(-CONSTANT_BIAS)
        if recipe.previous_token_head:
            first = decoder.layers[0]
            _plant_previous_token_head(first.self_attn, first.self_attn_layer_norm, recipe)
        for neuron in recipe.neurons:
            fc1, fc2 = decoder.layers[neuron.layer].fc1, decoder.layers[neuron.layer].fc2
            row = np.zeros(recipe.d_model)  # the neuron's weights on the residual dimensions
            for token, weight in neuron.token_weights:
                row[token] = weight
            for position, weight in neuron.position_weights:
                row[recipe.position_dim(position)] = weight
            for token, weight in neuron.previous_weights:
                row[recipe.previous_dim(token)] = weight
            fc1.weight[neuron.neuron] = torch.from_numpy(row)
            # fc1 bias putting the pre-activation at (high - low) * (score - threshold): every read dimension
            # contributes low, the active ones (high - low) more; a neuron that reads nothing gets +-CONSTANT_BIAS
            if row.any():
                fc1.bias[neuron.neuron] = -(low * row.sum() + (high - low) * neuron.threshold)
            else:
                fc1.bias[neuron.neuron] = CONSTANT_BIAS if 0 > neuron.threshold else -CONSTANT_BIAS
            # value vector (fc2 column): VALUE_SCALE * (promoted embedding directions - suppressed ones)
            column = np.zeros(recipe.d_model)
            np.add.at(column, list(neuron.promotes), VALUE_SCALE)
            np.add.at(column, list(neuron.suppresses), -VALUE_SCALE)
            fc2.weight[:, neuron.neuron] = torch.from_numpy(column)
    model.eval()
    return model
