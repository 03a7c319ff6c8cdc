"""Both table layouts against counting by hand: exact tables against a Counter, bounded ones against the
reference Misra-Gries merge (`ngrams.coalesce` then `ngrams.prune`) applied at the same merge points."""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections import Counter

import numpy as np
import pytest
import torch

from neuron_census import count_tables
from neuron_census.accumulators import count_pairs
from neuron_census.count_tables import CsrTable, KeyTable, count_table
from neuron_census.ngrams import coalesce, prune


@pytest.fixture(autouse=True)
def merge_blocks_on_threads(monkeypatch):
    """Every merge of a table of several blocks runs them on the worker threads, however small."""
    monkeypatch.setattr(count_tables, "PARALLEL_MERGE_MIN", 0)


def layouts(device: torch.device):
    if device.type == "cpu":
        yield "csr", lambda rows, columns, capacity: CsrTable(rows, columns, capacity, n_blocks=1)
        # blocks of rows merged on threads (more blocks than rows: one a row)
        yield "csr, 3 blocks", lambda rows, columns, capacity: CsrTable(rows, columns, capacity, n_blocks=3)
    yield "keys", lambda rows, columns, capacity: KeyTable(rows, columns, capacity, device)


def random_batches(rng, n_rows: int, n_columns: int, n_batches: int, device: torch.device):
    """Sorted distinct (row, column) pairs and counts per batch, as `count_pairs` gives them; columns are
    spread over the whole range (wide columns: the top of int64 too)."""
    spread = n_columns // 40
    for _ in range(n_batches):
        size = int(rng.integers(0, 300))
        rows = torch.from_numpy(rng.integers(0, n_rows, size)).to(device)
        slots = torch.from_numpy(rng.integers(0, 40, size)).to(device)
        rows, slots, counts = count_pairs(rows, slots, n_rows, 40)
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
            assert table.staged() == [len(part[0]) for part in staged]
            if index % 4 == 3 or index == 13:
                table.merge()
                merged = coalesce(*(np.concatenate(column) for column in zip(reference, *staged)))
                reference = merged if capacity is None else prune(*merged, capacity)
                staged = []
                assert table.staged() == [] and table.held() == len(reference[0])
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
    monkeypatch.setattr(count_tables, "neurons_per_key", lambda n_rows, span: 4)
    blocked = KeyTable(9, 10**17, 3, device)
    assert (whole.n_blocks, blocked.n_blocks) == (1, 3)
    for batch in random_batches(np.random.default_rng(5), 9, 10**17, 8, device):
        for table in (whole, blocked):
            table.stage(*batch)
            table.merge()
    for want, have in zip(table_columns(whole), table_columns(blocked)):
        np.testing.assert_array_equal(have, want)


def test_host_tables_split_rows_into_a_block_per_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert CsrTable(10, 5, None).edges == [0, 2, 5, 7, 10]
    assert CsrTable(2, 5, None).edges == [0, 1, 2]  # never an empty block


def test_a_failing_block_merge_raises_in_the_caller(monkeypatch):
    table = CsrTable(4, 10, 1, n_blocks=2)
    table.stage(*(torch.tensor(column) for column in ([0, 3], [1, 2], [1, 1])))

    def broken(matrix, capacity):
        raise RuntimeError("prune failed")

    monkeypatch.setattr(count_tables, "_prune_rows", broken)
    with pytest.raises(RuntimeError, match="prune failed"):
        table.merge()


def test_the_layout_follows_the_device():
    assert isinstance(count_table(3, 5, None, torch.device("cpu")), CsrTable)
    assert isinstance(count_table(3, 5, None, torch.device("meta")), KeyTable)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_merges_on_threads_of_its_own(tmp_path):
    """After a fork the parent's merge threads are gone; the child's tables still merge (and do not hang).
    (`merge_blocks_on_threads` sends even these small merges to the threads.)"""
    def merged() -> list[list[int]]:
        table = CsrTable(6, 400, 2, n_blocks=2)
        for batch in random_batches(np.random.default_rng(2), 6, 400, 3, torch.device("cpu")):
            table.stage(*batch)
        table.merge()
        return [column.tolist() for column in table_columns(table)]

    expected = merged()  # the parent's pool now exists
    answer = tmp_path / "child.txt"  # a file by name, not an inherited descriptor, carries the child's answer
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's own pool does not survive a fork
            text, code = repr(merged()), 0
        except BaseException:
            text = traceback.format_exc()
        finally:
            answer.write_text(text)
            os._exit(code)
    for _ in range(600):  # a child waiting on the parent's vanished threads would hang forever
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child did not answer within 60 s")
    got = answer.read_text() if answer.exists() else "(no answer)"
    assert os.waitstatus_to_exitcode(status) == 0, got
    assert got == repr(expected)
