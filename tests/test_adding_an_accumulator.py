"""ARCHITECTURE.md's worked example: an accumulator defined in one place runs in a capture, is written to a
store and merged from shards, with no other change."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from neuron_census.accumulators import REGISTRY, Geometry, LayerBatch, Memory, State
from neuron_census.accumulators.base import Accumulator, sum_states
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.capture.host_copies import host_array
from neuron_census.capture.store import StoreReader, merge_store_files, write_store
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import designed_tokens


class ActivationSum(Accumulator):
    name: ClassVar[str] = "activation_sum"
    sums: ClassVar[bool] = True
    default: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {"absolute": False}
    layer_keys: ClassVar[tuple[str, ...]] = ("sum",)

    def __init__(self, geometry: Geometry, device: torch.device, *, absolute: bool) -> None:
        self.geometry, self.absolute = geometry, absolute
        self.total = torch.zeros(len(geometry.layers), geometry.n_neurons, dtype=torch.float64, device=device)

    def update(self, batch: LayerBatch) -> None:
        acts = batch.acts_2d().abs() if self.absolute else batch.acts_2d()
        self.total[self.geometry.slot(batch.layer)] += acts.sum(0, dtype=torch.float64)

    def take_layer(self, layer: int) -> State:
        slot = self.geometry.slot(layer)
        return {"sum": host_array(self.total[slot : slot + 1])}

    def state(self) -> State:
        return {"sum": host_array(self.total)}

    merge = staticmethod(sum_states)

    @classmethod
    def memory(cls, settings, geometry, *, layerwise, n_tokens) -> Memory:
        cells = len(geometry.layers) * geometry.n_neurons * 8
        return Memory(device=cells, host=cells)


def test_a_new_accumulator_registers_itself_and_runs_end_to_end(tmp_path):
    assert REGISTRY["activation_sum"] is ActivationSum
    loaded = load_model("census", {"source": "planted", "recipe": "census"})
    tokens = designed_tokens("census")[:8]
    settings = CaptureSettings(batch_size=3, accumulators=("activation_sum", "fire_count"))

    def capture(rows: slice) -> dict:
        return capture_tokens(
            loaded.model, loaded.adapter, tokens[rows], model_name="census", first_seq_id=rows.start,
            has_bos=True, settings=settings, device=torch.device("cpu"), progress=False,
        )[1]

    whole = capture(slice(0, 8))
    acts: list[torch.Tensor] = []
    handles = [loaded.adapter.neuron_input_module(layer).register_forward_pre_hook(lambda _m, args: acts.append(args[0]))
               for layer in range(loaded.adapter.n_layers)]
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(tokens), use_cache=False)
    for handle in handles:
        handle.remove()
    expected = np.stack([a.reshape(-1, loaded.adapter.n_neurons).double().sum(0).numpy() for a in acts])
    np.testing.assert_allclose(whole["activation_sum"]["sum"], expected, rtol=1e-9, atol=1e-9)
    attrs = {"model": "census", "datasets": ["d"], "layers": list(range(loaded.adapter.n_layers)), "n_layers_total": loaded.adapter.n_layers,
             "n_neurons": loaded.adapter.n_neurons, "seq_len": 64, "vocab_size": loaded.adapter.vocab_size,
             "tokenizer_fingerprint": "t", "fire_rule": "preactivation", "has_bos": True, "top_k": 16}
    write_store(tmp_path / "a.zarr", attrs | {"sources": ["d/0"]}, capture(slice(0, 5)))
    write_store(tmp_path / "b.zarr", attrs | {"sources": ["d/1"]}, capture(slice(5, 8)))
    merge_store_files([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "m.zarr")
    merged = StoreReader(tmp_path / "m.zarr").state("activation_sum")
    np.testing.assert_allclose(merged["sum"], whole["activation_sum"]["sum"], rtol=1e-12)


def test_an_accumulators_options_come_from_the_capture_config():
    """`capture.accumulator_options.<name>` reaches the accumulator's `__init__`; its defaults are its own,
    and a key it does not declare is refused, naming it."""
    geometry = Geometry(layers=(0,), n_neurons=2, seq_len=3, vocab_size=5)
    acts = torch.tensor([[[1.0, -2.0], [-3.0, 4.0], [0.5, -0.5]]])
    batch = LayerBatch(layer=0, acts=acts, fires=acts > 0, mask=torch.ones(1, 3, dtype=torch.bool),
                       tokens=torch.zeros(1, 3, dtype=torch.int64), seq_ids=torch.zeros(1, dtype=torch.int64), first_seq=0)
    sums = {}
    for options in ({}, {"absolute": True}):
        settings = CaptureSettings.from_config({"accumulators": ["activation_sum"], "accumulator_options": {"activation_sum": options}})
        accumulator = ActivationSum.from_settings(settings, geometry, torch.device("cpu"))
        accumulator.update(batch)
        sums[bool(options)] = accumulator.state()["sum"][0].tolist()
    assert sums == {False: [-1.5, 1.5], True: [4.5, 6.5]}
    with pytest.raises(ValueError, match=r"accumulator_options: activation_sum: unknown options \['absolut'\]; known: \['absolute'\]"):
        CaptureSettings(accumulator_options={"activation_sum": {"absolut": True}})
