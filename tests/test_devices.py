"""Capture on a GPU and in bfloat16 counts what capture on the CPU in float32 counts.

The planted census model's neurons fire with wide margins, so every exact count (firings per neuron,
position, token and n-gram) must come out identical in bfloat16 and on a GPU; activation values (top-k,
moments) agree to the dtype's precision. On a GPU every execution strategy must also give the resident
capture's accumulators exactly, with the GPU's budget below the model's size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_cuda
from strategy_cases import SETTINGS, SPECS, assert_same_states, model_bytes, sample_tokens

from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.capture.placement import Placement
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import designed_tokens

COUNTS = ("fire_count", "position_fire_count", "token_count", "token_fire_count", "ngram_fire_count", "ngram_count")
CENSUS = {"source": "planted", "recipe": "census"}


def _census_states(device: torch.device, dtype: torch.dtype) -> dict:
    loaded = load_model("census", CENSUS, device=device, dtype=dtype)
    tokens = designed_tokens("census")[:40]
    return capture_tokens(
        loaded.model, loaded.adapter, tokens, model_name="census", first_seq_id=0, has_bos=True,
        settings=CaptureSettings(batch_size=16, ngram_capacity=64), device=device, progress=False,
    )[1]


@pytest.fixture(scope="module")
def census_on_cpu() -> dict:
    return _census_states(torch.device("cpu"), torch.float32)


ON_GPU = [pytest.mark.gpu, needs_cuda]


@pytest.mark.parametrize(
    ("device_name", "dtype"),
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float32, marks=ON_GPU),
        pytest.param("cuda", torch.bfloat16, marks=ON_GPU),
    ],
    ids=["cpu-bfloat16", "cuda-float32", "cuda-bfloat16"],
)
def test_planted_census_counts_equal_the_cpu_float32_ones(device_name, dtype, census_on_cpu):
    got = _census_states(torch.device(device_name), dtype)
    assert sorted(got) == sorted(census_on_cpu)
    assert set(COUNTS) <= set(got)
    assert census_on_cpu["fire_count"]["counts"].sum() > 0
    assert_same_states({name: census_on_cpu[name] for name in COUNTS}, {name: got[name] for name in COUNTS})
    rtol = 1e-5 if dtype == torch.float32 else 2e-2
    expected, values = census_on_cpu["top_k"]["values"], got["top_k"]["values"]
    held = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(values), held)
    np.testing.assert_allclose(values[held], expected[held], rtol=rtol, atol=rtol)
    for key in ("min", "max"):
        np.testing.assert_allclose(got["moments"][key], census_on_cpu["moments"][key], rtol=rtol, atol=rtol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_strategies_agree_on_cuda(dtype, tmp_path):
    """Layerwise (weights on the CPU or on disk, hidden states there or on the GPU) and offload (a GPU budget of 80% of the
    model) give the resident capture's accumulators, on the GPU."""
    spec = SPECS["opt-125m"]
    device = torch.device("cuda")
    tokens = sample_tokens(50272)
    size = model_bytes(load_model("m", spec, dtype=dtype).model)
    results = {}
    for name, placement in {
        "resident": Placement(),
        "layerwise": Placement(strategy="layerwise"),
        "layerwise-disk": Placement(strategy="layerwise", layerwise_states="disk", layerwise_weights="disk"),
        "layerwise-states-on-gpu": Placement(strategy="layerwise", layerwise_states="device"),
        "offload": Placement(strategy="offload", max_memory={"0": int(size * 0.8), "cpu": "8GiB"}),
    }.items():
        folder = tmp_path / name
        loaded = load_model("m", spec, device=device, dtype=dtype, placement=placement, offload_dir=folder)
        results[name] = capture_tokens(
            loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
            settings=SETTINGS, device=device, placement=placement, offload_dir=folder, progress=False,
        )[1]
        if name == "offload":
            assert "cpu" in set(loaded.model.hf_device_map.values())  # the budget really forced offloading
    for name in ("layerwise", "layerwise-disk", "layerwise-states-on-gpu", "offload"):
        assert_same_states(results["resident"], results[name])


def test_layerwise_keeps_nothing_of_a_finished_layer(device, monkeypatch, tmp_path):
    """Under layerwise capture, a layer's per-position counts and sparse tables are handed over after its
    last batch and nothing of them stays, on the device or the host, so memory holds one layer's
    statistics at a time (on the CPU this checks the plumbing)."""
    from neuron_census import accumulators

    seen: list[str] = []

    def checked(cls, check):
        take = cls.take_layer

        def wrapper(self, layer):
            state = take(self, layer)
            check(self, layer)
            seen.append(cls.name)
            return state

        monkeypatch.setattr(cls, "take_layer", wrapper)

    def positions_left(self, layer):
        slot = self.geometry.slot(layer)
        assert slot not in self.counts.partial and slot not in self.counts.total

    def token_table_left(self, layer):
        if self.dense is not None:
            assert self.dense[self.geometry.slot(layer)] is None
            return
        pending = self._pending[self.geometry.slot(layer)]
        assert pending.table.held() == 0 and not pending.pending

    def ngram_tables_left(self, layer):
        if layer in self.layers:
            for pending in self._pending[self.layers.index(layer)].values():
                assert pending.table.held() == 0 and not pending.pending

    checked(accumulators.REGISTRY["position_fire_count"], positions_left)
    checked(accumulators.REGISTRY["token_fire_count"], token_table_left)
    checked(accumulators.REGISTRY["ngram_fire_count"], ngram_tables_left)
    placement = Placement(strategy="layerwise")
    loaded = load_model("m", SPECS["opt-125m"], device=device, placement=placement)
    capture_tokens(
        loaded.model, loaded.adapter, sample_tokens(50272), model_name="m", first_seq_id=0, has_bos=True,
        settings=SETTINGS, device=device, placement=placement, offload_dir=tmp_path, progress=False,
    )
    assert sorted(set(seen)) == ["ngram_fire_count", "position_fire_count", "token_fire_count"]
    assert len(seen) == 3 * loaded.adapter.n_layers
