"""N-gram summaries and coverage bounds against exact counting by brute force."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from neuron_census.accumulators import Geometry, LayerBatch, base, merge_states, tables
from neuron_census.accumulators.ngram_count import NgramCount
from neuron_census.accumulators.ngram_fire_count import NgramFireCount
from neuron_census.accumulators.tables import merge_summaries
from summary_reference import coalesce, merge_summaries_by_sort, pack_ngrams, prune
from neuron_census.accumulators.summaries import (
    CUT_LEVELS,
    _group_cuts,
    add_sorted_keys,
    coalesce_keys,
    coverage_bounds,
    neurons_per_key,
    prune_keys,
    split_sorted_keys,
    summary_slack,
    unpack_ngram,
)

VOCAB, N_NEURONS, SEQ_LEN, N_SEQ = 9, 5, 12, 20
LAYERS = (0, 1, 2)


def reference_coverage(counts: list[int], fires: int, fraction: float = 0.95) -> int:
    """The fewest distinct n-grams whose firings reach `fraction` of `fires`, by definition."""
    if fires == 0:
        return 0
    target = math.ceil(fires * fraction - 1e-9)
    total = 0
    for k, value in enumerate(sorted(counts, reverse=True), start=1):
        total += value
        if total >= target:
            return k
    raise AssertionError("counts do not reach the target")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    # skewed tokens so that some n-grams repeat a lot
    tokens = rng.choice(VOCAB, size=(N_SEQ, SEQ_LEN), p=np.r_[0.3, 0.2, np.full(VOCAB - 2, 0.5 / (VOCAB - 2))])
    tokens[:, 0] = 0
    fires = rng.random((len(LAYERS), N_SEQ, SEQ_LEN, N_NEURONS)) < np.linspace(0.05, 0.9, N_NEURONS)
    mask = np.ones((N_SEQ, SEQ_LEN), dtype=bool)
    mask[:, 0] = False
    return {"tokens": tokens, "fires": fires & mask[None, :, :, None], "mask": mask}


def brute_counts(data, order: int) -> tuple[dict[tuple[int, int, tuple[int, ...]], int], np.ndarray]:
    """(slot, neuron, n-gram) -> firings, and eligible firings per [slot, neuron]."""
    counts: Counter = Counter()
    fires = np.zeros((len(LAYERS), N_NEURONS), dtype=np.int64)
    for slot in range(len(LAYERS)):
        for s in range(N_SEQ):
            for k in range(order, SEQ_LEN):  # the n-gram must not reach the BOS at position 0
                gram = tuple(int(t) for t in data["tokens"][s, k - order + 1 : k + 1])
                for n in range(N_NEURONS):
                    if data["fires"][slot, s, k, n]:
                        counts[(slot, n, gram)] += 1
                        fires[slot, n] += 1
    return counts, fires


def feed(accumulator, data, rows: np.ndarray, device: torch.device, batch: int = 6):
    for start in range(0, len(rows), batch):
        sel = rows[start : start + batch]
        for slot, layer in enumerate(LAYERS):
            fires = torch.from_numpy(data["fires"][slot][sel]).to(device)
            accumulator.update(
                LayerBatch(
                    layer=layer,
                    acts=fires.float(),
                    fires=fires,
                    mask=torch.from_numpy(data["mask"][sel]).to(device),
                    tokens=torch.from_numpy(data["tokens"][sel]).to(device),
                    seq_ids=torch.from_numpy(sel).to(device),
                    first_seq=int(sel[0]),
                )
            )
    return accumulator.state()


GEOMETRY = Geometry(layers=LAYERS, n_neurons=N_NEURONS, seq_len=SEQ_LEN, vocab_size=VOCAB)


def test_pack_and_unpack_round_trip():
    tokens = np.array([[0, 3, 8, 1, 5]])
    keys = pack_ngrams(tokens, 3, VOCAB)
    assert keys[0, :2].tolist() == [-1, -1]
    assert [unpack_ngram(k, 3, VOCAB) for k in keys[0, 2:]] == [(0, 3, 8), (3, 8, 1), (8, 1, 5)]


def decoded(state, order: int) -> dict[tuple[int, int, tuple[int, ...]], int]:
    group, gram, count = (state[f"order{order}_{k}"] for k in ("group", "gram", "count"))
    return {
        (int(g) // N_NEURONS, int(g) % N_NEURONS, unpack_ngram(int(k), order, VOCAB)): int(c)
        for g, k, c in zip(group, gram, count)
    }


@pytest.mark.parametrize("order", [2, 3])
def test_counts_are_exact_within_capacity(data, device, order):
    state = feed(NgramFireCount(GEOMETRY, device, layers=LAYERS, orders=(2, 3), capacity=10_000), data, np.arange(N_SEQ), device)
    expected, fires = brute_counts(data, order)
    assert decoded(state, order) == dict(expected)
    np.testing.assert_array_equal(state["fires"][[2, 3].index(order)], fires)


def test_batches_firing_only_at_complete_ngrams_lose_no_pair(data, device):
    """Firings at positions without a complete n-gram are counted apart and dropped; a batch with none
    there (here: no firing before position 3) keeps every pair, its last one included."""
    late = dict(data, fires=data["fires"].copy())
    late["fires"][:, :, :3] = False
    state = feed(NgramFireCount(GEOMETRY, device, layers=LAYERS, orders=(2, 3), capacity=10_000), late, np.arange(N_SEQ), device)
    for index, order in enumerate((2, 3)):
        expected, fires = brute_counts(late, order)
        assert decoded(state, order) == dict(expected)
        np.testing.assert_array_equal(state["fires"][index], fires)


def test_only_requested_layers_are_counted(data, device):
    state = feed(NgramFireCount(GEOMETRY, device, layers=(1,), orders=(2,)), data, np.arange(N_SEQ), device)
    expected, fires = brute_counts(data, 2)
    assert decoded(state, 2) == {(0, n, g): c for (slot, n, g), c in expected.items() if slot == 1}
    np.testing.assert_array_equal(state["fires"][0], fires[[1]])


def test_shards_merge_to_one_pass_when_exact(data, device):
    make = lambda: NgramFireCount(GEOMETRY, device, layers=LAYERS, capacity=10_000, pending_bytes=400)  # noqa: E731
    whole = feed(make(), data, np.arange(N_SEQ), device)
    parts = [feed(make(), data, np.arange(N_SEQ)[i::3], device) for i in range(3)]
    merged = merge_states([{"ngram_fire_count": p} for p in parts])["ngram_fire_count"]
    for key in whole:
        np.testing.assert_array_equal(merged[key], whole[key], err_msg=key)


@pytest.mark.parametrize("capacity", [1, 2, 4, 9])
def test_small_capacity_keeps_the_misra_gries_guarantee(data, device, capacity):
    state = feed(
        NgramFireCount(GEOMETRY, device, layers=LAYERS, orders=(2,), capacity=capacity, pending_bytes=1000),
        data,
        np.arange(N_SEQ),
        device,
    )
    expected, fires = brute_counts(data, 2)
    estimates = decoded(state, 2)
    kept = Counter()
    for (slot, n, _), c in estimates.items():
        kept[(slot, n)] += c
    per_neuron = Counter()
    for (slot, n, _), _ in estimates.items():
        per_neuron[(slot, n)] += 1
    assert max(per_neuron.values()) <= capacity
    for key, true in expected.items():
        slot, n, _ = key
        slack = (fires[slot, n] - kept[(slot, n)]) / (capacity + 1)
        estimate = estimates.get(key, 0)
        assert estimate <= true <= estimate + slack + 1e-9, key
    # coverage bounds bracket the true coverage
    lower, upper, exact = coverage_bounds(
        state["order2_group"], state["order2_count"], state["fires"][0].reshape(-1), capacity
    )
    for slot in range(len(LAYERS)):
        for n in range(N_NEURONS):
            true_counts = [c for (s, m, _), c in expected.items() if (s, m) == (slot, n)]
            truth = reference_coverage(true_counts, int(fires[slot, n]))
            g = slot * N_NEURONS + n
            assert lower[g] <= truth <= upper[g], (slot, n, lower[g], truth, upper[g])
            if exact[g]:
                assert lower[g] == upper[g] == truth


@pytest.mark.parametrize("pending_bytes", [1000, 6000, 1 << 30], ids=["merged-every-batch", "merged-every-few", "merged-once"])
def test_cpu_pairs_and_gpu_tables_give_the_same_bounded_summaries(data, pending_bytes, monkeypatch):
    """A CPU adds firings as pairs, a GPU as dense tables; both merge at the same points, so even pruned
    summaries (capacity 2, merged at different batches) agree exactly."""
    cpu = torch.device("cpu")
    make = lambda: NgramFireCount(GEOMETRY, cpu, layers=LAYERS, orders=(2, 3), capacity=2, pending_bytes=pending_bytes)  # noqa: E731
    pairs = feed(make(), data, np.arange(N_SEQ), cpu, batch=2)
    monkeypatch.setattr(base, "HOST_PATHS", False)
    dense = feed(make(), data, np.arange(N_SEQ), cpu, batch=2)
    assert len(pairs["order2_count"]) and (pairs["fires"] > 0).any()
    for key in dense:
        np.testing.assert_array_equal(pairs[key], dense[key], err_msg=key)


@pytest.mark.parametrize("capacity", [2, 10_000])
def test_neuron_blocks_give_the_summaries_of_one_key_space(data, device, capacity, monkeypatch):
    """Keys too wide for int64 (e.g. trigrams of a 128k vocabulary) are split into blocks of neurons; a
    blocked table gives the summaries of one key space."""
    make = lambda: NgramFireCount(GEOMETRY, device, layers=LAYERS, orders=(2, 3), capacity=capacity)  # noqa: E731
    whole = feed(make(), data, np.arange(N_SEQ), device)
    monkeypatch.setattr(tables, "neurons_per_key", lambda n_neurons, span: 2)  # 5 neurons: 3 blocks
    blocked_accumulator = make()
    assert blocked_accumulator._pending[0][3].table.n_blocks == 3
    blocked = feed(blocked_accumulator, data, np.arange(N_SEQ), device)
    for key in whole:
        np.testing.assert_array_equal(blocked[key], whole[key], err_msg=key)


@pytest.mark.parametrize("pending_bytes", [1, 1 << 30], ids=["merged-every-batch", "merged-once"])
def test_exact_counts_do_not_depend_on_when_batches_are_merged(data, device, pending_bytes):
    state = feed(NgramFireCount(GEOMETRY, device, layers=LAYERS, capacity=10_000, pending_bytes=pending_bytes), data, np.arange(N_SEQ), device)
    for index, order in enumerate((2, 3)):
        expected, fires = brute_counts(data, order)
        assert decoded(state, order) == dict(expected)
        np.testing.assert_array_equal(state["fires"][index], fires)


def test_neurons_per_key_fills_int64():
    assert neurons_per_key(3072, 50_272**3) == 3072  # OPT trigrams: one key space
    assert neurons_per_key(36_864, 50_272**3) == 36_864  # OPT-66b's widest layer still fits
    assert neurons_per_key(14_336, 128_256**3) == 4_371  # Llama-3 trigrams: blocks of 4,371 neurons
    assert neurons_per_key(14_336, 128_256**3) * 128_256**3 <= 2**63 - 1
    assert neurons_per_key(100, 2**60) == 7  # 8 * 2**60 would be 2**63, one past int64


def test_exact_coverage_equals_definition(data, device):
    state = feed(NgramFireCount(GEOMETRY, device, layers=LAYERS, orders=(3,), capacity=10_000), data, np.arange(N_SEQ), device)
    expected, fires = brute_counts(data, 3)
    lower, upper, exact = coverage_bounds(state["order3_group"], state["order3_count"], fires.reshape(-1), 10_000)
    assert exact.all()
    for slot in range(len(LAYERS)):
        for n in range(N_NEURONS):
            truth = reference_coverage([c for (s, m, _), c in expected.items() if (s, m) == (slot, n)], int(fires[slot, n]))
            assert lower[slot * N_NEURONS + n] == upper[slot * N_NEURONS + n] == truth


def test_coverage_of_hand_made_counts():
    # group 0: 10 firings on one n-gram, then 1 each on 5 others: 95% of 15 = 14.25 -> 15 -> all 6 needed
    # group 1: 19 + 1 -> 95% of 20 = 19 -> 1 n-gram; group 2 never fires
    group = np.array([0] * 6 + [1, 1])
    count = np.array([10, 1, 1, 1, 1, 1, 19, 1])
    lower, upper, exact = coverage_bounds(group, count, np.array([15, 20, 0]), None)
    assert upper.tolist() == lower.tolist() == [6, 1, 0]
    assert exact.tolist() == [True, True, True]


def test_merge_summaries_prunes_to_capacity():
    parts = [(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([5, 3, 1]))]
    group, gram, count = merge_summaries(parts, 2)
    # third largest (1) is subtracted from every counter; those reaching 0 go
    assert gram.tolist() == [1, 2] and count.tolist() == [4, 2]


def _brute_merge(parts, capacity: int) -> dict[tuple[int, int], int]:
    """Mergeable Misra-Gries by hand: add every counter, then per group over capacity subtract the
    (capacity+1)-th largest and drop what is not positive."""
    totals: Counter = Counter()
    for group, gram, count in parts:
        for key in zip(group.tolist(), gram.tolist(), count.tolist()):
            totals[key[:2]] += key[2]
    kept = {}
    for g in {key[0] for key in totals}:
        counters = {key: c for key, c in totals.items() if key[0] == g}
        ranked = sorted(counters.values(), reverse=True)
        cut = ranked[capacity] if len(ranked) > capacity else 0
        kept |= {key: c - cut for key, c in counters.items() if c - cut > 0}
    return kept


@pytest.mark.parametrize("capacity", [1, 3, 40])
def test_merging_summaries_as_key_tables_equals_sorting_and_a_brute_force(capacity):
    """Shard merges add key tables: parts sorted or not, with repeated pairs, groups far over capacity and
    many ties, equal to the sort-based merge and to the definition."""
    rng = np.random.default_rng(capacity)
    sorted_part = coalesce(rng.integers(0, 12, 1500), rng.integers(0, 300, 1500), rng.integers(1, 6, 1500))
    unsorted_part = (rng.integers(0, 12, 400), rng.integers(0, 300, 400), rng.integers(1, 6, 400))
    empty = (np.zeros(0, dtype=np.int64),) * 3
    parts = [sorted_part, empty, unsorted_part, sorted_part]
    got = merge_summaries(parts, capacity)
    for g, e in zip(got, merge_summaries_by_sort(parts, capacity)):
        np.testing.assert_array_equal(g, e)
    assert dict(zip(zip(got[0].tolist(), got[1].tolist()), got[2].tolist())) == _brute_merge(parts, capacity)
    assert max(Counter(got[0].tolist()).values()) <= capacity < max(Counter(sorted_part[0].tolist()).values())


def test_merging_one_summary_leaves_it_as_it_was():
    part = (np.array([0, 0, 0, 1]), np.array([1, 2, 3, 1]), np.array([5, 3, 1, 2]))
    copies = [column.copy() for column in part]
    group, gram, count = merge_summaries([part], 2)
    assert gram.tolist() == [1, 2, 1] and count.tolist() == [4, 2, 2]
    for column, copy in zip(part, copies):
        np.testing.assert_array_equal(column, copy)


def test_merging_summaries_beyond_packed_keys():
    part = (np.array([0, 9]), np.array([0, 1 << 61]), np.array([2, 3]))  # packed keys would overflow int64
    got = merge_summaries([part, part], 1)
    assert dict(zip(zip(got[0].tolist(), got[1].tolist()), got[2].tolist())) == _brute_merge([part, part], 1)


def test_merging_summaries_refuses_what_no_summary_holds():
    with pytest.raises(ValueError, match="a count below 1"):
        merge_summaries([(np.array([0, 1]), np.array([4, 4]), np.array([0, 2]))], 1)


def test_ngram_occurrences(data, device):
    state = feed(NgramCount(GEOMETRY, device, orders=(2, 3)), data, np.arange(N_SEQ), device)
    for index, order in enumerate((2, 3)):
        expected = Counter(
            tuple(int(t) for t in data["tokens"][s, k - order + 1 : k + 1]) for s in range(N_SEQ) for k in range(order, SEQ_LEN)
        )
        got = {unpack_ngram(int(k), order, VOCAB): int(c) for k, c in zip(state[f"order{order}_gram"], state[f"order{order}_count"])}
        assert got == dict(expected)
        assert state["total"][index] == sum(expected.values())


@pytest.mark.parametrize("capacity", [2, 5])
def test_bounded_ngram_occurrences_merged_every_batch_keep_the_guarantee(data, device, capacity):
    """Merged into the summary once as many n-grams wait as it holds (here: every batch), pruned many times."""
    state = feed(NgramCount(GEOMETRY, device, orders=(2,), capacity=capacity), data, np.arange(N_SEQ), device)
    expected = Counter(tuple(int(t) for t in data["tokens"][s, k - 1 : k + 1]) for s in range(N_SEQ) for k in range(2, SEQ_LEN))
    got = {unpack_ngram(int(k), 2, VOCAB): int(c) for k, c in zip(state["order2_gram"], state["order2_count"])}
    assert len(got) <= capacity < len(expected)  # really pruned
    slack = summary_slack(int(state["total"][0]), sum(got.values()), capacity)
    assert slack > 0
    for gram, true in expected.items():
        assert got.get(gram, 0) <= true <= got.get(gram, 0) + slack + 1e-9, gram


SPAN = 1000  # packs (group, gram) test summaries into keys group * SPAN + gram


def _merge_on_device(parts, capacity: int, device: torch.device = torch.device("cpu")):
    """Summaries merged as capture merges them: packed keys coalesced, then pruned; unpacked for comparison."""
    keys = torch.from_numpy(np.concatenate([p[0] * SPAN + p[1] for p in parts]).astype(np.int64)).to(device)
    counts = torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.int64)).to(device)
    keys, counts = (t.cpu().numpy() for t in prune_keys(*coalesce_keys(keys, counts), SPAN, capacity))
    return keys // SPAN, keys % SPAN, counts


@pytest.mark.parametrize("capacity", [1, 3, 50])
def test_device_summaries_equal_the_numpy_ones(capacity, device):
    rng = np.random.default_rng(capacity)
    parts = [
        (rng.integers(0, 6, size=n), rng.integers(0, 30, size=n), rng.integers(1, 9, size=n))
        for n in (40, 0, 25, 60)
    ]
    expected = merge_summaries_by_sort(parts, capacity)
    got = _merge_on_device(parts, capacity, device)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("capacity", [1, 7, 64])
def test_device_pruning_equals_numpy_with_many_ties(capacity, device):
    """Thousands of counters, small counts (many ties broken by gram), groups far over capacity."""
    rng = np.random.default_rng(capacity)
    parts = [(rng.integers(0, 20, size=n), rng.integers(0, 300, size=n), rng.integers(1, 5, size=n)) for n in (3000, 2000)]
    expected = merge_summaries_by_sort(parts, capacity)
    got = _merge_on_device(parts, capacity, device)
    assert len(expected[0]) < 5000
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("capacity", [1, 3, 7, 64, None])
def test_pruning_packed_keys_equals_numpy(capacity, device):
    """Packed keys (group * span + gram), small counts with many ties, some groups far over capacity."""
    rng = np.random.default_rng(capacity or 0)
    span = 1000
    for n_groups, n_keys in ((20, 3000), (3, 10), (400, 900)):
        group, gram, count = coalesce(
            rng.integers(0, n_groups, size=n_keys) * 3, rng.integers(0, span, size=n_keys), rng.integers(1, 5, size=n_keys)
        )
        keys, counts = (
            t.cpu() for t in prune_keys(torch.from_numpy(group * span + gram).to(device), torch.from_numpy(count).to(device), span, capacity)
        )
        expected = (group, gram, count) if capacity is None else prune(group, gram, count, capacity)
        np.testing.assert_array_equal(keys.numpy(), expected[0] * span + expected[1])
        np.testing.assert_array_equal(counts.numpy(), expected[2])


@pytest.mark.parametrize("capacity", [1, 4, 30])
def test_group_cuts_by_counting_and_ranking_equal_a_sort(capacity, device):
    """Cuts found at every counting level and by the ranked fallback are each run's (capacity+1)-th largest."""
    rng = np.random.default_rng(capacity)
    highs = rng.choice([2, 3, 4, 5, 7, 12, 10_000], size=60)
    runs = [rng.integers(1, high, size=int(rng.integers(capacity + 1, 4 * capacity + 40))) for high in highs]
    sizes = np.array([len(run) for run in runs])
    gaps = rng.integers(0, 3, size=len(runs))  # runs need not be adjacent
    starts = np.cumsum(sizes + gaps) - sizes
    counts = np.ones(starts[-1] + sizes[-1], dtype=np.int64)
    for start, run in zip(starts, runs):
        counts[start : start + len(run)] = run
    expected = np.array([np.sort(run)[::-1][capacity] for run in runs])
    assert {1, 2, 3}.issubset(set(expected.tolist())) and expected.max() > CUT_LEVELS + 1  # every path is taken
    cut = _group_cuts(*(torch.from_numpy(a).to(device) for a in (counts, starts, starts + sizes)), capacity)
    np.testing.assert_array_equal(cut.cpu().numpy(), expected)


