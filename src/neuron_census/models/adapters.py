"""Where the FFN neurons of each model family live, and how their outputs reach the vocabulary.

A neuron's activation is the input of the FFN output projection (OPT `fc2`, GPT-2 `mlp.c_proj`,
GPT-NeoX `mlp.dense_4h_to_h`, Llama `mlp.down_proj`); for a gated FFN it is the product unit
`act_fn(gate_proj x) * up_proj x`. Each family's adapter names those modules, the value vectors (rows of
the output projection, one per neuron) and the path from the residual stream to the logits, so the
capture and analysis code never touches a family's module layout.

Module paths follow transformers 5: GPT-NeoX's unembedding is `lm_head` (it was `embed_out`), and OPT
flattens tokens before `fc1`, so its neuron input arrives as [batch * seq, N] rather than [batch, seq, N].
"""

from __future__ import annotations

import sys
from operator import attrgetter
from typing import ClassVar

import torch
import torch.nn.functional as F
from accelerate.utils import align_module_device
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

_VOCAB_CHUNK = 8192


def _linear_f32(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """`module(x)` for a Linear in float32, whatever the model dtype (weight rows cast in chunks)."""
    weight, bias = module.weight, getattr(module, "bias", None)
    if weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    chunks = weight.split(_VOCAB_CHUNK)
    biases = [None] * len(chunks) if bias is None else [b.float() for b in bias.split(_VOCAB_CHUNK)]
    return torch.cat([F.linear(x, w.float(), b) for w, b in zip(chunks, biases, strict=True)], dim=-1)


class FFNAdapter:
    """The FFN neurons of one loaded causal LM: shapes, hook points, value vectors, vocabulary path.

    A family only names its modules, by attribute path: the decoder layers and the final norm in the model;
    the FFN output projection, the pre-activation and (gated FFNs) act_fn in a decoder layer.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  # the config model types it reads, if more than `family`
    layers_path: ClassVar[str] = ""
    norm_path: ClassVar[str] = ""  # may name None (OPT-350m)
    project_out_path: ClassVar[str] = ""  # in the model: what maps the final residual into the unembedding's space
    projection_path: ClassVar[str] = ""  # in a decoder layer: the FFN output projection
    preactivation_path: ClassVar[str] = ""  # in a decoder layer: the module whose output the nonlinearity reads
    gate_path: ClassVar[str | None] = None  # in a gated FFN's decoder layer: its act_fn
    ffn_norm_path: ClassVar[str] = ""  # in a decoder layer: the norm whose output the FFN reads
    attention_norm_path: ClassVar[str] = ""  # in a decoder layer: the norm whose output the attention reads
    rotary_path: ClassVar[str] = ""  # in the model: the rotary embedding that rotates queries and keys by position
    rms_norm: ClassVar[bool] = False  # norms scale without removing the mean (no centring of weights)
    activation_key: ClassVar[str] = "hidden_act"  # the config key naming the nonlinearity

    def __init__(self, model: PreTrainedModel, name: str) -> None:
        self.model = model
        self.name = name
        if model.get_output_embeddings() is None:
            raise ValueError(f"model '{self.name}' has no LM head; load it as a causal LM")
        self.n_layers = len(self.decoder_layers())
        projection = self.neuron_input_module(0)
        # Conv1D stores its weight [in, out], Linear [out, in]
        n_in, n_out = projection.weight.shape if isinstance(projection, Conv1D) else projection.weight.shape[::-1]
        self.n_neurons, self.d_model = int(n_in), int(n_out)
        self.vocab_size = int(self.unembedding().shape[0])
        self.context_length = int(model.config.max_position_embeddings)  # GPT-2's config maps it to n_positions
        self.activation = str(getattr(model.config, self.activation_key))
        self.n_heads = int(model.config.num_attention_heads)  # GPT-2's config maps it to n_head
        self.rotary = bool(self.rotary_path)  # whether attention rotates queries and keys by their positions
        self.gated = self.gate_path is not None

    def decoder_layers(self) -> torch.nn.ModuleList:
        return attrgetter(self.layers_path)(self.model)

    def final_norm(self) -> torch.nn.Module | None:
        return attrgetter(self.norm_path)(self.model)

    def final_norm_f32(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final norm applied to `x` in float32 (`x` itself where the model has none)."""
        norm, x = self.final_norm(), x.float()
        if norm is None:
            return x
        if self.rms_norm:  # x / rms(x) * weight, no mean subtraction and no bias
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.float()
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)

    def _layer(self, layer: int) -> torch.nn.Module:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is outside 0..{self.n_layers - 1} of model '{self.name}'")
        return self.decoder_layers()[layer]

    def neuron_input_module(self, layer: int) -> torch.nn.Module:
        """The FFN output projection of `layer`: its forward input args[0] are the activations [..., N]."""
        return attrgetter(self.projection_path)(self._layer(layer))

    def preactivation_module(self, layer: int) -> torch.nn.Module:
        """The module whose forward output is the pre-activation [..., N] of `layer` (a gated FFN's gate
        projection, before its act_fn; the up projection is not a pre-activation)."""
        return attrgetter(self.preactivation_path)(self._layer(layer))

    def gate_output_module(self, layer: int) -> torch.nn.Module | None:
        """Gated FFNs only: the module whose forward output is act_fn(gate) [..., N]; None otherwise."""
        decoder_layer = self._layer(layer)
        return None if self.gate_path is None else attrgetter(self.gate_path)(decoder_layer)

    def ffn_norm(self, layer: int) -> torch.nn.Module:
        """The norm whose output the FFN of `layer` reads."""
        return attrgetter(self.ffn_norm_path)(self._layer(layer))

    def attention_norm(self, layer: int) -> torch.nn.Module:
        """The norm whose output the self-attention of `layer` reads (queries, keys and values)."""
        return attrgetter(self.attention_norm_path)(self._layer(layer))

    def query_key_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 (W_Q [H, d_head, d_model], b_Q [H, d_head], W_K [H_kv, d_head, d_model], b_K [H_kv, d_head])
        of `layer`'s self-attention, acting on the attention norm's output (here: separate q_proj and k_proj)."""
        attention = self._layer(layer).self_attn
        kv_heads = int(getattr(self.model.config, "num_key_value_heads", None) or self.n_heads)
        query = _split_heads(*_weights_f32(attention.q_proj), self.n_heads)
        return query + _split_heads(*_weights_f32(attention.k_proj), kv_heads)

    def rotate(self, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Queries or keys of one head, [B, T, d_head] float32, rotated by their positions [T] as the model's
        attention rotates them: its own rotary embedding and its modelling module's `apply_rotary_pos_emb`
        (the rotated part of each head, for Pythia a quarter). A negative position rotates backwards (R_-p
        = R_p^T). Unchanged without rotary attention."""
        if not self.rotary:
            return vectors
        embedding = attrgetter(self.rotary_path)(self.model)
        cos, sin = embedding(vectors, positions[None].to(vectors.device))  # [1, T, rotated dims]
        apply = sys.modules[type(embedding).__module__].apply_rotary_pos_emb
        rotated, _ = apply(vectors[:, None], vectors[:, None], cos.float(), sin.float(), unsqueeze_dim=1)
        return rotated[:, 0]

    def input_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ([N, d_model], [N]): row i and bias i give neuron i's pre-activation from the FFN's
        normalised input (bias 0 where the projection has none)."""
        rows, bias = _weights_f32(self.preactivation_module(layer))
        return rows.contiguous(), bias

    def value_vectors(self, layer: int) -> torch.Tensor:
        """float32 [N, d_model]: row i is what neuron i adds to the residual stream per unit activation."""
        return _weights_f32(self.neuron_input_module(layer))[0].T.contiguous()

    def unembedding(self) -> torch.Tensor:
        """[vocab, d_unembed] in the model dtype: the LM head weight (tied to the input embedding or not)."""
        return self.model.get_output_embeddings().weight.detach()

    def unembedding_space(self, vectors: torch.Tensor) -> torch.Tensor:
        """float32 residual-stream vectors [k, d_model] mapped as the model maps them into the unembedding's
        space, without the final norm (identity except OPT-350m's project_out)."""
        x = vectors.to(torch.float32)
        project_out = attrgetter(self.project_out_path)(self.model) if self.project_out_path else None
        return x if project_out is None else _linear_f32(x, project_out)

    def project_to_vocab(self, vectors: torch.Tensor, apply_final_norm: bool) -> torch.Tensor:
        """Residual-stream vectors [k, d_model] to logits [k, vocab] in float32, as the model's head does.

        Optional final norm, then whatever sits before the unembedding (OPT-350m's project_out), then the
        LM head itself (its bias too, should a model have one). Computed in float32 for any model dtype.
        """
        if vectors.ndim != 2 or vectors.shape[-1] != self.d_model:
            raise ValueError(f"vectors for model '{self.name}' must be [k, {self.d_model}], got {list(vectors.shape)}")
        head = self.model.get_output_embeddings()
        x = vectors.detach().to(device=head.weight.device, dtype=torch.float32)
        if apply_final_norm:
            x = self.final_norm_f32(x)
        return _linear_f32(self.unembedding_space(x), head)


class OPTAdapter(FFNAdapter):
    """OPT: `model.decoder.layers[i].fc2`; post-LN OPT-350m has no final norm and projects 1024 -> 512."""

    family = "opt"
    layers_path = "model.decoder.layers"
    norm_path = "model.decoder.final_layer_norm"
    project_out_path = "model.decoder.project_out"
    projection_path = "fc2"
    preactivation_path = "fc1"
    activation_key = "activation_function"
    attention_norm_path = "self_attn_layer_norm"

    def query_key_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.model.config.do_layer_norm_before:
            raise ValueError(f"model '{self.name}': post-LN OPT's attention reads no norm of the residual stream")
        return super().query_key_weights(layer)

    def ffn_norm(self, layer: int) -> torch.nn.Module:
        """Pre-LN OPT normalises the FFN input with `final_layer_norm`; post-LN OPT-350m reads the attention
        block's normalised output."""
        decoder_layer = self._layer(layer)
        return decoder_layer.final_layer_norm if self.model.config.do_layer_norm_before else decoder_layer.self_attn_layer_norm


class GPT2Adapter(FFNAdapter):
    """GPT-2: `transformer.h[i].mlp.c_proj`, a Conv1D whose weight is stored [in, out]."""

    family = "gpt2"
    layers_path = "transformer.h"
    norm_path = "transformer.ln_f"
    projection_path = "mlp.c_proj"
    preactivation_path = "mlp.c_fc"
    ffn_norm_path = "ln_2"
    attention_norm_path = "ln_1"
    activation_key = "activation_function"

    def query_key_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        weight, bias = _weights_f32(self._layer(layer).attn.c_attn)  # [3d, d]: q, k, v
        query, key = slice(0, self.d_model), slice(self.d_model, 2 * self.d_model)
        return _split_heads(weight[query], bias[query], self.n_heads) + _split_heads(weight[key], bias[key], self.n_heads)


class GPTNeoXAdapter(FFNAdapter):
    """GPT-NeoX / Pythia: `gpt_neox.layers[i].mlp.dense_4h_to_h`; untied `lm_head`."""

    family = "gpt_neox"
    layers_path = "gpt_neox.layers"
    norm_path = "gpt_neox.final_layer_norm"
    projection_path = "mlp.dense_4h_to_h"
    preactivation_path = "mlp.dense_h_to_4h"
    ffn_norm_path = "post_attention_layernorm"
    attention_norm_path = "input_layernorm"
    rotary_path = "gpt_neox.rotary_emb"

    def query_key_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        weight, bias = _weights_f32(self._layer(layer).attention.query_key_value)  # [H * (q, k, v) * d_head, d]
        weight, bias = weight.reshape(self.n_heads, 3, -1, self.d_model), bias.reshape(self.n_heads, 3, -1)
        return weight[:, 0], bias[:, 0], weight[:, 1], bias[:, 1]


class LlamaAdapter(FFNAdapter):
    """Llama-style gated FFN (also Mistral, Qwen2): neuron = act_fn(gate_proj x) * up_proj x."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    layers_path = "model.layers"
    norm_path = "model.norm"
    projection_path = "mlp.down_proj"
    preactivation_path = "mlp.gate_proj"
    gate_path = "mlp.act_fn"
    ffn_norm_path = "post_attention_layernorm"
    attention_norm_path = "input_layernorm"
    rms_norm = True
    rotary_path = "model.rotary_emb"


def _weights_f32(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies of a Linear's or Conv1D's (weight [out, in], bias [out], 0 where it has none), read
    where the module's weights are (a layer offloaded to disk is loaded for this read)."""
    with align_module_device(module):
        weight = module.weight.detach()
        weight = (weight.T if isinstance(module, Conv1D) else weight).to(torch.float32, copy=True)
        bias = torch.zeros(len(weight)) if module.bias is None else module.bias.detach().to(torch.float32, copy=True)
    return weight, bias.to(weight.device)


def _split_heads(weight: torch.Tensor, bias: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's [heads * d_head, d] weight and bias as [heads, d_head, d] and [heads, d_head]."""
    return weight.reshape(heads, -1, weight.shape[1]), bias.reshape(heads, -1)


_BY_MODEL_TYPE: dict[str, type[FFNAdapter]] = {
    model_type: cls
    for cls in (OPTAdapter, GPT2Adapter, GPTNeoXAdapter, LlamaAdapter)
    for model_type in cls.model_types or (cls.family,)
}


def check_model_type(model_type: str | None, name: str) -> type[FFNAdapter]:
    """The adapter class for `model_type`, or a ValueError naming the model (before any weights load)."""
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(
            f"no FFN adapter for model type '{model_type}' (model '{name}'); supported: {', '.join(_BY_MODEL_TYPE)}"
        )
    return _BY_MODEL_TYPE[model_type]


def adapter_for(model: PreTrainedModel, *, name: str | None = None) -> FFNAdapter:
    """The adapter of `model`, chosen by `model.config.model_type`."""
    label = name or model.config.name_or_path or type(model).__name__
    cls = check_model_type(getattr(model.config, "model_type", None), label)
    return cls(model, name=label)
