"""Firings per (layer, token, neuron): which tokens trigger each neuron (token detectors, Voita Sec. 4)."""

from __future__ import annotations

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
    host_paths,
    keyed,
    once,
    settings_of,
    shared,
)
from neuron_census.accumulators.summaries import coalesce_keys
from neuron_census.accumulators.tables import KeyTable, PendingCounts, merge_summaries
from neuron_census.capture.host_copies import host_arrays

ENTRY_BYTES = 16  # an int64 key and an int64 count per sparse entry
HEADER = ("vocab_size", "n_neurons", "capacity")


class TokenFireCount(Accumulator):
    """Up to `dense_limit` cells (layers x vocabulary x neurons) counts are kept in place: a dense int32
    [vocab, neurons] table per analysed layer on the device, exact, into which a batch's firings are added
    row by row by token (one `index_add_`). A layer's table is allocated at its first batch and dropped
    when the layer is handed over, so layerwise capture holds one.

    Above the limit each batch's firings are counted over its distinct tokens in a small dense table that
    waits on the device (`tables.PendingCounts`) until the layer's share of `pending_bytes` is reached;
    a flush adds them to a sorted key table. `capacity` None keeps every (token, neuron) pair seen (exact);
    an integer keeps per neuron a Misra-Gries summary of at most `capacity` tokens (`summaries`).

    State keys are ``(slot * vocab + token) * n_neurons + neuron`` with slot the analysed-layer index.
    """

    name: ClassVar[str] = "token_fire_count"

    def __init__(
        self,
        geometry: Geometry,
        device: torch.device,
        *,
        dense_limit: int = CAPTURE_DEFAULTS["token_fire_dense_limit"],
        capacity: int | None = CAPTURE_DEFAULTS["token_capacity"],
        pending_bytes: int = CAPTURE_DEFAULTS["pending_bytes"],
    ) -> None:
        self.geometry, self.device, self.capacity = geometry, device, capacity
        n_slots, vocab, n_neurons = len(geometry.layers), geometry.vocab_size, geometry.n_neurons
        dense = n_slots * vocab * n_neurons <= dense_limit
        self.dense: list[tuple[torch.Tensor, torch.Tensor] | None] | None = [None] * n_slots if dense else None
        shape = (vocab, n_neurons) if capacity is None else (n_neurons, vocab)
        share = max(1, pending_bytes // max(1, n_slots))
        self._pending = [
            PendingCounts(KeyTable(*shape, capacity, device), by_neuron=capacity is not None, budget_bytes=share)
            for _ in range(0 if dense else n_slots)
        ]

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> TokenFireCount:
        return cls(geometry, device, dense_limit=settings.token_fire_dense_limit, capacity=settings.token_capacity,
                   pending_bytes=settings.pending_bytes)

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        on_host = host_paths(self.device)  # the firings alone, not a table over every activation
        n_neurons = self.geometry.n_neurons
        if self.dense is not None:
            table, seen = self._dense_table(slot)
            tokens = batch.tokens_flat()
            if on_host:  # rows are zeroed when their token first occurs
                table.index_fill_(0, tokens[~seen[tokens]], 0)
                rows, neurons = batch.firing_pairs()
                cells = tokens.index_select(0, rows).mul_(n_neurons).add_(neurons)
                table.view(-1).index_add_(0, cells, torch.ones(1, dtype=table.dtype).expand(len(cells)))
            else:
                table.index_add_(0, tokens, batch.fires_2d())
            seen.index_fill_(0, tokens, True)
            return
        unique, inverse = batch.shared("distinct_tokens", lambda: torch.unique(batch.tokens_flat(), return_inverse=True))
        if self._pending[slot].add_firings(batch, unique, inverse, batch.tokens_flat):
            self._pending[slot].flush()

    def flush(self) -> None:
        for pending in self._pending:
            pending.flush()

    def _dense_table(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's table and which of its rows (tokens) occurred: only those rows are ever read. On a CPU
        the table is left unwritten and a row zeroed when its token first occurs, so the memory of tokens
        that never occur is never touched (zeroing the whole table cost seconds a layer)."""
        assert self.dense is not None
        if self.dense[slot] is None:
            shape = (self.geometry.vocab_size, self.geometry.n_neurons)
            make = torch.empty if host_paths(self.device) else torch.zeros
            table = make(shape, dtype=torch.int32, device=self.device)
            self.dense[slot] = (table, torch.zeros(shape[0], dtype=torch.bool, device=self.device))
        return self.dense[slot]

    def take_layer(self, layer: int) -> State:
        """The layer's counts handed over (pending batches merged first), keys of slot 0."""
        slot = self.geometry.slot(layer)
        if self.dense is not None:
            table, self.dense[slot] = self.dense[slot], None
            return self._dense_state([table])
        self._pending[slot].flush()
        keys, counts = self._state_keys(slot, 0)
        self._pending[slot].clear()
        return self._header(self.capacity or 0) | dict(zip(("keys", "counts"), host_arrays(keys, counts)))

    def _header(self, capacity: int) -> State:
        values = (self.geometry.vocab_size, self.geometry.n_neurons, capacity)
        return {key: np.asarray([value], dtype=np.int64) for key, value in zip(HEADER, values)}

    def _dense_state(self, tables: list[tuple[torch.Tensor, torch.Tensor] | None]) -> State:
        """The nonzero cells of consecutive slots' dense tables (None: nothing counted), keyed by their index
        in the tables joined; found on the device among the rows of tokens that occurred, so only they are
        read and only the cells are copied out. Dense counts are exact."""
        n_neurons = self.geometry.n_neurons
        cells = self.geometry.vocab_size * n_neurons
        keys, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for slot, held in enumerate(tables):
            if held is None:
                continue
            table, seen = held
            rows = seen.nonzero().squeeze(1)
            flat = table.index_select(0, rows).reshape(-1)
            found = flat.nonzero().squeeze(1)
            found_np, counts_np, rows_np = host_arrays(found, flat.index_select(0, found), rows)
            keys.append(rows_np[found_np // n_neurons] * n_neurons + found_np % n_neurons + slot * cells)
            counts.append(counts_np.astype(np.int64))
        return self._header(0) | {"keys": np.concatenate(keys), "counts": np.concatenate(counts)}

    def state(self) -> State:
        if self.dense is not None:
            return self._dense_state(self.dense)
        self.flush()
        columns = JoinedColumns(2, sum(pending.table.held() for pending in self._pending))
        for slot in range(len(self._pending)):  # slots hold consecutive key ranges: joined in sorted order
            columns.append(*self._state_keys(slot, slot))
        keys, counts = columns.arrays
        return self._header(self.capacity or 0) | {"keys": keys, "counts": counts}

    def _state_keys(self, slot: int, key_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A slot's merged table as sorted state keys `(key_slot * vocab + token) * n_neurons + neuron`, and counts."""
        vocab, n_neurons = self.geometry.vocab_size, self.geometry.n_neurons
        table = self._pending[slot].table
        if self.capacity is None:  # a row per token: already in key order
            tokens, neurons, counts = (torch.cat(column) for column in zip(*table.parts()))
        else:  # a row per neuron: read token-major
            neurons, tokens, counts = table.by_column()
        return tokens * n_neurons + neurons + key_slot * vocab * n_neurons, counts

    @staticmethod
    def merge(states: list[State]) -> State:
        header = settings_of(states, HEADER, "token firing counts")
        vocab, n_neurons, capacity = (int(header[key][0]) for key in HEADER)
        if not capacity:
            joined = (torch.from_numpy(np.concatenate([s[key] for s in states])) for key in ("keys", "counts"))
            return header | {key: column.numpy() for key, column in zip(("keys", "counts"), coalesce_keys(*joined))}
        parts = []
        for state in states:
            slot, token, neuron = decode_token_fire_keys(state["keys"], vocab, n_neurons)
            parts.append((slot * n_neurons + neuron, token, state["counts"]))
        group, token, counts = merge_summaries(parts, capacity)
        slot, neuron = np.divmod(group, n_neurons)
        keys, order = torch.sort(torch.from_numpy((slot * vocab + token) * n_neurons + neuron))
        return header | {"keys": keys.numpy(), "counts": counts[order.numpy()]}

    @staticmethod
    def read_layer(arrays: StateArrays, slot: int, layer: int) -> State:
        header = shared(arrays, HEADER)
        cells = int(header["vocab_size"][0]) * int(header["n_neurons"][0])
        return header | keyed(arrays, "keys", ("counts",), slot * cells, (slot + 1) * cells)

    @staticmethod
    def layer_parts(state: State, slot: int, counted_before: int) -> Parts:
        cells = int(state["vocab_size"][0]) * int(state["n_neurons"][0])
        return once(state, HEADER) | {"keys": (state["keys"] + slot * cells, 0), "counts": (state["counts"], 0)}

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        """Dense: an int32 table a layer on the device (one under layerwise), and its nonzero cells (12 bytes
        each, every cell at worst) while it is handed over. Sparse: every neuron's table full, the pending
        batch tables, and three copies of one layer's entries while it is handed over."""
        n_layers, vocab, n_neurons = len(geometry.layers), geometry.vocab_size, geometry.n_neurons
        on_device = 1 if layerwise else n_layers
        held = min(n_layers, 2)  # layers handed over and not yet written (a writer thread writes one)
        if n_layers * vocab * n_neurons <= settings.token_fire_dense_limit:
            layer = vocab * n_neurons
            return Memory(device=on_device * layer * 4 + layer * 12, host=held * 3 * layer * ENTRY_BYTES)
        entries = n_neurons * min(settings.token_capacity or vocab, vocab, n_tokens)
        pending = settings.pending_bytes // n_layers
        batch_table = settings.batch_size * geometry.seq_len * n_neurons * 4  # [distinct tokens, neurons] int32
        return Memory(
            device=on_device * (entries * ENTRY_BYTES + pending) + batch_table + entries * 40,
            host=held * 3 * entries * ENTRY_BYTES,
        )


def decode_token_fire_keys(keys: np.ndarray, vocab_size: int, n_neurons: int) -> tuple[np.ndarray, ...]:
    """Split TokenFireCount keys into (layer slot, token, neuron) arrays."""
    rest, neuron = np.divmod(keys, n_neurons)
    return *np.divmod(rest, vocab_size), neuron
