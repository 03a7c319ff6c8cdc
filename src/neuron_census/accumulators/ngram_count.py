"""Occurrences of each n-gram at counted positions: the denominator of n-gram detectors (Voita Sec. 4.1)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import (
    CAPTURE_DEFAULTS,
    Accumulator,
    Geometry,
    LayerBatch,
    Memory,
    State,
    StateArrays,
    settings_of,
    shared,
)
from neuron_census.accumulators.summaries import batch_ngrams, check_packable, order_keys
from neuron_census.accumulators.tables import KeyTable, merge_summaries
from neuron_census.capture.host_copies import host_arrays

ENTRY_BYTES = 16


class NgramCount(Accumulator):
    """One Misra-Gries summary of at most `capacity` n-grams per order: exact while the data has fewer
    distinct n-grams, which `total` (all counted n-gram positions) lets a reader check; otherwise every
    count is at most `summaries.summary_slack` below the truth. Counted at the first analysed layer; each
    batch's counts wait until as many are pending as the summary can hold, then merge in one flush."""

    name: ClassVar[str] = "ngram_count"
    layered: ClassVar[bool] = False

    def __init__(
        self, geometry: Geometry, device: torch.device, *, orders: tuple[int, ...] = tuple(CAPTURE_DEFAULTS["ngram_orders"]),
        capacity: int = CAPTURE_DEFAULTS["ngram_count_capacity"],
    ) -> None:
        for order in orders:
            check_packable(geometry.vocab_size, order)
        self.geometry, self.orders, self.capacity = geometry, tuple(orders), capacity
        self.total = [torch.zeros((), dtype=torch.int64, device=device) for _ in orders]
        # a table of one row an order: a single summary of at most `capacity` n-grams
        self._tables = {n: KeyTable(1, geometry.vocab_size**n, capacity, device) for n in orders}
        self._waiting = 0
        self._first_layer = geometry.layers[0]

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> NgramCount:
        return cls(geometry, device, orders=settings.ngram_orders, capacity=settings.ngram_count_capacity)

    def update(self, batch: LayerBatch) -> None:
        if batch.layer != self._first_layer:
            return
        vocab = self.geometry.vocab_size
        for index, order in enumerate(self.orders):
            grams, row_gram = batch.shared(("ngrams", order), lambda: batch_ngrams(batch.tokens, batch.mask, order, vocab, batch.counted_from))
            ones = batch.shared("ones", lambda: torch.ones_like(row_gram))
            counts = torch.zeros(len(grams) + 1, dtype=torch.int64, device=grams.device).index_add_(0, row_gram, ones)[1:]
            self._tables[order].stage_keys(grams, counts)  # row 0 dropped: positions where no complete n-gram ends
            self.total[index] += counts.sum()
            self._waiting += len(grams)
        if self._waiting >= self.capacity:
            self.flush()

    def flush(self) -> None:
        for table in self._tables.values():
            table.merge()
        self._waiting = 0

    def state(self) -> State:
        self.flush()
        state: State = {
            "orders": np.asarray(self.orders, dtype=np.int64),
            "capacity": np.asarray([self.capacity], dtype=np.int64),
            "total": np.asarray([int(t) for t in self.total], dtype=np.int64),
        }
        for order, table in self._tables.items():
            _, gram, count = next(table.parts())
            state |= dict(zip(order_keys(order)[1:], host_arrays(gram, count)))
        return state

    @staticmethod
    def merge(states: list[State]) -> State:
        merged = settings_of(states, ("orders", "capacity"), "n-gram counts")
        merged["total"] = np.sum([s["total"] for s in states], axis=0)
        for order in merged["orders"].tolist():
            _, gram, count = order_keys(order)
            parts = [(np.zeros(len(s[gram]), dtype=np.int64), s[gram], s[count]) for s in states]  # one group
            merged |= dict(zip((gram, count), merge_summaries(parts, int(merged["capacity"][0]))[1:]))
        return merged

    @staticmethod
    def read_layer(arrays: StateArrays, slot: int, layer: int) -> State:
        state = shared(arrays, ("orders", "capacity", "total"))
        for order in state["orders"].tolist():
            state |= shared(arrays, order_keys(order)[1:])
        return state

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        """The summaries full and as many entries waiting (device), kept and written (host)."""
        entries = len(settings.ngram_orders) * min(settings.ngram_count_capacity, n_tokens)
        return Memory(device=2 * entries * ENTRY_BYTES, host=2 * entries * ENTRY_BYTES)
