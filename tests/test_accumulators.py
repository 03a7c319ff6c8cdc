"""Every accumulator against a direct, slow computation over all activations at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuron_census.accumulators import Geometry, LayerBatch, base, merge_states
from neuron_census.accumulators import top_k
from neuron_census.accumulators.base import ExactFloatCounts, host_paths
from neuron_census.accumulators.fire_count import FireCount
from neuron_census.accumulators.moments import Moments
from neuron_census.accumulators.position_fire_count import PositionFireCount
from neuron_census.accumulators.summaries import add_sorted_keys, coalesce_keys
from neuron_census.accumulators.tables import coalesce_runs
from neuron_census.accumulators.token_count import TokenCount
from neuron_census.accumulators.token_fire_count import TokenFireCount, decode_token_fire_keys
from neuron_census.accumulators.top_k import TopK, ordered_bits, value_of

N_SEQ, SEQ_LEN, N_NEURONS, VOCAB = 12, 9, 7, 11
LAYERS = (1, 3)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(len(LAYERS), N_SEQ, SEQ_LEN, N_NEURONS)).astype(np.float32)
    acts = np.maximum(acts, 0.0)  # ReLU: many exact zeros, i.e. many ties
    acts[:, :, :, 0] = 0.0  # a dead neuron
    acts[0, :, :, 1] = np.round(acts[0, :, :, 1], 1)  # coarse values: ties among positives
    tokens = rng.integers(0, VOCAB, size=(N_SEQ, SEQ_LEN))
    mask = np.ones((N_SEQ, SEQ_LEN), dtype=bool)
    mask[:, 0] = False  # BOS
    return {"acts": acts, "tokens": tokens, "mask": mask}


GEOMETRY = Geometry(layers=LAYERS, n_neurons=N_NEURONS, seq_len=SEQ_LEN, vocab_size=VOCAB)


def run(
    accumulator,
    data,
    device: torch.device,
    rows: slice = slice(None),
    batch: int = 5,
    counted_from: int | None = None,
    dtype: torch.dtype = torch.float32,
    fires_from_acts: bool = True,
) -> dict[str, np.ndarray]:
    seq_ids = np.arange(N_SEQ)[rows]
    for start in range(0, len(seq_ids), batch):
        sel = seq_ids[start : start + batch]
        for slot, layer in enumerate(LAYERS):
            acts = torch.from_numpy(data["acts"][slot][sel]).to(device, dtype)
            mask = torch.from_numpy(data["mask"][sel]).to(device)
            accumulator.update(
                LayerBatch(
                    layer=layer,
                    acts=acts,
                    fires=(acts > 0) & mask[..., None],
                    mask=mask,
                    tokens=torch.from_numpy(data["tokens"][sel]).to(device),
                    seq_ids=torch.from_numpy(sel).to(device),
                    counted_from=counted_from,
                    first_seq=int(sel[0]),
                    fires_from_acts=fires_from_acts,
                )
            )
    return accumulator.state()


def fires_of(data) -> np.ndarray:
    return (data["acts"] > 0) & data["mask"][None, :, :, None]


def test_fire_count(data, device):
    state = run(FireCount(GEOMETRY, device), data, device)
    np.testing.assert_array_equal(state["counts"], fires_of(data).sum(axis=(1, 2)))
    np.testing.assert_array_equal(state["tokens"], [data["mask"].sum()] * len(LAYERS))
    assert state["counts"][:, 0].tolist() == [0, 0]


def test_position_fire_count(data, device):
    state = run(PositionFireCount(GEOMETRY, device), data, device)
    np.testing.assert_array_equal(state["counts"], fires_of(data).sum(axis=1))
    np.testing.assert_array_equal(state["tokens"], data["mask"].sum(axis=0))
    assert state["counts"][:, 0].sum() == 0  # BOS position never counted


@pytest.mark.parametrize("n_rows", [1, 5, 600])
def test_position_fires_sum_the_batch_rows(n_rows, device):
    """Firings per position over the batch, as exact float32 integers, also from a strided firing matrix."""
    rng = np.random.default_rng(n_rows)
    fires = rng.random((n_rows, 3, 4)) < 0.5
    fires[:, 0, 0] = True  # every row fires here
    strided = torch.from_numpy(np.repeat(fires, 2, axis=2)).to(device)[:, :, ::2]  # not contiguous
    for tensor in (torch.from_numpy(fires).to(device), strided):
        batch = LayerBatch(
            layer=1, acts=tensor.float(), fires=tensor, mask=torch.ones(n_rows, 3, dtype=torch.bool, device=device),
            tokens=torch.zeros(n_rows, 3, dtype=torch.int64, device=device), seq_ids=torch.arange(n_rows, device=device), first_seq=0,
        )
        got = batch.position_fires()
        assert got.dtype == torch.float32 and got[0, 0] == n_rows
        np.testing.assert_array_equal(got.cpu().numpy(), fires.sum(axis=0))


def test_token_count(data, device):
    state = run(TokenCount(GEOMETRY, device), data, device)
    expected = np.bincount(data["tokens"][data["mask"]], minlength=VOCAB)
    np.testing.assert_array_equal(state["counts"], expected)


def token_fires_of(data, rows: slice = slice(None)) -> np.ndarray:
    """Firings per [slot, token, neuron] of the sequences `rows`, position by position."""
    expected = np.zeros((len(LAYERS), VOCAB, N_NEURONS), dtype=np.int64)
    fires = fires_of(data)
    for slot in range(len(LAYERS)):
        for s in range(N_SEQ)[rows]:
            for t in range(SEQ_LEN):
                expected[slot, data["tokens"][s, t]] += fires[slot, s, t]
    return expected


def token_table(state) -> np.ndarray:
    table = np.zeros((len(LAYERS), VOCAB, N_NEURONS), dtype=np.int64)
    slot, token, neuron = decode_token_fire_keys(state["keys"], VOCAB, N_NEURONS)
    table[slot, token, neuron] = state["counts"]
    return table


@pytest.mark.parametrize(
    ("dense_limit", "capacity"), [(1 << 30, None), (1 << 30, 4), (0, None)], ids=["dense", "dense-capacity", "sparse"]
)
def test_token_fire_count_dense_and_sparse(data, device, dense_limit, capacity):
    """Exact counts, from the dense table (which ignores a capacity) or from the sparse one without one."""
    accumulator = TokenFireCount(GEOMETRY, device, dense_limit=dense_limit, capacity=capacity, pending_bytes=1)
    state = run(accumulator, data, device)
    np.testing.assert_array_equal(token_table(state), token_fires_of(data))
    assert (state["counts"] > 0).all()
    assert np.all(np.diff(state["keys"]) > 0)
    assert state["capacity"].tolist() == [0] and state["vocab_size"].tolist() == [VOCAB]


def test_dense_token_tables_live_from_a_layers_first_batch_to_its_hand_over(data, device):
    """A layer's dense table is allocated at its first batch and dropped when the layer is handed over (so
    layerwise capture holds one); each hand-over is that layer's exact counts, keyed as slot 0."""
    accumulator = TokenFireCount(GEOMETRY, device, dense_limit=1 << 30)
    assert accumulator.dense == [None, None]
    run(accumulator, data, device, rows=slice(0, 5))
    assert all(held is not None and held[0].device.type == device.type for held in accumulator.dense)
    expected = token_fires_of(data, rows=slice(0, 5))
    for slot, layer in enumerate(LAYERS):
        state = accumulator.take_layer(layer)
        assert accumulator.dense[slot] is None
        np.testing.assert_array_equal(token_table(state)[0], expected[slot])
    assert len(accumulator.state()["keys"]) == 0  # nothing left once every layer is handed over


