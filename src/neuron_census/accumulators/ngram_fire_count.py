"""Firings per (layer, neuron, n-gram) in bounded memory: the n-gram coverage of each neuron (Voita Sec. 4.1)."""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import (
    CAPTURE_DEFAULTS,
    Accumulator,
    Geometry,
    JoinedColumns,
    LayerBatch,
    Memory,
    Parts,
    State,
    StateArrays,
    appended,
    keyed,
    once,
    settings_of,
    shared,
)
from neuron_census.accumulators.summaries import batch_ngrams, check_packable, order_keys
from neuron_census.accumulators.tables import KeyTable, PendingCounts, merge_summaries
from neuron_census.capture.host_copies import host_array
from neuron_census.capture.settings import resolve_ngram_layers

ENTRY_BYTES = 16


class NgramFireCount(Accumulator):
    """Each neuron keeps a mergeable Misra-Gries summary of at most `capacity` n-grams per order
    (`summaries`): exact until a neuron meets more distinct n-grams than that, certified bounds afterwards.
    `fires` counts the firings at positions whose n-gram is complete and BOS-free, the denominator of
    coverage. Only the layers in `layers` are counted.

    Per (layer, batch) the firings are added, by n-gram, into a dense table over the batch's distinct
    n-grams, which waits on the device (`tables.PendingCounts`) until the layer's share of `pending_bytes`
    is reached; then one flush adds the waiting tables to the layer's summary. Merge points depend only on
    that layer's batches, so a bounded summary comes out the same under every execution strategy.
    """

    name: ClassVar[str] = "ngram_fire_count"

    def __init__(
        self,
        geometry: Geometry,
        device: torch.device,
        *,
        layers: tuple[int, ...],
        orders: tuple[int, ...] = tuple(CAPTURE_DEFAULTS["ngram_orders"]),
        capacity: int = CAPTURE_DEFAULTS["ngram_capacity"],
        pending_bytes: int = CAPTURE_DEFAULTS["pending_bytes"],
    ) -> None:
        for order in orders:
            check_packable(geometry.vocab_size, order)
        self.geometry, self.device, self.capacity = geometry, device, capacity
        self.layers, self.orders = tuple(layers), tuple(orders)
        n = geometry.n_neurons
        self._fires = [[torch.zeros(n, dtype=torch.int64, device=device) for _ in self.layers] for _ in orders]
        share = max(1, pending_bytes // max(1, len(self.layers) * len(orders)))
        self._pending = [
            {o: PendingCounts(KeyTable(n, geometry.vocab_size**o, capacity, device), by_neuron=True, budget_bytes=share, spare_row=True) for o in orders}
            for _ in self.layers
        ]

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> NgramFireCount:
        layers = resolve_ngram_layers(settings.ngram_layers, geometry.layers, geometry.n_layers_total)
        return cls(geometry, device, layers=layers, orders=settings.ngram_orders, capacity=settings.ngram_capacity,
                   pending_bytes=settings.pending_bytes)

    def update(self, batch: LayerBatch) -> None:
        if batch.layer not in self.layers:
            return
        slot = self.layers.index(batch.layer)
        vocab = self.geometry.vocab_size
        for order in self.orders:
            grams, row_gram = batch.shared(("ngrams", order), lambda: batch_ngrams(batch.tokens, batch.mask, order, vocab, batch.counted_from))
            # row 0 (the spare) counts the firings where no complete n-gram ends: the flush drops it
            gram_of_row = partial(
                batch.shared, ("ngram_of_row", order), lambda: torch.cat([grams.new_full((1,), -1), grams])[row_gram]
            )
            if self._pending[slot][order].add_firings(batch, grams, row_gram, gram_of_row):
                self._flush(slot, order)

    def _flush(self, slot: int, order: int) -> None:
        """Merge the slot's waiting tables of `order`; their n-gram rows' sums are its denominators."""
        totals = self._pending[slot][order].flush()
        if totals is not None:
            self._fires[self.orders.index(order)][slot] += totals

    def flush(self) -> None:
        for slot in range(len(self.layers)):
            for order in self.orders:
                self._flush(slot, order)

    def _state(self, slots: list[int]) -> State:
        """The summaries of `slots`, their groups `index in slots * n_neurons + neuron`: tables join in order."""
        n_neurons = self.geometry.n_neurons
        state = {
            "orders": np.asarray(self.orders, dtype=np.int64),
            "capacity": np.asarray([self.capacity], dtype=np.int64),
            "layers": np.asarray([self.layers[s] for s in slots], dtype=np.int64),
            "fires": host_array(torch.stack([torch.stack([per_slot[s] for s in slots]) for per_slot in self._fires]))
            if slots else np.zeros((len(self.orders), 0, n_neurons), dtype=np.int64),  # [orders, slots, neurons]
        }
        for order in self.orders:
            tables = [self._pending[slot][order].table for slot in slots]
            columns = JoinedColumns(3, sum(table.held() for table in tables))
            for index, table in enumerate(tables):
                for neuron, gram, count in table.parts():
                    columns.append(neuron + index * n_neurons if index else neuron, gram, count)
            state |= dict(zip(order_keys(order), columns.arrays))
        return state

    def take_layer(self, layer: int) -> State:
        """The layer's summaries, waiting tables merged, handed over: the state of a capture of this layer
        alone (empty when its n-grams are not counted)."""
        slots = [self.layers.index(layer)] if layer in self.layers else []
        for slot in slots:
            for order in self.orders:
                self._flush(slot, order)
        state = self._state(slots)
        for slot in slots:
            for pending in self._pending[slot].values():
                pending.clear()
        return state

    def state(self) -> State:
        self.flush()
        return self._state(list(range(len(self.layers))))

    @staticmethod
    def merge(states: list[State]) -> State:
        merged = settings_of(states, ("orders", "layers", "capacity"), "n-gram counts")
        merged["fires"] = np.sum([s["fires"] for s in states], axis=0)
        for order in merged["orders"].tolist():
            parts = [tuple(s[key] for key in order_keys(order)) for s in states]
            merged |= dict(zip(order_keys(order), merge_summaries(parts, int(merged["capacity"][0]))))
        return merged

    @staticmethod
    def read_layer(arrays: StateArrays, slot: int, layer: int) -> State:
        """N-grams are counted in a subset of the layers (`layers`); groups are index in it * neurons + neuron."""
        state = shared(arrays, ("orders", "capacity", "layers", "fires"))
        counted = state["layers"].tolist()
        index = counted.index(layer) if layer in counted else len(counted)  # past the end: nothing counted
        n_neurons = state["fires"].shape[2]
        low, high = index * n_neurons, (index + 1) * n_neurons
        state |= {"layers": state["layers"][index : index + 1], "fires": state["fires"][:, index : index + 1]}
        for order in state["orders"].tolist():
            group, *values = order_keys(order)
            state |= keyed(arrays, group, tuple(values), low, high)
        return state

    @staticmethod
    def layer_parts(state: State, slot: int, counted_before: int) -> Parts:
        """`counted_before`: layers with n-gram counts already appended, the index of this one if it has them."""
        n_neurons = state["fires"].shape[2]
        parts = once(state, ("orders", "capacity")) | {"layers": (state["layers"], 0), "fires": (state["fires"], 1)}
        for order in state["orders"].tolist():
            group, *values = order_keys(order)
            parts |= {group: (state[group] + counted_before * n_neurons, 0)} | appended(state, tuple(values))
        return parts

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        """Every neuron's summaries full, the batch tables waiting and being built, and the temporaries of one
        layer's tables."""
        n_counted = len(resolve_ngram_layers(settings.ngram_layers, geometry.layers, geometry.n_layers_total))
        orders, n_neurons = len(settings.ngram_orders), geometry.n_neurons
        entries = orders * n_neurons * min(settings.ngram_capacity, n_tokens)
        on_device = min(1 if layerwise else len(geometry.layers), n_counted)
        # the waiting batch tables, and the batch's own ([distinct n-grams <= tokens, neurons] int32 an order)
        batch_tables = orders * settings.batch_size * geometry.seq_len * n_neurons * 4
        pending = settings.pending_bytes + batch_tables if n_counted else 0
        fires = orders * n_counted * n_neurons * 8
        return Memory(
            device=on_device * entries * ENTRY_BYTES + pending + (entries * 24 if n_counted else 0) + fires,
            host=min(2, n_counted) * entries * (ENTRY_BYTES + 24) + fires,
        )
