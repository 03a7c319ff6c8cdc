"""Slow, direct references for the summaries capture keeps: numpy sorts over every counter."""

from __future__ import annotations

import numpy as np


def pack_ngrams(tokens: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Keys [n_seq, seq_len] of the n-gram ending at each position (positions < order-1 get -1)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    keys = np.full(tokens.shape, -1, dtype=np.int64)
    if tokens.shape[1] < order:
        return keys
    packed = np.zeros((tokens.shape[0], tokens.shape[1] - order + 1), dtype=np.int64)
    for offset in range(order):
        packed = packed * vocab_size + tokens[:, offset : tokens.shape[1] - order + 1 + offset]
    keys[:, order - 1 :] = packed
    return keys


def coalesce(group: np.ndarray, gram: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum counts of equal (group, gram) pairs; output sorted by (group, gram)."""
    group, gram, count = (np.asarray(column, dtype=np.int64) for column in (group, gram, count))
    if len(group) == 0:
        return group, gram, count
    order = np.lexsort((gram, group))
    group, gram, count = group[order], gram[order], count[order]
    starts = np.flatnonzero(np.r_[True, (group[1:] != group[:-1]) | (gram[1:] != gram[:-1])])
    return group[starts], gram[starts], np.add.reduceat(count, starts).astype(np.int64)


def prune(
    group: np.ndarray, gram: np.ndarray, count: np.ndarray, capacity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Misra-Gries reduction of coalesced counters to at most `capacity` per group.

    Groups with more than `capacity` counters lose their (capacity+1)-th largest counter from every
    counter; non-positive counters are dropped. Groups within capacity are untouched (exact).
    """
    if len(group) == 0:
        return group, gram, count
    # counters come grouped (coalesced), and ranking keeps the groups in place: their starts hold for both
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    if sizes.max() <= capacity:  # no group over capacity: nothing to rank
        return group, gram, count
    by_count = np.lexsort((gram, -count, group))
    c = count[by_count]
    rank = np.arange(len(c)) - np.repeat(starts, sizes)
    over = sizes > capacity
    cut = np.zeros(len(starts), dtype=np.int64)
    cut[over] = c[starts[over] + capacity]
    reduced = c - np.repeat(cut, sizes)
    keep = (rank < capacity) & (reduced > 0)
    kept = by_count[keep]
    result_order = np.lexsort((gram[kept], group[kept]))
    kept = kept[result_order]
    return group[kept], gram[kept], (count[kept] - np.repeat(cut, sizes)[keep][result_order]).astype(np.int64)


def merge_summaries_by_sort(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], capacity: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge summaries (or exact counts, which are summaries too) by sorting every counter: add counters, then
    prune (None: exact counts); the reference for `tables.merge_summaries`."""
    group = np.concatenate([p[0] for p in parts]).astype(np.int64)
    gram = np.concatenate([p[1] for p in parts]).astype(np.int64)
    count = np.concatenate([p[2] for p in parts]).astype(np.int64)
    merged = coalesce(group, gram, count)
    return merged if capacity is None else prune(*merged, capacity)
