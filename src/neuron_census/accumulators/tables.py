"""Counts of (row, column) pairs, exact or bounded per row, built from the sorted pairs of each batch.

A capture table counts (neuron, n-gram) or (token, neuron) firings of one layer. Pairs come sorted and
unique (`stage`); they wait until `merge` adds them to the table and, with a `capacity`, prunes every row to
a mergeable Misra-Gries summary of at most `capacity` columns (`accumulators.summaries`). The table is sorted
packed int64 keys `row * n_columns + column` and their counts, on any device, merged by sorts and binary
searches there; shard merges add stored summaries the same way (`merge_summaries`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from neuron_census.accumulators.base import LayerBatch, host_paths
from neuron_census.accumulators.sorting import count_keys
from neuron_census.accumulators.summaries import (
    add_sorted_keys,
    coalesce_keys,
    neurons_per_key,
    prune_keys,
    split_sorted_keys,
)

Columns = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, columns, counts: sorted by (row, column)
DROPPED = torch.iinfo(torch.int64).max  # the key of a waiting pair that is not counted


def merge_summaries(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], capacity: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge summaries (or exact counts, which are summaries too) of (group, gram, count): add counters, then
    prune to `capacity` per group. Result sorted by (group, gram).

    Parts are staged into a `KeyTable` with a row per group and merged as capture merges its tables.
    """
    present = [tuple(np.asarray(column, dtype=np.int64) for column in part) for part in parts if len(part[0])]
    if not present:
        return (np.zeros(0, dtype=np.int64),) * 3
    if any(min(int(column.min()) for column in part[:2]) < 0 or int(part[2].min()) < 1 for part in present):
        raise ValueError("summaries to merge hold a negative group or gram, or a count below 1")
    n_groups = max(int(part[0].max()) for part in present) + 1
    table = KeyTable(n_groups, max(int(part[1].max()) for part in present) + 1, capacity, torch.device("cpu"))
    for part in present:
        columns = tuple(torch.from_numpy(column) for column in part)
        table.stage(*(columns if _sorted_unique(*part[:2]) else _coalesce_pairs(*columns)))
    table.merge()
    group, gram, count = (torch.cat(column).numpy() for column in zip(*table.parts()))
    return group, gram, count


def _sorted_unique(group: np.ndarray, gram: np.ndarray) -> bool:
    """(group, gram) pairs strictly increasing, as a table stages them."""
    same_group = group[1:] == group[:-1]
    return bool(np.all((group[1:] > group[:-1]) | (same_group & (gram[1:] > gram[:-1]))))


