"""Counts of (row, column) pairs, exact or bounded per row, built from the sorted pairs of each batch.

A capture table counts (neuron, n-gram) or (token, neuron) firings of one layer. Each batch's pairs come
sorted and unique (`stage`); they wait until `merge` adds them to the table and, with a `capacity`, prunes
every row to a mergeable Misra-Gries summary of at most `capacity` columns (`neuron_census.ngrams`).

Two layouts of the same table, with equal results:

- `CsrTable` (CPUs): a canonical CSR matrix. SciPy adds two of them by merging each row's sorted columns in
  compiled code, in linear time: a table of 6M entries and a batch of 1.1M in 27 ms, against 170 ms for
  binary searches into packed keys. Columns may be as wide as int64 (trigrams of any vocabulary).
- `KeyTable` (GPUs): sorted packed int64 keys `row * n_columns + column`, per block of rows when those keys
  would overflow int64, merged by sorts and binary searches on the device.

Shard merges add stored summaries as CSR tables too (`merge_summaries`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import scipy.sparse as sparse
import torch

from neuron_census.ngrams import (
    _group_cuts,
    add_sorted_keys,
    coalesce,
    coalesce_keys,
    merge_summaries_by_sort,
    neurons_per_key,
    prune_keys,
    split_sorted_keys,
)

Columns = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, columns, counts: sorted by (row, column)


class CountTable(Protocol):
    def stage(self, rows: torch.Tensor, columns: torch.Tensor, counts: torch.Tensor) -> None:
        """Keep one batch's distinct pairs, sorted by (row, column), until `merge`."""

    def merge(self) -> None:
        """Add the staged pairs to the table and prune it to `capacity` per row."""

    def held(self) -> int:
        """Entries in the table (staged pairs not included)."""

    def staged(self) -> list[int]:
        """Entries of each staged batch, in staging order."""

    def parts(self) -> Iterator[Columns]:
        """The table's entries in (row, column) order, in one or more consecutive parts."""

    def by_column(self) -> Columns:
        """The table's entries in (column, row) order."""

    def clear(self) -> None:
        """Drop the table (staged pairs included)."""


def count_table(n_rows: int, n_columns: int, capacity: int | None, device: torch.device) -> CountTable:
    """The layout for `device`: CSR on a CPU, packed keys elsewhere."""
    if device.type == "cpu":
        return CsrTable(n_rows, n_columns, capacity)
    return KeyTable(n_rows, n_columns, capacity, device)


class CsrTable:
    """A table as a canonical CSR matrix (rows' columns sorted and unique, counts >= 1) on the host."""

    def __init__(self, n_rows: int, n_columns: int, capacity: int | None) -> None:
        self.shape = (n_rows, n_columns)
        self.capacity = capacity
        self._table = self._matrix(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(n_rows + 1, np.int64))
        self._staged: list[sparse.csr_array] = []

    def _matrix(self, counts: np.ndarray, columns: np.ndarray, indptr: np.ndarray) -> sparse.csr_array:
        matrix = sparse.csr_array((counts, columns, indptr), shape=self.shape, copy=False)
        # the callers' invariant, which SciPy's addition checks for itself: only canonical operands are merged
        # row by row in linear time (others would take a path with a dense scratch row of n_columns)
        matrix.has_canonical_format = True
        return matrix

    def stage(self, rows: torch.Tensor, columns: torch.Tensor, counts: torch.Tensor) -> None:
        rows_np = rows.numpy()
        indptr = np.searchsorted(rows_np, np.arange(self.shape[0] + 1, dtype=rows_np.dtype))
        self._staged.append(self._matrix(counts.numpy(), columns.numpy(), indptr.astype(np.int64, copy=False)))

    def merge(self) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        added = len(staged) > 1 or self._table.nnz > 0
        while len(staged) > 1:  # pairwise, so each pair is merged log2(batches) times, not once per batch
            staged = [staged[i] + staged[i + 1] if i + 1 < len(staged) else staged[i] for i in range(0, len(staged), 2)]
        total = staged.pop()
        if self._table.nnz:
            total = self._table + total
        if not added and self.capacity is not None:  # one staged batch: its counts are the caller's, pruning writes
            total = total.copy()
        self._table = _prune_rows(total, self.capacity)

    def held(self) -> int:
        return int(self._table.nnz)

    def staged(self) -> list[int]:
        return [int(matrix.nnz) for matrix in self._staged]

    def parts(self) -> Iterator[Columns]:
        table = self._table  # SciPy stores indices as int32 when they fit
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(table.indptr))
        columns = table.indices.astype(np.int64, copy=False)
        yield torch.from_numpy(rows), torch.from_numpy(columns), torch.from_numpy(table.data)

    def by_column(self) -> Columns:
        by_column = self._table.tocsc()  # SciPy's transpose, a counting sort: rows stay ascending in a column
        columns = np.repeat(np.arange(self.shape[1], dtype=np.int64), np.diff(by_column.indptr))
        rows = by_column.indices.astype(np.int64, copy=False)
        return torch.from_numpy(rows), torch.from_numpy(columns), torch.from_numpy(by_column.data)

    def clear(self) -> None:
        empty = np.zeros(0, np.int64)
        self._table = self._matrix(empty, empty, np.zeros(self.shape[0] + 1, np.int64))
        self._staged = []


