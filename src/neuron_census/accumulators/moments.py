"""Sum, sum of squares, minimum and maximum of every neuron's activation (activation statistics)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import Accumulator, Geometry, LayerBatch, Memory, Parts, State, StateArrays, appended, layered
from neuron_census.capture.host_copies import host_arrays

KEYS = ("sum", "sum_sq", "min", "max")


class Moments(Accumulator):
    """Sums are accumulated in float64 within each batch's reduction and across batches, on every device
    alike: a few ops per (layer, batch) over the counted positions, none of which waits for the device."""

    name: ClassVar[str] = "moments"

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        n = geometry.n_neurons
        slots = range(len(geometry.layers))
        self.total = [torch.zeros(n, dtype=torch.float64, device=device) for _ in slots]
        self.squares = [torch.zeros(n, dtype=torch.float64, device=device) for _ in slots]
        self.minimum = [torch.full((n,), torch.inf, dtype=torch.float32, device=device) for _ in slots]
        self.maximum = [torch.full((n,), -torch.inf, dtype=torch.float32, device=device) for _ in slots]

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        if batch.counted_from is not None:  # a view past the BOS: no copy, no wait for the device
            counted, dims = batch.acts[:, batch.counted_from :], (0, 1)
        else:
            counted, dims = batch.acts_2d()[batch.mask.reshape(-1)], (0,)
        if counted.numel() == 0:
            return
        # float64 accumulation inside one reduction each (no float64 copy of the batch)
        self.total[slot] += counted.sum(dim=dims, dtype=torch.float64)
        norm = torch.linalg.vector_norm(counted, 2, dim=dims, dtype=torch.float64)
        self.squares[slot].addcmul_(norm, norm)
        low, high = counted.amin(dim=dims), counted.amax(dim=dims)
        if low.dtype != torch.float32:  # a bfloat16 batch's extremes are exact in float32
            low, high = low.float(), high.float()
        torch.minimum(self.minimum[slot], low, out=self.minimum[slot])
        torch.maximum(self.maximum[slot], high, out=self.maximum[slot])

    def _arrays(self, slots: list[int]) -> State:
        arrays = (self.total, self.squares, self.minimum, self.maximum)
        return dict(zip(KEYS, host_arrays(*(torch.stack([array[s] for s in slots]) for array in arrays))))

    def take_layer(self, layer: int) -> State:
        return self._arrays([self.geometry.slot(layer)])

    def state(self) -> State:
        return self._arrays(list(range(len(self.geometry.layers))))

    @staticmethod
    def merge(states: list[State]) -> State:
        return {
            "sum": np.sum([s["sum"] for s in states], axis=0),
            "sum_sq": np.sum([s["sum_sq"] for s in states], axis=0),
            "min": np.min([s["min"] for s in states], axis=0),
            "max": np.max([s["max"] for s in states], axis=0),
        }

    @staticmethod
    def read_layer(arrays: StateArrays, slot: int, layer: int) -> State:
        return layered(arrays, KEYS, slot)

    @staticmethod
    def layer_parts(state: State, slot: int, counted_before: int) -> Parts:
        return appended(state, KEYS)

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        cells = len(geometry.layers) * geometry.n_neurons
        return Memory(device=cells * (8 + 8 + 4 + 4), host=cells * (8 + 8 + 4 + 4))
