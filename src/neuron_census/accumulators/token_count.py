"""Occurrences of every token among counted positions: the denominator of token detectors (Voita Sec. 4)."""

from __future__ import annotations

from typing import ClassVar

import torch

from neuron_census.accumulators.base import Accumulator, Geometry, LayerBatch, Memory, State, sum_states
from neuron_census.capture.host_copies import host_array


class TokenCount(Accumulator):
    name: ClassVar[str] = "token_count"
    layered: ClassVar[bool] = False
    sums: ClassVar[bool] = True
    shared_keys: ClassVar[tuple[str, ...]] = ("counts",)

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        self.counts = torch.zeros(geometry.vocab_size, dtype=torch.int64, device=device)
        self._first_layer = geometry.layers[0]

    def update(self, batch: LayerBatch) -> None:
        """A scatter-add of the mask: `bincount` would size its output from the data (a wait on a GPU)."""
        if batch.layer == self._first_layer:
            self.counts.index_add_(0, batch.tokens_flat(), batch.mask.reshape(-1).to(torch.int64))

    def state(self) -> State:
        return {"counts": host_array(self.counts)}

    merge = staticmethod(sum_states)

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        return Memory(device=geometry.vocab_size * 8, host=geometry.vocab_size * 8)
