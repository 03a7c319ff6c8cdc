"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from neuron_census.accumulators import State, base
from neuron_census.capture.store import StoreReader, fold, merged_attrs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def merge_stores(paths: Sequence[str | os.PathLike[str]]) -> tuple[dict[str, Any], dict[str, State]]:
    """Stores merged in memory, whole states folded in one store at a time: what `merge_store_files` must write."""
    readers = [StoreReader(path) for path in paths]
    attrs = merged_attrs(readers)
    return attrs, {name: fold(name, (reader.state(name) for reader in readers)) for name in readers[0].names}


@pytest.fixture(params=["cpu", "cpu-gpu-paths", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """The device an accumulator runs on, against the same slow references: the CPU with its own code paths
    (`accumulators.base.host_paths`), the CPU taking a GPU's paths, and a GPU where one is present."""
    if request.param == "cpu-gpu-paths":
        monkeypatch.setattr(base, "HOST_PATHS", False)
        return torch.device("cpu")
    return torch.device(request.param)


# The two files that run Snakemake for minutes go first: with `--dist loadfile` and `--no-loadscope-reorder`
# (pyproject.toml) each worker then starts on one of them and the short files fill in around them. xdist's
# own order, files with the most tests first, started both long files last.
LONG_FILES = ("test_workflow.py", "test_workflow_plans.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: the files keep their own order
