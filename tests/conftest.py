"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device an accumulator runs on: the CPU always, and a GPU where one is present, against the
    same slow references (the GPU takes other code paths: one product for the squares, device-side sorts)."""
    return torch.device(request.param)
