"""The CPU sorts of integer keys against torch's own ops."""

import numpy as np
import pytest
import torch

from neuron_census.accumulators.sorting import count_keys, stable_order


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n", [0, 1, 7, 5000, -5000])  # -5000: 5000 distinct keys
def test_count_keys_is_unique_with_counts(dtype, n):
    rng = np.random.default_rng(abs(n))
    keys = torch.from_numpy(rng.permutation(-n) if n < 0 else rng.integers(0, max(1, n // 3), n)).to(dtype)
    expected = torch.unique(keys, return_counts=True)
    got = count_keys(keys.clone())
    assert got[0].dtype == dtype and got[1].dtype == torch.int64
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("bound", [4, 1 << 40, 1 << 62])  # the last does not pack: torch's argsort
def test_stable_order_is_a_stable_argsort(bound):
    keys = torch.from_numpy(np.random.default_rng(1).integers(0, bound, 3000, dtype=np.int64))
    order = stable_order(keys, bound)
    assert torch.equal(order, torch.argsort(keys, stable=True))  # with 4 distinct keys, ties everywhere
