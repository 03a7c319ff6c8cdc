"""Check the TransformerLens and nnsight baselines against a bare-HF fc2 pre-hook reference.

Run in the benchmark environment: `.venv-bench/bin/python benchmarks/test_baselines_check.py`
(also collectable by pytest there). Offline: HF_HUB_OFFLINE is set before anything is imported.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import nnsight  # noqa: F401
    import transformer_lens  # noqa: F401
except ImportError:
    if "pytest" not in sys.modules:
        raise
    import pytest

    pytest.skip("needs the benchmark environment (benchmarks/requirements.txt)", allow_module_level=True)

from baselines import (  # noqa: E402
    nnsight_counts,
    reference_counts,
    transformer_lens_counts,
    transformer_lens_model,
)
from neuron_census.models.zoo import build_random_model  # noqa: E402

N_SEQ, SEQ_LEN, N_LAYERS, BATCH = 4, 64, 2, 3  # batch 3: the last batch is ragged


def _setup() -> tuple[torch.nn.Module, torch.Tensor]:
    model = build_random_model("opt-125m", seed=0, n_layers=N_LAYERS)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, model.config.vocab_size, (N_SEQ, SEQ_LEN), generator=generator)
    tokens[:, 0] = model.config.bos_token_id
    return model, tokens


def _assert_same(name: str, got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    for label, g, w in zip(("fire_count", "position_fire_count"), got, want):
        assert g.dtype == np.int64, f"{name} {label}: dtype {g.dtype}"
        assert g.shape == w.shape, f"{name} {label}: shape {g.shape} != {w.shape}"
        assert np.array_equal(g, w), f"{name} {label}: {int((g != w).sum())} entries differ"


def test_tl_logits_match_hf() -> None:
    model, tokens = _setup()
    tl_model = transformer_lens_model(model)
    with torch.inference_mode():
        hf_logits = model(input_ids=tokens, use_cache=False).logits
        tl_logits = tl_model(tokens)
    assert torch.allclose(hf_logits, tl_logits, atol=1e-4, rtol=1e-4), (hf_logits - tl_logits).abs().max()


def test_counts_match_reference() -> None:
    model, tokens = _setup()
    layers = list(range(N_LAYERS))
    want = reference_counts(model, tokens, BATCH, layers)
    fire, position = want
    assert fire.shape == (N_LAYERS, model.config.ffn_dim)
    assert position.shape == (N_LAYERS, SEQ_LEN, model.config.ffn_dim)
    assert not position[:, 0].any() and 0 < fire.sum() < N_LAYERS * N_SEQ * (SEQ_LEN - 1) * model.config.ffn_dim
    _assert_same("transformer_lens", transformer_lens_counts(transformer_lens_model(model), tokens, BATCH, layers), want)
    _assert_same("nnsight", nnsight_counts(model, tokens, BATCH, layers), want)


def test_layer_subset() -> None:
    model, tokens = _setup()
    want = reference_counts(model, tokens, N_SEQ, [1])
    _assert_same("transformer_lens[1]", transformer_lens_counts(transformer_lens_model(model), tokens, N_SEQ, [1]), want)
    _assert_same("nnsight[1]", nnsight_counts(model, tokens, N_SEQ, [1]), want)
    want0 = reference_counts(model, tokens, N_SEQ, [0])
    _assert_same("transformer_lens[0]", transformer_lens_counts(transformer_lens_model(model), tokens, N_SEQ, [0]), want0)
    _assert_same("nnsight[0]", nnsight_counts(model, tokens, N_SEQ, [0]), want0)


if __name__ == "__main__":
    tests = [test_tl_logits_match_hf, test_counts_match_reference, test_layer_subset]
    failed = 0
    for test in tests:
        try:
            test()
            print(f"PASS {test.__name__}")
        except Exception as error:  # noqa: BLE001
            failed += 1
            print(f"FAIL {test.__name__}: {type(error).__name__}: {error}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