@pytest.mark.parametrize("pending_bytes", [1, 700, 1 << 30])
def test_token_fire_count_cpu_pairs_and_gpu_tables_give_the_same_summaries(data, pending_bytes, monkeypatch):
    """A CPU adds firings as (token, neuron) pairs, a GPU as dense tables; both merge at the same points, so
    even pruned summaries (capacity 2) agree exactly."""
    cpu = torch.device("cpu")
    make = lambda: TokenFireCount(GEOMETRY, cpu, dense_limit=0, capacity=2, pending_bytes=pending_bytes)  # noqa: E731
    pairs = run(make(), data, cpu, batch=2)
    monkeypatch.setattr(base, "HOST_PATHS", False)
    dense = run(make(), data, cpu, batch=2)
    assert len(pairs["keys"]) and (token_table(pairs) < token_fires_of(data)).any()  # pruned
    for key in dense:
        np.testing.assert_array_equal(pairs[key], dense[key], err_msg=key)


@pytest.mark.parametrize("capacity", [3, 7])
def test_token_fire_count_capacity_keeps_the_misra_gries_guarantee(data, device, capacity):
    """Per neuron at most `capacity` tokens, estimate <= true <= estimate + slack, exact when few tokens.

    Checked for one pass (merging after every batch or two) and for shards merged afterwards.
    """
    true = token_fires_of(data)
    fires = fires_of(data).sum(axis=(1, 2))  # [slot, neuron]

    def bounded(rows: slice = slice(None)):
        return run(TokenFireCount(GEOMETRY, device, dense_limit=0, capacity=capacity, pending_bytes=1), data, device, rows=rows)

    one_pass = bounded()
    merged = TokenFireCount.merge([bounded(slice(0, 5)), bounded(slice(5, 9)), bounded(slice(9, None))])
    n_pruned = 0
    for state in (one_pass, merged):
        assert state["capacity"].tolist() == [capacity]
        assert np.all(np.diff(state["keys"]) > 0) and (state["counts"] > 0).all()
        estimate = token_table(state)
        for slot in range(len(LAYERS)):
            for neuron in range(N_NEURONS):
                est, exact = estimate[slot, :, neuron], true[slot, :, neuron]
                assert (est > 0).sum() <= capacity
                slack = (fires[slot, neuron] - est.sum()) / (capacity + 1)
                assert np.all(est <= exact) and np.all(exact <= est + slack + 1e-9), (slot, neuron)
                if (exact > 0).sum() <= capacity:
                    np.testing.assert_array_equal(est, exact)
                else:
                    n_pruned += 1
    assert n_pruned > 0


