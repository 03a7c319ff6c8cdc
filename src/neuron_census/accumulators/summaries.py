"""Bounded-memory counts of (neuron, n-gram) firings and the coverage statistics read from them.

A neuron firing at position k is triggered by the n-gram x_{k-n+1} .. x_k (Voita et al. 2023, Sec. 4.1).
Exact counts of every (neuron, n-gram) pair grow with the data, so each neuron keeps a Misra-Gries
summary of at most `capacity` n-grams. Summaries are merged by adding counters and then subtracting,
per neuron, the (capacity+1)-th largest counter from all of them (dropping those that reach zero); this
is the mergeable Misra-Gries summary, so per-batch, per-shard and cross-shard merges all keep the
guarantee

    estimate <= true count <= estimate + (fires - sum of estimates) / (capacity + 1)

for every n-gram of the neuron (n-grams absent from the summary have estimate 0). A neuron whose
distinct n-grams never exceed `capacity` is never pruned, and then `fires == sum of estimates` and every
count is exact: the summary costs no accuracy at all until a neuron has more than `capacity` distinct
n-grams. Coverage is then reported with certified lower and upper bounds that coincide when exact.

N-grams are packed into one int64 (token ids in base `vocab_size`, oldest first). A stored summary is
three parallel arrays sorted by (group, gram): group = layer slot * n_neurons + neuron. While capturing, a
summary is an `accumulators.tables.KeyTable`: sorted unique packed keys `group * span + gram` and their
counts, merged and pruned by the `*_keys` functions here, on any device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuron_census.config import schema_defaults

INT64_LIMIT = 1 << 62


def check_packable(vocab_size: int, order: int) -> None:
    """N-grams of `order` over `vocab_size` tokens must fit one int64 key."""
    if vocab_size**order >= INT64_LIMIT:
        raise ValueError(f"{order}-grams over a vocabulary of {vocab_size} do not fit a 64-bit key; lower the order")


def unpack_ngram(key: int, order: int, vocab_size: int) -> tuple[int, ...]:
    """Token ids of a packed n-gram, oldest first."""
    return tuple(int(key) // vocab_size**power % vocab_size for power in range(order - 1, -1, -1))


def order_keys(order: int) -> tuple[str, str, str]:
    """State keys of the summaries of one n-gram order: group (absent from `ngram_count`), gram and count."""
    return f"order{order}_group", f"order{order}_gram", f"order{order}_count"


def neurons_per_key(n_neurons: int, span: int) -> int:
    """How many neurons share one int64 key space `neuron * span + gram` (all of them, unless grams are huge).

    Trigrams of a 128k vocabulary leave room for 4,371 neurons per key space; wider layers are split
    into blocks of neurons, each with keys of its own.
    """
    return max(1, min(n_neurons, ((1 << 63) - 1) // span))  # block * span itself fits: group edges are keys too


def coalesce_keys(keys: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the counts of equal keys: sorted unique keys and their totals (one stable radix sort)."""
    if len(keys) == 0:
        return keys, counts
    keys, order = torch.sort(keys, stable=True)
    counts = counts.index_select(0, order)
    unique, runs = torch.unique_consecutive(keys, return_counts=True)
    if len(unique) == len(keys):
        return keys, counts
    totals = torch.cumsum(counts, 0)[torch.cumsum(runs, 0) - 1]
    return unique, torch.diff(totals, prepend=totals.new_zeros(1))