def _prune_rows(matrix: sparse.csr_array, capacity: int | None) -> sparse.csr_array:
    """`neuron_census.ngrams.prune` of a canonical CSR matrix, in place: each row over `capacity` loses its
    (capacity+1)-th largest count from every count, and counts that reach zero are dropped (by SciPy's
    compaction in compiled code, one pass)."""
    indptr = matrix.indptr
    lengths = np.diff(indptr)
    if capacity is None or len(lengths) == 0 or lengths.max() <= capacity:
        return matrix
    over = np.flatnonzero(lengths > capacity)
    counts = matrix.data
    starts, ends = (torch.from_numpy(indptr[at].astype(np.int64)) for at in (over, over + 1))
    cut = _group_cuts(torch.from_numpy(counts), starts, ends, capacity)
    row_cut = np.zeros(len(lengths), dtype=counts.dtype)
    row_cut[over] = cut.numpy()
    counts -= np.repeat(row_cut, lengths)
    np.maximum(counts, 0, out=counts)
    matrix.eliminate_zeros()
    return matrix


def merge_summaries(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], capacity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge summaries (or exact counts, which are summaries too) of (group, gram, count): add counters, then
    prune to `capacity` per group. Result sorted by (group, gram).

    Shard merges fold full tables (OPT-66b: 75M entries a layer and table), so parts are added as CPU
    capture adds its tables: staged into a `CsrTable` with a row per group and merged. Equal to
    `ngrams.merge_summaries_by_sort`, which takes parts with negative values or counts below 1.
    """
    present = [tuple(np.asarray(column, dtype=np.int64) for column in part) for part in parts if len(part[0])]
    if not present or any(min(int(column.min()) for column in part[:2]) < 0 or int(part[2].min()) < 1 for part in present):
        return merge_summaries_by_sort(parts, capacity)
    n_groups = max(int(part[0].max()) for part in present) + 1
    table = CsrTable(n_groups, max(int(part[1].max()) for part in present) + 1, capacity)
    for group, gram, count in present:
        if not _sorted_unique(group, gram):
            group, gram, count = coalesce(group, gram, count)
        table.stage(*(torch.from_numpy(column) for column in (group, gram, count)))
    table.merge()
    group, gram, count = next(table.parts())
    return group.numpy(), gram.numpy(), count.numpy()


def _sorted_unique(group: np.ndarray, gram: np.ndarray) -> bool:
    """(group, gram) pairs strictly increasing, as a CSR matrix needs them."""
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
        self._sizes.append(len(counts))
        if self.n_blocks == 1:
            self._staged[0].append((rows * self.span + columns, counts))
            return
        edges = torch.searchsorted(rows, torch.arange(self.n_blocks + 1, device=rows.device) * self.block).tolist()
        for part, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            if hi > lo:
                self._staged[part].append(((rows[lo:hi] - part * self.block) * self.span + columns[lo:hi], counts[lo:hi]))

    def merge(self) -> None:
        for part, runs in enumerate(self._staged):
            if runs:
                keys, counts = add_sorted_keys(*self._blocks[part], *coalesce_runs(runs))
                self._blocks[part] = prune_keys(keys, counts, self.span, self.capacity)
        self._staged = [[] for _ in range(self.n_blocks)]
        self._sizes = []

    def held(self) -> int:
        return sum(len(keys) for keys, _ in self._blocks)

    def staged(self) -> list[int]:
        return list(self._sizes)

    def parts(self) -> Iterator[Columns]:
        for part, (keys, counts) in enumerate(self._blocks):
            rows, columns = split_sorted_keys(keys, self.span)
            yield rows + part * self.block, columns, counts

    def by_column(self) -> Columns:
        rows, columns, counts = (torch.cat(column) for column in zip(*self.parts()))
        dtype = torch.int32 if self.n_rows * self.span < 1 << 31 else torch.int64  # fewer radix passes
        _, order = torch.sort((columns * self.n_rows + rows).to(dtype))
        return rows[order], columns[order], counts[order]

    def clear(self) -> None:
        self._blocks = [(self._empty, self._empty)] * self.n_blocks
        self._staged: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(self.n_blocks)]
        self._sizes: list[int] = []
