"""A model whose FFN sub-updates are known (Geva et al. 2022): at a trigger token, layer 1's FFN turns the
prediction from a candidate token B to a token A through exactly two neurons.

Attention writes nothing and positions add nothing, so the residual stream at a token is its embedding plus
the FFN outputs before it. The unembedding's rows are orthonormal and orthogonal to the all-ones direction
(which the final LayerNorm removes), so the logit lens ranks tokens by u_v . x. The trigger's embedding is
3 u_B + 0.5 u_A, so before layer 1's FFN B leads, A follows and every other token scores 0: B is the one
candidate. Every other embedding is orthogonal to u_B. Two neurons of layer 1 read u_B and fire (at about
2) only at the trigger: the promoter writes 2 (u_A + 0.1 u_B), raising A most; the eliminator writes
-2 (u_B + 0.1 u_A), lowering B most. After layer 1 the stream is about 4.1 u_A - 0.6 u_B: A is the
prediction from layer 1 on, its saturation layer. Every other value vector is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM


@dataclass(frozen=True)
class SubupdatePlant:
    model: OPTForCausalLM
    trigger: int  # the token at which layer 1's FFN changes the prediction
    promoted: int  # A: the final prediction at the trigger
    candidate: int  # B: the prediction before layer 1's FFN, pushed down
    promoter: tuple[int, int]  # (layer, neuron) whose sub-update raises A
    eliminator: tuple[int, int]  # (layer, neuron) whose sub-update lowers B
    saturation_layer: int


VOCAB, D_MODEL, N_LAYERS, N_NEURONS, POSITIONS = 48, 64, 3, 32, 64  # the planted words tokenizer's vocabulary
TRIGGER, PROMOTED, CANDIDATE = 20, 30, 40


def build_subupdate_model(seed: int = 0) -> SubupdatePlant:
    rng = np.random.default_rng(seed)
    config = OPTConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, ffn_dim=N_NEURONS, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        max_position_embeddings=POSITIONS + 2, word_embed_proj_dim=D_MODEL, do_layer_norm_before=True, activation_function="relu",
        pad_token_id=1, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False, dropout=0.0,
    )
    torch.manual_seed(seed)
    model = OPTForCausalLM(config).eval()
    centred = np.linalg.qr(np.eye(D_MODEL) - 1.0 / D_MODEL)[0][:, : D_MODEL - 1]  # a basis orthogonal to the ones
    unembedding = (centred @ np.linalg.qr(rng.standard_normal((D_MODEL - 1, VOCAB)))[0]).T  # [V, d], orthonormal rows
    u = {token: unembedding[token] for token in (PROMOTED, CANDIDATE)}
    embedding = rng.standard_normal((VOCAB, D_MODEL))
    embedding -= np.outer(embedding @ u[CANDIDATE], u[CANDIDATE])  # no token but the trigger reads as B
    embedding[TRIGGER] = 3.0 * u[CANDIDATE] + 0.5 * u[PROMOTED]
    promoter, eliminator = (1, 3), (1, 7)
    decoder = model.model.decoder
    as_tensor = lambda array: torch.from_numpy(np.asarray(array, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        model.lm_head.weight.copy_(as_tensor(unembedding))
        decoder.embed_tokens.weight.copy_(as_tensor(embedding))
        decoder.embed_positions.weight.zero_()
        for layer in decoder.layers:
            for silent in (layer.self_attn.out_proj, layer.fc2):
                silent.weight.zero_()
                silent.bias.zero_()
        fc1, fc2 = decoder.layers[1].fc1, decoder.layers[1].fc2
        for neuron, value in ((promoter[1], u[PROMOTED] + 0.1 * u[CANDIDATE]), (eliminator[1], -(u[CANDIDATE] + 0.1 * u[PROMOTED]))):
            # the normalised trigger reads 7.9 along u_B (its spread is 0.38 per dimension): about 2 there, -2 elsewhere
            fc1.weight[neuron] = as_tensor(0.5 * u[CANDIDATE])
            fc1.bias[neuron] = -2.0
            fc2.weight[:, neuron] = as_tensor(2.0 * value)
    return SubupdatePlant(model, TRIGGER, PROMOTED, CANDIDATE, promoter, eliminator, saturation_layer=1)
