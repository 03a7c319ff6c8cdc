"""Key tables against counting by hand: exact tables against a Counter, bounded ones against the reference
Misra-Gries merge (`summary_reference.coalesce` then `prune`) applied at the same merge points; and the
per-batch dense tables that wait for a flush."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from neuron_census.accumulators import tables
from neuron_census.accumulators.tables import KeyTable, PendingCounts, _coalesce_pairs
from summary_reference import coalesce, prune


def layouts(device: torch.device):
    yield "keys", lambda rows, columns, capacity: KeyTable(rows, columns, capacity, device)


def random_batches(rng, n_rows: int, n_columns: int, n_batches: int, device: torch.device):
    """Sorted distinct (row, column) pairs and counts per batch, as a flush stages them; columns are
    spread over the whole range (wide columns: the top of int64 too)."""
    spread = n_columns // 40
    for _ in range(n_batches):
        size = int(rng.integers(0, 300))
        rows = torch.from_numpy(rng.integers(0, n_rows, size)).to(device)
        slots = torch.from_numpy(rng.integers(0, 40, size)).to(device)
        rows, slots, counts = _coalesce_pairs(rows, slots, torch.ones_like(rows))
        yield rows, slots * spread + (n_columns - 1) % spread, counts


def table_columns(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = list(table.parts())
    return tuple(torch.cat(column).cpu().numpy() for column in zip(*parts))  # type: ignore[return-value]


@pytest.mark.parametrize("capacity", [None, 1, 3, 25])
@pytest.mark.parametrize("n_rows, n_columns", [(7, 50), (300, 50_272), (5, 10**17)])
def test_tables_match_counting_by_hand(device, capacity, n_rows, n_columns):
    for name, make in layouts(device):
        rng = np.random.default_rng(7)
        table = make(n_rows, n_columns, capacity)
        reference = (np.zeros(0, np.int64),) * 3
        staged: list[tuple[np.ndarray, ...]] = []
        for index, batch in enumerate(random_batches(rng, n_rows, n_columns, 14, device)):
            table.stage(*batch)
            staged.append(tuple(t.cpu().numpy() for t in batch))
            if index % 4 == 3 or index == 13:
                table.merge()
                merged = coalesce(*(np.concatenate(column) for column in zip(reference, *staged)))
                reference = merged if capacity is None else prune(*merged, capacity)
                staged = []
                assert table.held() == len(reference[0])
                got = table_columns(table)
                for want, have in zip(reference, got):
                    np.testing.assert_array_equal(have, want, err_msg=name)
                    assert have.dtype == np.int64
        if capacity is not None:
            assert np.bincount(reference[0], minlength=n_rows).max() <= capacity
        table.clear()
        assert table.held() == 0 and all(len(column) == 0 for column in table_columns(table))


def test_exact_tables_add_like_a_counter(device):
    rng = np.random.default_rng(3)
    for name, make in layouts(device):
        table, expected = make(40, 600, None), Counter()
        for batch in random_batches(rng, 40, 600, 9, device):
            table.stage(*batch)
            for row, column, count in zip(*(t.tolist() for t in batch)):
                expected[row, column] += count
        table.merge()
        rows, columns, counts = table_columns(table)
        assert list(zip(rows.tolist(), columns.tolist())) == sorted(expected), name
        assert counts.tolist() == [expected[key] for key in sorted(expected)], name


@pytest.mark.parametrize("capacity", [None, 4])
def test_tables_read_by_column_are_their_entries_sorted_by_column(device, capacity):
    for name, make in layouts(device):
        table = make(60, 500, capacity)
        for batch in random_batches(np.random.default_rng(11), 60, 500, 6, device):
            table.stage(*batch)
        table.merge()
        rows, columns, counts = table_columns(table)
        order = np.lexsort((rows, columns))
        got = [t.cpu().numpy() for t in table.by_column()]
        for want, have in zip((rows[order], columns[order], counts[order]), got):
            np.testing.assert_array_equal(have, want, err_msg=name)
            assert have.dtype == np.int64


def test_key_table_blocks_give_the_table_of_one_key_space(device, monkeypatch):
    """Rows whose keys would overflow int64 are split into blocks; the table reads the same."""
    whole = KeyTable(9, 10**17, 3, device)
    monkeypatch.setattr(tables, "neurons_per_key", lambda n_rows, span: 4)
    blocked = KeyTable(9, 10**17, 3, device)
    assert (whole.n_blocks, blocked.n_blocks) == (1, 3)
    for batch in random_batches(np.random.default_rng(5), 9, 10**17, 8, device):
        for table in (whole, blocked):
            table.stage(*batch)
            table.merge()
    for want, have in zip(table_columns(whole), table_columns(blocked)):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("by_neuron, capacity", [(False, None), (True, None), (True, 2)])
@pytest.mark.parametrize("budget", [1, 10_000], ids=["flush-every-batch", "flush-at-the-end"])
def test_pending_batch_tables_flush_into_the_key_table(device, by_neuron, capacity, budget):
    """Dense per-batch counts over each batch's distinct ids, flushed when the budget is reached and at the
    end: equal to counting by hand (exact) or to the reference merge at the same flush points (bounded)."""
    rng = np.random.default_rng(2)
    n_ids, n_neurons = 30, 4
    pending = PendingCounts(KeyTable(*((n_neurons, n_ids) if by_neuron else (n_ids, n_neurons)), capacity, device), by_neuron=by_neuron, budget_bytes=budget)
    reference, waiting = (np.zeros(0, np.int64),) * 3, []
    for _ in range(6):
        ids = np.unique(rng.integers(0, n_ids, 8))
        counts = rng.integers(0, 3, (len(ids), n_neurons)).astype(np.int32)
        cells = np.nonzero(counts)
        rows, columns = (cells[1], ids[cells[0]]) if by_neuron else (ids[cells[0]], cells[1])
        waiting.append((rows, columns, counts[cells].astype(np.int64)))
        if pending.add(torch.from_numpy(ids).to(device), torch.from_numpy(counts).to(device)):
            pending.flush()
            merged = coalesce(*(np.concatenate(c) for c in zip(reference, *waiting)))
            reference, waiting = (merged if capacity is None else prune(*merged, capacity)), []
    pending.flush()
    merged = coalesce(*(np.concatenate(c) for c in zip(reference, *waiting)))
    reference = merged if capacity is None else prune(*merged, capacity)
    assert not pending.pending and pending.bytes == 0
    for want, have in zip(reference, table_columns(pending.table)):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("by_neuron, spare_row", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("n_ids", [50_272, 10**6], ids=["keys-fit-int32", "keys-past-int32"])
def test_pending_pairs_count_like_a_counter(by_neuron, spare_row, n_ids):
    """Firings added as (id, neuron) pairs (a CPU's path) give the table and per-neuron sums of counting
    by hand, whether the table's keys fit 32 bits (sorted as such) or not; with a spare row, ids of -1 (no
    complete n-gram) are not counted."""
    rng = np.random.default_rng(3)
    n_neurons = 3072
    shape = (n_neurons, n_ids) if by_neuron else (n_ids, n_neurons)
    pending = PendingCounts(KeyTable(*shape, None, torch.device("cpu")), by_neuron=by_neuron, budget_bytes=1 << 40, spare_row=spare_row)
    seen = np.concatenate([rng.integers(0, n_ids, 60), [n_ids - 1], [-1] if spare_row else []]).astype(np.int64)
    counter: Counter = Counter()
    for _ in range(3):
        ids = rng.choice(seen, 4000)
        neurons = rng.integers(n_neurons - 50, n_neurons, 4000)  # the largest keys
        counter.update((int(n), int(i)) if by_neuron else (int(i), int(n)) for i, n in zip(ids, neurons) if i >= 0)
        pending.add_pairs(torch.from_numpy(ids), torch.from_numpy(neurons), 100)
    totals = pending.flush()
    rows, columns, counts = table_columns(pending.table)
    assert list(zip(rows.tolist(), columns.tolist())) == sorted(counter)
    assert counts.tolist() == [counter[pair] for pair in sorted(counter)]
    per_neuron: Counter = Counter()
    for (a, b), count in counter.items():
        per_neuron[a if by_neuron else b] += count
    assert totals.tolist() == [per_neuron[n] for n in range(n_neurons)]
