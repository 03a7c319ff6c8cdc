"""Host copies of accumulator tensors: values, dtypes and shapes as `.cpu()` gives them, in one wait."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_census.capture.host_copies import host_array, host_arrays, host_tensors

from conftest import needs_cuda


def test_host_copies_hold_the_values_dtypes_and_shapes(device):
    tensors = [
        torch.arange(12, dtype=torch.int64, device=device).reshape(3, 4),
        torch.linspace(-1, 1, 7, dtype=torch.float32, device=device),
        torch.arange(20, dtype=torch.float64, device=device).reshape(4, 5)[1:3],  # a strided view
        torch.zeros(0, dtype=torch.int64, device=device),
    ]
    arrays = host_arrays(*tensors)
    for tensor, array in zip(tensors, arrays):
        expected = tensor.cpu().numpy()
        assert array.dtype == expected.dtype and array.shape == expected.shape
        np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(host_array(tensors[0]), np.arange(12).reshape(3, 4))


@pytest.mark.gpu
@needs_cuda
def test_copies_from_a_gpu_are_page_locked_and_keep_the_values_they_had():
    source = torch.arange(1 << 20, dtype=torch.int32, device="cuda")
    first, second = host_tensors(source, source * 2)
    source.add_(1)  # queued after the copies: they must hold the values from before
    assert first.device.type == "cpu" and first.is_pinned() and second.is_pinned()
    np.testing.assert_array_equal(first.numpy(), np.arange(1 << 20))
    np.testing.assert_array_equal(second.numpy(), 2 * np.arange(1 << 20))