def reference_top_k(data, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort every neuron's activations by (value descending, sequence, position)."""
    values = np.full((len(LAYERS), k, N_NEURONS), -np.inf, dtype=np.float32)
    seqs = np.full((len(LAYERS), k, N_NEURONS), -1)
    poss = np.full((len(LAYERS), k, N_NEURONS), -1)
    for slot in range(len(LAYERS)):
        for n in range(N_NEURONS):
            entries = [
                (-data["acts"][slot, s, t, n], s, t)
                for s in range(N_SEQ)
                for t in range(SEQ_LEN)
                if data["mask"][s, t]
            ]
            for i, (neg, s, t) in enumerate(sorted(entries)[:k]):
                values[slot, i, n], seqs[slot, i, n], poss[slot, i, n] = -neg, s, t
    return values, seqs, poss


@pytest.mark.parametrize("counted_from", [None, 1], ids=["mask", "counted-from"])
@pytest.mark.parametrize("shifted", [False, True], ids=["relu", "negative-values"])
@pytest.mark.parametrize("batch", [1, 4, 12])
@pytest.mark.parametrize("fires_from_acts", [True, False], ids=["firings-are-positives", "firings-unrelated"])
@pytest.mark.parametrize("sample_seqs", [1, 3])
def test_top_k_one_pass_and_merged_shards_equal_reference(data, device, batch, shifted, counted_from, fires_from_acts, sample_seqs, monkeypatch):
    """Exact top k with ties (many zeros, coarse values) going to the earliest (sequence, position), in one
    pass of any batch size and merged from shards; a CPU keys only the candidates above a bar (the k-th kept value, or a first batch's k-th largest in its first sequence),
    read from the firings alone where they are the positive activations and the bars are above 0."""
    if shifted:
        data = data | {"acts": data["acts"] - np.float32(0.25)}
    k = 6
    candidates, from_firings = [], []
    take = TopK._update_from_candidates
    monkeypatch.setattr(TopK, "_update_from_candidates", lambda self, *a: candidates.append(1) or take(self, *a))
    pairs = LayerBatch.firing_pairs
    monkeypatch.setattr(LayerBatch, "firing_pairs", lambda self: from_firings.append(1) or pairs(self))
    # a first batch's bar from its first sequence or three (ties looked for past the first 2k counted rows)
    monkeypatch.setattr(top_k, "SAMPLE_ROWS", sample_seqs * (SEQ_LEN - 1))
    values, seqs, poss = reference_top_k(data, k)
    host = {"counted_from": counted_from, "fires_from_acts": fires_from_acts}
    one_pass = run(TopK(GEOMETRY, device, k=k), data, device, batch=batch, **host)
    assert bool(candidates) == (host_paths(device) and (counted_from is not None or batch < N_SEQ))  # no bar: dense
    halves = [
        run(TopK(GEOMETRY, device, k=k), data, device, rows=slice(0, 7), batch=3, **host),
        run(TopK(GEOMETRY, device, k=k), data, device, rows=slice(7, None), batch=2, **host),
    ]
    merged = TopK.merge(halves)
    assert bool(from_firings) == (bool(candidates) and fires_from_acts and not shifted)  # later batches' bars > 0
    for state in (one_pass, merged):
        np.testing.assert_array_equal(state["values"], values)
        np.testing.assert_array_equal(state["seq"], seqs)
        np.testing.assert_array_equal(state["pos"], poss)


@pytest.mark.parametrize("batch", [4, 12])
@pytest.mark.parametrize("sample_seqs", [1, 3])
def test_top_k_from_firings_keeps_the_earliest_ties_at_a_first_batchs_bar(data, batch, sample_seqs, monkeypatch):
    """Every activation positive and coarse (ties everywhere above 0): a first batch's bar is above 0, so
    the candidates come from the firings, ties at the bar included only in the rows that set it."""
    rng = np.random.default_rng(2)
    coarse = data | {"acts": rng.choice(np.float32([0.1, 0.2, 0.3]), p=[0.2, 0.3, 0.5], size=data["acts"].shape)}
    from_firings = []
    pairs = LayerBatch.firing_pairs
    monkeypatch.setattr(LayerBatch, "firing_pairs", lambda self: from_firings.append(1) or pairs(self))
    monkeypatch.setattr(top_k, "SAMPLE_ROWS", sample_seqs * (SEQ_LEN - 1))
    cpu = torch.device("cpu")
    state = run(TopK(GEOMETRY, cpu, k=6), coarse, cpu, batch=batch, counted_from=1)
    assert from_firings
    for got, expected in zip((state["values"], state["seq"], state["pos"]), reference_top_k(coarse, 6)):
        np.testing.assert_array_equal(got, expected)


def test_top_k_keeps_empty_slots_when_fewer_tokens_are_counted(device):
    """k larger than the counted positions: the rest stay empty (-inf, -1, -1), and BOS never enters."""
    geometry = Geometry(layers=(0,), n_neurons=2, seq_len=3, vocab_size=5)
    acts = torch.tensor([[[9.0, -1.0], [2.0, 3.0], [1.0, 3.0]]], device=device)
    mask = torch.tensor([[False, True, True]], device=device)
    top = TopK(geometry, device, k=4)
    top.update(LayerBatch(layer=0, acts=acts, fires=acts > 0, mask=mask, tokens=torch.zeros(1, 3, dtype=torch.int64, device=device), seq_ids=torch.tensor([5], device=device), first_seq=5))
    state = top.state()
    assert state["values"][0, :, 0].tolist() == [2.0, 1.0, -np.inf, -np.inf]
    assert state["values"][0, :, 1].tolist() == [3.0, 3.0, -np.inf, -np.inf]
    assert state["seq"][0, :, 1].tolist() == [5, 5, -1, -1] and state["pos"][0, :, 1].tolist() == [1, 2, -1, -1]


def test_ordered_bits_order_like_the_floats_and_decode_back(device):
    values = np.array([-np.inf, -3.5, -1e-40, -0.0, 0.0, 1e-40, 2.0, 2.0000002, np.inf], dtype=np.float32)
    bits = ordered_bits(torch.from_numpy(values).to(device)).cpu()
    assert bits[3] == bits[4]  # -0.0 and 0.0 tie, as they compare
    assert bool((bits[1:] >= bits[:-1]).all()) and len(set(bits.tolist())) == len(values) - 1
    np.testing.assert_array_equal(value_of(bits.to(torch.int64)).numpy(), values + np.float32(0.0))


@pytest.mark.parametrize("counted_from", [None, 1], ids=["mask-copy", "bos-view"])
@pytest.mark.parametrize("shift", [0.0, -0.3], ids=["relu", "below-zero"])
def test_moments(data, device, counted_from, shift):
    """Counted positions read through the mask (a copy) or, as capture does, a view past the BOS; the spread
    as the centred sum of squares, combined over sequences and batches."""
    data = data | {"acts": data["acts"] + np.float32(shift)}
    state = run(Moments(GEOMETRY, device), data, device, counted_from=counted_from)
    acts = data["acts"][:, data["mask"]].astype(np.float64)  # [L, tokens, N]
    assert state["count"].tolist() == [acts.shape[1]] * acts.shape[0]
    # each sequence's mean and variance are float32 (from float64 sums on a CPU), combined in float64
    np.testing.assert_allclose(state["sum"], acts.sum(axis=1), rtol=1e-6, atol=1e-5)
    deviations = acts - acts.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(state["m2"], (deviations**2).sum(axis=1), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(state["min"], acts.min(axis=1).astype(np.float32))
    np.testing.assert_array_equal(state["max"], acts.max(axis=1).astype(np.float32))


def test_moments_keep_a_small_spread_next_to_a_large_mean(data, device):
    """A constant neuron has spread exactly 0, and one of spread 1e-3 around 100 keeps it (E[x^2] - E[x]^2
    from float32 sequence sums would leave rounding noise of about 1e-2 there), over batches and merged
    shards alike."""
    rng = np.random.default_rng(1)
    acts = np.full_like(data["acts"], 3.25)
    acts[..., 1] = 100 + rng.normal(scale=1e-3, size=acts.shape[:-1])
    wide = data | {"acts": acts}
    whole = run(Moments(GEOMETRY, device), wide, device, counted_from=1)
    merged = Moments.merge([run(Moments(GEOMETRY, device), wide, device, rows=rows, counted_from=1) for rows in (slice(0, 5), slice(5, None))])
    counted = acts[:, :, 1:].reshape(len(LAYERS), -1, N_NEURONS).astype(np.float64)
    for state in (whole, merged):
        std = np.sqrt(state["m2"] / state["count"][:, None])
        assert (std[:, 0] == 0).all() and (std[:, 2:] == 0).all()
        np.testing.assert_allclose(std[:, 1], counted[..., 1].std(axis=1), rtol=1e-3)


def test_bfloat16_activations_give_the_results_of_their_float32_values(data, device):
    """Activations are widened from their own dtype inside each reduction: moments and top-k of a bfloat16
    batch equal those of the same values in float32."""
    rounded = data | {"acts": torch.from_numpy(data["acts"]).bfloat16().float().numpy()}
    for make in (lambda: Moments(GEOMETRY, device), lambda: TopK(GEOMETRY, device, k=3)):
        expected = run(make(), rounded, device, counted_from=1)
        got = run(make(), rounded, device, counted_from=1, dtype=torch.bfloat16)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_exact_float_counts_flush_before_float32_loses_a_unit(device, monkeypatch):
    """With the float32 limit lowered to 8, many adds pass it: the int64 total (on the host) stays exact,
    and a released row leaves the device and starts again from its total."""
    monkeypatch.setattr(ExactFloatCounts, "LIMIT", 8.0)
    counts = ExactFloatCounts((2, 3), device)
    rng = np.random.default_rng(1)
    expected = np.zeros((2, 3), dtype=np.int64)
    for step in range(60):
        values = rng.integers(0, 4, size=3)
        row = int(rng.integers(0, 2))
        counts.add(row, torch.from_numpy(values).float().to(device), max_value=3.0)
        expected[row] += values
        assert counts.partial[row].max() <= 8 and counts.partial[row].device.type == device.type
        if step == 30:
            counts.release(0)
            assert 0 not in counts.partial
            np.testing.assert_array_equal(counts.total[0].numpy(), expected[0])
    result = counts.result()
    assert result.device.type == "cpu" and result.dtype == torch.int64
    np.testing.assert_array_equal(result.numpy(), expected)


def test_merge_of_shards_equals_one_pass(data, device):
    def all_states(rows):
        accs = [
            FireCount(GEOMETRY, device),
            PositionFireCount(GEOMETRY, device),
            TokenCount(GEOMETRY, device),
            TokenFireCount(GEOMETRY, device, dense_limit=0),
            TopK(GEOMETRY, device, k=4),
            Moments(GEOMETRY, device),
        ]
        return {acc.name: run(acc, data, device, rows=rows) for acc in accs}

    whole = all_states(slice(None))
    merged = merge_states([all_states(slice(0, 5)), all_states(slice(5, 9)), all_states(slice(9, None))])
    for name, state in whole.items():
        for key, array in state.items():
            if name == "moments" and key in ("sum", "m2"):
                # other batch boundaries combine other float32 sequence means and variances
                np.testing.assert_allclose(merged[name][key], array, rtol=1e-6, atol=1e-5)
            else:
                np.testing.assert_array_equal(merged[name][key], array, err_msg=f"{name}/{key}")


def coalesced(keys: np.ndarray, counts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return coalesce_keys(torch.from_numpy(keys), torch.from_numpy(counts))


def test_sparse_coalesce_and_sorted_add_match_a_counter():
    from collections import Counter

    rng = np.random.default_rng(3)
    for n_old, n_new in ((0, 30), (40, 0), (500, 400), (3000, 25)):
        old_keys, old_counts = rng.integers(0, 800, size=n_old), rng.integers(1, 5, size=n_old)
        new_keys, new_counts = rng.integers(0, 800, size=n_new), rng.integers(1, 5, size=n_new)
        expected = Counter()
        for key, count in zip(np.r_[old_keys, new_keys], np.r_[old_counts, new_counts]):
            expected[int(key)] += int(count)
        keys, counts = add_sorted_keys(*coalesced(old_keys, old_counts), *coalesced(new_keys, new_counts))
        assert keys.tolist() == sorted(expected) and dict(zip(keys.tolist(), counts.tolist())) == dict(expected)
        assert keys.dtype == counts.dtype == torch.int64


def test_coalescing_sorted_runs_matches_a_counter(device):
    from collections import Counter

    rng = np.random.default_rng(4)
    for sizes in ((30,), (0, 12), (400, 5, 250, 0, 90)):
        runs = [coalesced(rng.integers(0, 600, size=n), rng.integers(1, 5, size=n)) for n in sizes]
        expected = Counter()
        for keys, counts in runs:
            for key, count in zip(keys.tolist(), counts.tolist()):
                expected[key] += count
        keys, counts = coalesce_runs([(k.to(device), c.to(device)) for k, c in runs])
        assert keys.device.type == device.type
        assert keys.tolist() == sorted(expected) and dict(zip(keys.tolist(), counts.tolist())) == dict(expected)


def test_token_fire_count_refuses_to_merge_other_capacities(data, device):
    exact = run(TokenFireCount(GEOMETRY, device, dense_limit=0), data, device, rows=slice(0, 5))
    bounded = run(TokenFireCount(GEOMETRY, device, dense_limit=0, capacity=3), data, device, rows=slice(5, None))
    with pytest.raises(ValueError, match="different capacity"):
        TokenFireCount.merge([exact, bounded])


def test_constant_activations_have_no_spread_and_real_spread_is_kept(device):
    """act_std from float64 sums: a neuron that always gives 0.7 has std 0 (not the rounding of
    E[x^2] - E[x]^2), one with values 0 and 1 its exact spread."""
    from neuron_census.analyses.tables import neuron_table

    geometry = Geometry(layers=(0,), n_neurons=2, seq_len=5, vocab_size=3)
    moments = Moments(geometry, device)
    acts = torch.stack([torch.full((7, 5), 0.7), (torch.arange(35).reshape(7, 5) % 2).float()], dim=-1).to(device)
    mask = torch.ones(7, 5, dtype=torch.bool, device=device)
    mask[:, 0] = False
    batch = LayerBatch(layer=0, acts=acts, fires=acts > 0, mask=mask, tokens=torch.zeros(7, 5, dtype=torch.int64, device=device),
                       seq_ids=torch.arange(7, device=device), first_seq=0, counted_from=1)
    moments.update(batch)
    states = {"fire_count": {"counts": np.array([[28, 14]]), "tokens": np.array([28])}, "moments": moments.state()}
    table = neuron_table("m", {"layers": [0], "n_neurons": 2}, states)
    values = acts[:, 1:, 1].cpu().numpy().astype(np.float64)
    assert table["act_std"].to_list() == pytest.approx([0.0, values.std()], abs=1e-12)