def coalesce_runs(runs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys, and their summed counts, of several (keys, counts) runs, each sorted and unique."""
    if len(runs) == 1:
        return runs[0]
    return coalesce_keys(*(torch.cat(column) for column in zip(*runs)))


class KeyTable:
    """A table as sorted packed keys `row * n_columns + column` and their counts, on any device.

    Rows are split into blocks whose keys fit int64 (all rows in one block unless columns are huge: trigrams
    of a 128k vocabulary leave 4,371 rows a block).
    """

    def __init__(self, n_rows: int, n_columns: int, capacity: int | None, device: torch.device) -> None:
        self.n_rows, self.span = n_rows, n_columns
        self.capacity = capacity
        self.block = neurons_per_key(n_rows, n_columns)
        self.n_blocks = -(-n_rows // self.block)
        self._empty = torch.zeros(0, dtype=torch.int64, device=device)
        self.clear()

    def stage(self, rows: torch.Tensor, columns: torch.Tensor, counts: torch.Tensor) -> None:
        if self.n_blocks == 1:
            self._staged[0].append((rows * self.span + columns, counts))
            return
        edges = torch.searchsorted(rows, torch.arange(self.n_blocks + 1, device=rows.device) * self.block).tolist()
        for part, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            if hi > lo:
                self._staged[part].append(((rows[lo:hi] - part * self.block) * self.span + columns[lo:hi], counts[lo:hi]))

    def stage_keys(self, keys: torch.Tensor, counts: torch.Tensor) -> None:
        """Stage sorted unique packed keys (a table of one block) and their counts."""
        self._staged[0].append((keys, counts))

    def merge(self) -> None:
        for part, runs in enumerate(self._staged):
            if runs:
                keys, counts = add_sorted_keys(*self._blocks[part], *coalesce_runs(runs))
                self._blocks[part] = prune_keys(keys, counts, self.span, self.capacity)
        self._staged = [[] for _ in range(self.n_blocks)]

    def held(self) -> int:
        return sum(len(keys) for keys, _ in self._blocks)

    def parts(self) -> Iterator[Columns]:
        for part, (keys, counts) in enumerate(self._blocks):
            rows, columns = split_sorted_keys(keys, self.span)
            yield rows + part * self.block, columns, counts

    def by_column(self) -> Columns:
        rows, columns, counts = (torch.cat(column) for column in zip(*self.parts()))
        dtype = torch.int32 if self.n_rows * self.span < 1 << 31 else torch.int64  # fewer radix passes
        _, order = torch.sort((columns * self.n_rows + rows).to(dtype))
        return rows.index_select(0, order), columns.index_select(0, order), counts.index_select(0, order)

    def clear(self) -> None:
        self._blocks = [(self._empty, self._empty)] * self.n_blocks
        self._staged: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(self.n_blocks)]


class PendingCounts:
    """Per-batch counts that wait on the device until one flush adds them all to a `KeyTable`: the per-batch
    update is a scatter-add into a dense table of known size [ids, neurons] (no wait for the device), and
    the work whose size depends on the data (finding the nonzero cells, sorting, pruning) runs once per
    flush. `by_neuron`: the key table has a row per neuron and a column per id (bounded summaries prune each
    neuron's ids); else a row per id and a column per neuron.

    A CPU adds each batch's firings as (id, neuron) pairs instead (`add_pairs`), charged the bytes of the
    dense table they stand for, so flushes fall where a GPU's do and a bounded summary comes out the same.
    """

    def __init__(self, table: KeyTable, *, by_neuron: bool, budget_bytes: int, spare_row: bool = False) -> None:
        self.table, self.by_neuron, self.budget_bytes = table, by_neuron, budget_bytes
        self.spare_row = spare_row  # each dense table's row 0 is not an id's (it is dropped)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids, neurons) a batch
        self.bytes = 0

    def add(self, ids: torch.Tensor, counts: torch.Tensor) -> bool:
        """Keep one batch's counts [len(ids) (+ 1 spare row first), neurons] of sorted distinct `ids`; True
        when a flush is due."""
        self.pending.append((ids, counts))
        self.bytes += counts.numel() * counts.element_size()
        return self.bytes >= self.budget_bytes

    @property
    def n_neurons(self) -> int:
        return self.table.n_rows if self.by_neuron else self.table.span

    def add_firings(
        self, batch: LayerBatch, ids: torch.Tensor, row_index: torch.Tensor, row_ids: Callable[[], torch.Tensor]
    ) -> bool:
        """Keep one batch's firings counted by the id of their row: `ids` sorted and distinct, `row_index` [B*T]
        each row's index in the dense table (after the spare row), `row_ids()` [B*T] each row's id (-1: none),
        read on a CPU alone; True when a flush is due."""
        n_rows = len(ids) + self.spare_row
        if host_paths(ids.device):  # the firings alone, not a table over every activation
            rows, neurons = batch.firing_pairs()
            return self.add_pairs(row_ids().index_select(0, rows), neurons, n_rows)
        counts = torch.zeros(n_rows, self.n_neurons, dtype=torch.int32, device=ids.device)
        return self.add(ids, counts.index_add_(0, row_index, batch.fires_2d()))

    def add_pairs(self, ids: torch.Tensor, neurons: torch.Tensor, table_rows: int) -> bool:
        """Keep one batch's firings as (id, neuron) pairs (an id of -1, where a spare row has no id, is
        dropped), in place of a dense int32 table of `table_rows` rows (charged its bytes); True when a flush
        is due."""
        self.pairs.append((ids, neurons))
        self.bytes += table_rows * self.n_neurons * torch.int32.itemsize
        return self.bytes >= self.budget_bytes

    def flush(self) -> torch.Tensor | None:
        """Add the waiting counts to the key table and merge it (prune to capacity); returns their sums per
        neuron [neurons] (int64), or None when nothing waited."""
        if not self.pending and not self.pairs:
            return None
        totals = self._stage_pairs() if self.pairs else self._stage_tables()
        self.pending, self.pairs, self.bytes = [], [], 0
        self.table.merge()
        return totals

    def _stage_tables(self) -> torch.Tensor:
        first = 1 if self.spare_row else 0
        ids = torch.cat([ids for ids, _ in self.pending])
        counts = torch.cat([table[first:] for _, table in self.pending])
        totals = counts.sum(dim=0, dtype=torch.int64)
        cells = counts.nonzero()
        values = counts[cells[:, 0], cells[:, 1]].to(torch.int64)
        id_of, neuron = ids.index_select(0, cells[:, 0]), cells[:, 1]
        rows, columns = (neuron, id_of) if self.by_neuron else (id_of, neuron)
        self.table.stage(*_coalesce_pairs(rows, columns, values))
        return totals

    def _stage_pairs(self) -> torch.Tensor:
        """Equal pairs counted by one sort of their table keys (dropped pairs keyed past every key)."""
        ids = torch.cat([ids for ids, _ in self.pairs])
        neurons = torch.cat([neurons for _, neurons in self.pairs])
        major, minor = (neurons, ids) if self.by_neuron else (ids, neurons)
        if self.table.n_blocks > 1:  # keys would overflow int64: the pairs themselves are sorted
            kept = (ids >= 0).nonzero(as_tuple=True)[0]
            major, minor, neurons = major[kept], minor[kept], neurons[kept]
            self.table.stage(*_coalesce_pairs(major, minor, torch.ones_like(major)))
            return torch.bincount(neurons, minlength=self.n_neurons)
        keys = major * self.table.span + minor
        if self.spare_row:
            keys.masked_fill_(ids < 0, DROPPED)
        elif self.table.n_rows * self.table.span <= torch.iinfo(torch.int32).max:
            keys = keys.to(torch.int32)  # half the bytes to sort (a token table: tokens x neurons fit)
        keys, counts = count_keys(keys)
        keys = keys.long()
        if self.spare_row and len(keys) and int(keys[-1]) == DROPPED:
            keys, counts = keys[:-1], counts[:-1]
        self.table.stage_keys(keys, counts)
        if not self.by_neuron:
            return torch.bincount(neurons, minlength=self.n_neurons)
        edges = torch.searchsorted(keys, torch.arange(self.n_neurons + 1) * self.table.span)
        ends = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return ends[edges[1:]] - ends[edges[:-1]]

    def clear(self) -> None:
        self.pending, self.pairs, self.bytes = [], [], 0
        self.table.clear()


def _coalesce_pairs(rows: torch.Tensor, columns: torch.Tensor, counts: torch.Tensor) -> Columns:
    """Distinct (row, column) pairs sorted by (row, column), with summed counts: two stable sorts (no packed
    key, which could overflow int64), then a sum over runs of equal pairs."""
    order = torch.sort(columns, stable=True).indices
    order = order.index_select(0, torch.sort(rows.index_select(0, order), stable=True).indices)
    rows, columns, counts = rows.index_select(0, order), columns.index_select(0, order), counts.index_select(0, order)
    new = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    new[1:] = (rows[1:] != rows[:-1]) | (columns[1:] != columns[:-1])
    starts = new.nonzero().squeeze(1)
    group = torch.cumsum(new, 0) - 1
    summed = torch.zeros(len(starts), dtype=counts.dtype, device=counts.device).index_add_(0, group, counts)
    return rows.index_select(0, starts), columns.index_select(0, starts), summed
