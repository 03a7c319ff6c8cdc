"""Firings per (position, neuron) and counted tokens per position: positional neurons (Voita Sec. 5)."""

from __future__ import annotations

from typing import ClassVar

import torch

from neuron_census.accumulators.base import Accumulator, ExactFloatCounts, Geometry, LayerBatch, Memory, State, sum_states
from neuron_census.capture.host_copies import host_array


class PositionFireCount(Accumulator):
    name: ClassVar[str] = "position_fire_count"
    sums: ClassVar[bool] = True
    layer_keys: ClassVar[tuple[str, ...]] = ("counts",)
    shared_keys: ClassVar[tuple[str, ...]] = ("tokens",)

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        shape = (len(geometry.layers), geometry.seq_len, geometry.n_neurons)
        self.counts = ExactFloatCounts(shape, device)
        self.tokens = torch.zeros(geometry.seq_len, dtype=torch.int64, device=device)
        self._first_layer = geometry.layers[0]

    def update(self, batch: LayerBatch) -> None:
        self.counts.add(self.geometry.slot(batch.layer), batch.position_fires(), float(batch.fires.shape[0]))
        if batch.layer == self._first_layer:
            self.tokens += batch.mask.sum(dim=0)

    def take_layer(self, layer: int) -> State:
        """Tokens per position are counted at the first layer, so they are complete once any layer is."""
        return {"counts": self.counts.take(self.geometry.slot(layer))[None].numpy(), "tokens": host_array(self.tokens)}

    def state(self) -> State:
        return {"counts": self.counts.result().numpy(), "tokens": host_array(self.tokens)}

    merge = staticmethod(sum_states)

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        layer = geometry.seq_len * geometry.n_neurons
        n_layers = len(geometry.layers)
        n_seq = n_tokens // max(1, geometry.seq_len)
        # rows are released to the host early only when float32 could lose a unit (2**24 sequences)
        host_rows = n_layers if n_seq >= 1 << 24 else min(n_layers, 2)
        return Memory(
            device=(1 if layerwise else n_layers) * layer * 4 + geometry.seq_len * 8,
            host=host_rows * layer * 8 + geometry.seq_len * 8,
        )
