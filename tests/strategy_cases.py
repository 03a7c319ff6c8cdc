"""Models, tokens and settings shared by the execution-strategy tests on the CPU and on a GPU."""

from __future__ import annotations

import numpy as np
import torch

from neuron_census.capture.engine import CaptureSettings

SPECS = {
    "opt-125m": {"source": "random", "architecture": "opt-125m", "n_layers": 3},
    "opt-350m": {"source": "random", "architecture": "opt-350m", "n_layers": 3},
    "gpt2": {"source": "random", "architecture": "gpt2", "n_layers": 3},
    "pythia-70m": {"source": "random", "architecture": "pythia-70m", "n_layers": 3},
    "stories260k": {"source": "local", "path": "resources/models/stories260K"},
}
SETTINGS = CaptureSettings(batch_size=3, top_k=4, ngram_capacity=32, ngram_layers="all")


def sample_tokens(vocab_size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, min(vocab_size, 1000), size=(7, 24))  # 7 rows: the last batch is short
    tokens[:, 0] = 2
    return tokens


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def assert_same_states(expected: dict, got: dict) -> None:
    assert sorted(expected) == sorted(got)
    for accumulator, state in expected.items():
        assert sorted(state) == sorted(got[accumulator]), accumulator
        for key, value in state.items():
            np.testing.assert_array_equal(got[accumulator][key], value, err_msg=f"{accumulator}.{key}")
