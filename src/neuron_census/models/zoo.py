"""Exact configurations of real model families, built with random weights and no download.

Every shape, activation, norm placement, position scheme and vocabulary size matches the public
`config.json` of the model named by `HUB_IDS`, so adapters, hooks and memory estimates can be proven on
the real architectures offline. Only the weights differ: they come from the family's own initialiser,
seeded.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


def _opt(layers: int, hidden: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_type": "opt",
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "activation_function": "relu",
        "do_layer_norm_before": True,
        "enable_bias": True,
        "layer_norm_elementwise_affine": True,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "layerdrop": 0.0,
        "init_std": 0.02,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "ffn_dim": 4 * hidden,
        "num_attention_heads": heads,
        "word_embed_proj_dim": hidden,
        **extra,
    }


def _gpt2(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_ctx": 1024,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
        "n_layer": layers,
        "n_embd": hidden,
        "n_head": heads,
    }


def _pythia(layers: int, hidden: int, heads: int, vocab: int = 50304) -> dict[str, Any]:
    return {
        "model_type": "gpt_neox",
        "max_position_embeddings": 2048,
        "hidden_act": "gelu",
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "use_parallel_residual": True,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_attention_heads": heads,
        "vocab_size": vocab,
    }


def _llama(
    layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, positions: int, vocab: int = 32000
) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": positions,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }


# architecture: (the hub repository whose config.json it reproduces, that config)
_ZOO: dict[str, tuple[str, dict[str, Any]]] = {
    "opt-125m": ("facebook/opt-125m", _opt(12, 768, 12)),
    # post-LN, no final norm, embeddings in 512 dims with project_in/project_out around the 1024-dim stack
    "opt-350m": ("facebook/opt-350m", _opt(24, 1024, 16, word_embed_proj_dim=512, do_layer_norm_before=False)),
    "opt-1.3b": ("facebook/opt-1.3b", _opt(24, 2048, 32)),
    "opt-2.7b": ("facebook/opt-2.7b", _opt(32, 2560, 32)),
    "opt-6.7b": ("facebook/opt-6.7b", _opt(32, 4096, 32)),
    "opt-13b": ("facebook/opt-13b", _opt(40, 5120, 40)),
    "opt-30b": ("facebook/opt-30b", _opt(48, 7168, 56)),
    "opt-66b": ("facebook/opt-66b", _opt(64, 9216, 72)),
    "gpt2": ("gpt2", _gpt2(12, 768, 12)),
    "gpt2-medium": ("gpt2-medium", _gpt2(24, 1024, 16)),
    "pythia-70m": ("EleutherAI/pythia-70m", _pythia(6, 512, 8)),
    "pythia-160m": ("EleutherAI/pythia-160m", _pythia(12, 768, 12)),
    "pythia-410m": ("EleutherAI/pythia-410m", _pythia(24, 1024, 16)),
    "pythia-1b": ("EleutherAI/pythia-1b", _pythia(16, 2048, 8)),
    "pythia-1.4b": ("EleutherAI/pythia-1.4b", _pythia(24, 2048, 16)),
    "pythia-2.8b": ("EleutherAI/pythia-2.8b", _pythia(32, 2560, 32)),
    "pythia-6.9b": ("EleutherAI/pythia-6.9b", _pythia(32, 4096, 32, vocab=50432)),
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", _llama(32, 4096, 11008, 32, 32, 4096)),
    "tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", _llama(22, 2048, 5632, 32, 4, 2048)),
}
ARCHITECTURES: dict[str, dict[str, Any]] = {architecture: config for architecture, (_, config) in _ZOO.items()}
HUB_IDS: dict[str, str] = {architecture: hub for architecture, (hub, _) in _ZOO.items()}


def architecture_config(architecture: str, *, n_layers: int | None = None) -> PretrainedConfig:
    """The HF config of `architecture`; `n_layers` keeps every per-layer shape and only cuts the stack."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{architecture}'; known: {', '.join(ARCHITECTURES)}")
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"n_layers must be at least 1 for architecture '{architecture}', got {n_layers}")
    config = AutoConfig.for_model(**ARCHITECTURES[architecture])
    if n_layers is not None:
        config.num_hidden_layers = n_layers
    return config


def build_random_model(
    architecture: str,
    *,
    seed: int = 0,
    n_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """A causal LM of `architecture` with the family's seeded random init, in eval mode.

    The same (architecture, seed, n_layers) gives identical weights; the global RNG is left untouched.
    `device="meta"` allocates nothing, for shape and parameter-count checks of the largest models.
    """
    config = architecture_config(architecture, n_layers=n_layers)
    target = torch.device(device)
    # built in float32 on the CPU (or nowhere: meta), then cast and moved: every dtype and device gets one init
    with torch.random.fork_rng(devices=[]), target if target.type == "meta" else nullcontext():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to(device=target, dtype=dtype)
    model.config.name_or_path = f"random:{architecture}"
    model.name_or_path = model.config.name_or_path
    return model.eval()
