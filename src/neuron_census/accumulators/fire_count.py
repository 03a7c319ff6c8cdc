"""Firings per neuron and counted tokens per layer: dead neurons and firing frequency (Voita Sec. 3)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import Accumulator, ExactFloatCounts, Geometry, LayerBatch, Memory, State, sum_states


class FireCount(Accumulator):
    name: ClassVar[str] = "fire_count"
    sums: ClassVar[bool] = True
    layer_keys: ClassVar[tuple[str, ...]] = ("counts", "tokens")

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        n_layers = len(geometry.layers)
        self.counts = ExactFloatCounts((n_layers, geometry.n_neurons), device)
        self.tokens: list[int | torch.Tensor] = [0] * n_layers  # host ints while the batches say their counts

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        self.counts.add(slot, batch.position_fires().sum(dim=0), float(batch.fires.shape[0] * batch.fires.shape[1]))
        self.tokens[slot] = self.tokens[slot] + batch.counted_tokens()

    def _tokens(self, slots: range) -> np.ndarray:
        return np.asarray([int(self.tokens[slot]) for slot in slots], dtype=np.int64)

    def take_layer(self, layer: int) -> State:
        slot = self.geometry.slot(layer)
        return {"counts": self.counts.take(slot)[None].numpy(), "tokens": self._tokens(range(slot, slot + 1))}

    def state(self) -> State:
        return {"counts": self.counts.result().numpy(), "tokens": self._tokens(range(len(self.geometry.layers)))}

    merge = staticmethod(sum_states)

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        n_layers, n_neurons = len(geometry.layers), geometry.n_neurons
        return Memory(
            device=(1 if layerwise else n_layers) * n_neurons * 4 + n_layers * 8,
            host=n_layers * n_neurons * 8 + n_layers * 8,
        )