@pytest.mark.parametrize("span", [1, 7, 50_272**3])
def test_split_sorted_keys_equals_divmod(span, device):
    rng = np.random.default_rng(3)
    for n_groups, n_keys in ((1, 5), (30, 400), (5000, 40), (1, 0)):
        keys = np.unique(rng.integers(0, n_groups, size=n_keys) * span + rng.integers(0, span, size=n_keys))
        group, rest = (t.cpu() for t in split_sorted_keys(torch.from_numpy(keys).to(device), span))
        np.testing.assert_array_equal(group.numpy(), keys // span)
        np.testing.assert_array_equal(rest.numpy(), keys % span)


def test_adding_into_a_sorted_table_equals_coalescing_both(device):
    rng = np.random.default_rng(5)
    for n_table, n_new in ((0, 40), (50, 0), (400, 300), (2000, 37)):
        table = coalesce_keys(*(torch.from_numpy(rng.integers(0, hi, size=n_table)).to(device) for hi in (540, 5)))
        new = coalesce_keys(*(torch.from_numpy(rng.integers(0, hi, size=n_new)).to(device) for hi in (540, 5)))
        expected = coalesce_keys(*(torch.cat([t, n]) for t, n in zip(table, new)))
        keys, counts = add_sorted_keys(*table, *new)
        assert torch.equal(keys, expected[0]) and torch.equal(counts, expected[1])


def test_coalescing_keys_sums_equal_keys():
    keys, counts = coalesce_keys(torch.tensor([7, 3, 7, 9, 3, 7]), torch.tensor([1, 2, 3, 4, 5, 6]))
    assert keys.tolist() == [3, 7, 9] and counts.tolist() == [7, 10, 4]