def prune_keys(keys: torch.Tensor, counts: torch.Tensor, span: int, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`prune` of sorted unique packed keys whose group is `key // span` (a no-op for capacity None).

    A group over capacity loses its (capacity+1)-th largest counter (its cut) from every counter, and the
    counters that reach zero are dropped; every counter ranked below the cut is at most the cut, so this
    also keeps at most `capacity`. Groups are found by binary search, cuts by `_group_cuts` (no sort of
    the table), and each entry's cut by a running sum of steps at group edges.
    """
    if capacity is None or len(keys) <= capacity:
        return keys, counts
    device = keys.device
    first, last = (key // span for key in torch.stack((keys[0], keys[-1])).tolist())  # one wait, not two
    edges = torch.searchsorted(keys, torch.arange(first, last + 2, device=device) * span)
    over = (edges.diff() > capacity).nonzero(as_tuple=True)[0]
    if len(over) == 0:
        return keys, counts
    starts, ends = edges[over], edges[over + 1]
    cut = _group_cuts(counts, starts, ends, capacity)
    steps = torch.zeros(len(keys) + 1, dtype=counts.dtype, device=device)
    steps.index_add_(0, starts, cut).index_add_(0, ends, -cut)
    reduced = counts - torch.cumsum(steps[:-1], 0)
    kept = (reduced > 0).nonzero(as_tuple=True)[0]
    return keys.index_select(0, kept), reduced.index_select(0, kept)


CUT_LEVELS = 4  # counting passes of `_group_cuts` before the groups still open are ranked by a sort


def _group_cuts(counts: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, capacity: int) -> torch.Tensor:
    """The (capacity+1)-th largest of each run `counts[start:end]` (runs sorted, longer than capacity, counts >= 1).

    Counters are mostly small, so the cut is found by counting: a run whose counters of at least `level`
    number more than `capacity` has a cut of at least `level`, and one that reaches a level reached every
    lower one. Each level is one comparison and one running sum over all runs; only the few runs still open
    after `CUT_LEVELS` levels are read back and ranked.
    """
    low, high = torch.stack((starts[0], ends[-1])).tolist()
    dtype = torch.int32 if high - low < 1 << 31 else torch.int64
    first, last = (starts - low - 1).clamp(min=0), ends - low - 1
    cut = torch.ones(len(starts), dtype=counts.dtype, device=counts.device)
    for level in range(2, 2 + CUT_LEVELS):
        at_least = torch.cumsum(counts[low:high] >= level, 0, dtype=dtype)
        before = torch.where(starts > low, at_least[first], 0)
        reached = at_least[last] - before > capacity
        cut = torch.where(reached, level, cut)
    open_runs = reached.nonzero(as_tuple=True)[0]
    if len(open_runs) > 0:
        cut[open_runs] = _ranked_cuts(counts, starts[open_runs], ends[open_runs], capacity)
    return cut


def _ranked_cuts(counts: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, capacity: int) -> torch.Tensor:
    """`_group_cuts` by ranking: one sort of (run, descending count) over the runs' members."""
    device = counts.device
    lengths = ends - starts
    offsets = torch.cumsum(lengths, 0) - lengths  # where each run begins among the members
    n_members = int(lengths.sum())
    member_run = torch.repeat_interleave(torch.arange(len(starts), device=device), lengths, output_size=n_members)
    member_count = counts[torch.arange(n_members, device=device) + (starts - offsets)[member_run]]
    count_span = int(member_count.max()) + 1
    ranked = torch.sort(member_run * count_span + (count_span - 1 - member_count)).values
    at_cut = ranked[offsets + capacity] - torch.arange(len(starts), device=device) * count_span
    return count_span - 1 - at_cut


def split_sorted_keys(keys: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(key // span, key % span) of sorted non-negative keys, by binary search for the group edges.

    64-bit division is slow on CPUs; the groups of sorted keys are runs, found in O(groups x log keys).
    """
    if len(keys) == 0:
        return keys, keys
    n_groups = int(keys[-1]) // span + 1
    if n_groups > len(keys):
        group = torch.div(keys, span, rounding_mode="floor")
    else:
        edges = torch.searchsorted(keys, torch.arange(n_groups + 1, device=keys.device) * span)
        groups = torch.arange(n_groups, device=keys.device)
        group = torch.repeat_interleave(groups, edges.diff(), output_size=len(keys))  # sized: no wait
    return group, keys - group * span


def add_sorted_keys(
    key: torch.Tensor, count: torch.Tensor, new_key: torch.Tensor, new_count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique `key` plus sorted unique `new_key`: (keys, summed counts), in key order.

    Only `new_key` had to be sorted: its entries are found by binary search and the union is laid out by
    a running count of insertions, so a large table is never re-sorted.
    """
    if len(key) == 0:
        return new_key, new_count
    at = torch.searchsorted(key, new_key)
    found = key[at.clamp(max=len(key) - 1)] == new_key
    found_at = found.nonzero(as_tuple=True)[0]  # one wait for the device, not one per masked column
    count = count.clone().index_add_(0, at[found_at], new_count[found_at])
    fresh = torch.nonzero_static(~found, size=len(new_key) - len(found_at))[:, 0]  # size known: no wait
    fresh_at = at[fresh]
    inserted_before = torch.cumsum(_occurrences(fresh_at, len(key) + 1), 0)[: len(key)]
    place_old = inserted_before.add_(torch.arange(len(key), device=key.device))
    place_new = fresh_at.add_(torch.arange(len(fresh_at), device=key.device))

    def union(old: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(key) + len(fresh), dtype=old.dtype, device=old.device)
        out.index_copy_(0, place_old, old)
        out.index_copy_(0, place_new, added[fresh])
        return out

    return union(key, new_key), union(count, new_count)


def _occurrences(values: torch.Tensor, size: int) -> torch.Tensor:
    """How often each of 0 .. size-1 occurs in `values` (all in range): `bincount` on a CPU; on a GPU a
    scatter-add, since `bincount` there reads the maximum back to size its output."""
    if values.device.type == "cpu":
        return torch.bincount(values, minlength=size)
    return torch.zeros(size, dtype=torch.int64, device=values.device).index_add_(0, values, torch.ones_like(values))


def coverage_target(fires: np.ndarray, fraction: float) -> np.ndarray:
    """Smallest integer number of firings that is at least `fraction` of `fires`."""
    return np.ceil(np.asarray(fires, dtype=np.float64) * fraction - 1e-9).astype(np.int64)


def coverage_bounds(
    group: np.ndarray,
    count: np.ndarray,
    fires: np.ndarray,
    capacity: int | None,
    fraction: float = schema_defaults("analysis")["ngram_coverage"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (index into `fires`), bounds on the number of distinct n-grams covering `fraction` of fires.

    Returns (lower, upper, exact) arrays of len(fires); groups that never fire get 0, 0, True.
    With exact counts (capacity None or nothing pruned) lower == upper. Otherwise, with slack
    d = (fires - kept)/(capacity + 1): the upper bound takes the estimated counters greedily and then
    one n-gram per missing firing; the lower bound takes every counter at estimate + d and unseen
    n-grams at d each.
    """
    fires = np.asarray(fires, dtype=np.int64)
    n_groups = len(fires)
    lower = np.zeros(n_groups, dtype=np.int64)
    upper = np.zeros(n_groups, dtype=np.int64)
    kept_sum = np.bincount(group, weights=count, minlength=n_groups).astype(np.int64) if len(group) else np.zeros(n_groups, dtype=np.int64)
    exact = kept_sum == fires
    target = coverage_target(fires, fraction)
    if len(group) == 0:
        slack_only = fires > 0
        upper[slack_only] = target[slack_only]
        lower[slack_only] = _slack_items(target[slack_only], fires[slack_only], capacity)
        return lower, upper, exact
    order = np.lexsort((-count, group))
    g, c = group[order], count[order]
    groups_present, starts, sizes = np.unique(g, return_index=True, return_counts=True)
    cumulative = np.cumsum(c)
    before = np.repeat(np.r_[0, cumulative[starts[1:] - 1]], sizes)
    within = cumulative - before  # cumulative count inside the group, counters sorted descending
    group_target = np.repeat(target[groups_present], sizes)
    reached = within >= group_target
    # upper bound: first position where the estimates reach the target, else kept + missing firings
    first_reach = _first_true_per_group(reached, starts)
    kept_total = np.add.reduceat(c, starts)
    upper_present = np.where(
        first_reach >= 0, first_reach + 1, sizes + np.maximum(target[groups_present] - kept_total, 0)
    )
    upper[groups_present] = upper_present
    if capacity is None or exact.all():
        lower[groups_present] = upper_present
        return lower, upper, exact
    slack = summary_slack(fires, kept_sum, capacity)  # 0 where exact
    rank = np.arange(len(g)) - np.repeat(starts, sizes)
    optimistic = within + (rank + 1) * np.repeat(slack[groups_present], sizes)
    reached_hi = optimistic >= group_target
    first_hi = _first_true_per_group(reached_hi, starts)
    remaining = target[groups_present] - (kept_total + sizes * slack[groups_present])
    extra = np.where(
        slack[groups_present] > 0, np.ceil(np.maximum(remaining, 0) / np.maximum(slack[groups_present], 1e-300) - 1e-9), 0
    )
    lower_present = np.where(first_hi >= 0, first_hi + 1, sizes + extra.astype(np.int64))
    lower[groups_present] = np.where(exact[groups_present], upper_present, lower_present)
    absent = np.setdiff1d(np.flatnonzero(fires > 0), groups_present)
    upper[absent] = target[absent]
    lower[absent] = _slack_items(target[absent], fires[absent], capacity)
    return lower, upper, exact


def summary_slack(total: Any, kept: Any, capacity: int | None) -> Any:
    """How far below its true count any counter of a Misra-Gries summary may be, absent n-grams included:
    (`total` counted - `kept`, the sum of the estimates) / (capacity + 1); 0 when nothing was pruned.
    Element-wise for arrays of summaries (one per neuron)."""
    if capacity is None:
        return np.zeros(np.shape(total)) if np.ndim(total) else 0.0
    return np.maximum(np.asarray(total, dtype=np.float64) - kept, 0.0) / (capacity + 1)


def _slack_items(target: np.ndarray, fires: np.ndarray, capacity: int | None) -> np.ndarray:
    """Lower bound for a group with no counter left: every unseen n-gram holds at most the slack."""
    if capacity is None:
        return target
    slack = summary_slack(fires, 0, capacity)
    return np.ceil(target / np.maximum(slack, 1e-300) - 1e-9).astype(np.int64)


def _first_true_per_group(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Index within each group of its first True flag, -1 where none."""
    position = np.where(flags, np.arange(len(flags)), len(flags))
    first = np.minimum.reduceat(position, starts)
    found = first < len(flags)
    return np.where(found, first - starts, -1)


def batch_ngrams(
    tokens: torch.Tensor, mask: torch.Tensor, order: int, vocab_size: int, counted_from: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's distinct complete n-grams (sorted), and per position [B*T] 1 + its n-gram's index among
    them, or 0 (the spare row) where no complete n-gram ends. The same for every layer of a batch.

    One `unique` over every position, the incomplete ones keyed -1, with a -1 appended so that the spare
    is always first: a single wait for the device (the output's size), and no boolean indexing."""
    if counted_from is None:  # the n-gram ending here lies inside the sequence and every token of it is counted
        eligible = mask.clone()
        for offset in range(1, order):
            eligible[:, offset:] &= mask[:, :-offset]
            eligible[:, :offset] = False
    else:  # the mask is "position >= counted_from": so is every complete n-gram's end, order - 1 later
        eligible = torch.arange(mask.shape[1], device=mask.device) >= counted_from + order - 1
    # keys: windows of the left-padded tokens, weighted by powers of the vocabulary size, oldest first
    windows = torch.nn.functional.pad(tokens, (order - 1, 0)).unfold(1, order, 1)  # [B, T, order]
    weights = torch.tensor([vocab_size**power for power in range(order - 1, -1, -1)], device=tokens.device)
    packed = torch.where(eligible, (windows * weights).sum(dim=-1), -1).reshape(-1)
    unique, inverse = torch.unique(torch.cat([packed, packed.new_full((1,), -1)]), return_inverse=True)
    return unique[1:], inverse[:-1]
