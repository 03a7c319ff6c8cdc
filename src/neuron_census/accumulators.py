"""Streaming sufficient statistics of FFN neurons.

Each accumulator sees the activations of one layer for one batch at a time and keeps state whose size
does not depend on the number of tokens (only on layers, positions, neurons, vocabulary and `top_k`).
States are dictionaries of numpy arrays that merge associatively across shards, so statistics of a
collection are the merge of the statistics of its shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from neuron_census.count_tables import count_table, merge_summaries
from neuron_census.capture.host_copies import host_array, host_arrays, host_tensors
from neuron_census.ngrams import add_sorted_keys, check_packable, prune_keys

State = dict[str, np.ndarray]

BYTE_ROWS = 255  # rows of 0/1 bytes added before their sum could overflow a byte


@dataclass(frozen=True)
class LayerBatch:
    """Activations of one layer on one batch, with what the accumulators need to index them."""

    layer: int  # index into the analysed layers' model numbering
    acts: torch.Tensor  # [B, T, N] neuron activations
    fires: torch.Tensor  # [B, T, N] bool: the neuron fires at this token (already masked)
    mask: torch.Tensor  # [B, T] bool: token is counted (False at BOS)
    tokens: torch.Tensor  # [B, T] int64 token ids
    seq_ids: torch.Tensor  # [B] int64 global sequence ids (shard * sequences_per_shard + row)
    counted_from: int | None = None  # when known on the host: `mask` is exactly "position >= counted_from"
    fires_where_positive: bool = False  # `fires` is exactly `acts > 0` at counted positions
    # derived from the tokens alone, so shared by every layer of the batch (capture passes one dict per batch)
    per_batch: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # Derived tensors several accumulators share, computed once per (layer, batch). On CPUs, integer and
    # boolean reductions are several times slower than float32 ones and matrix products, so counts are
    # summed as float32 (exact below 2**24): through matrix products, or, for firings per position, as
    # bytes added row by row and converted once. Gathers by a batch's million firings use `index_select`
    # and `take`: on a CPU, indexing with a tensor costs 2-10x as much for the same result.

    def firing_indices(self) -> torch.Tensor:
        """Flat indices into `acts_2d()` of every firing, ascending: the index `take` needs, from a 1-D `nonzero`
        (on a CPU a fifth cheaper than the 2-D one, which leaves room to divide the rows out)."""
        if "firing_indices" not in self._cache:
            self._cache["firing_indices"] = self.fires.reshape(-1).nonzero().squeeze(1)
        return self._cache["firing_indices"]

    def firing_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, neuron) of every firing, rows indexing B*T, in row-major order: the sparse accumulators' input."""
        if "firing_pairs" not in self._cache:
            flat = self.firing_indices()
            rows = flat // self.fires.shape[-1]
            self._cache["firing_pairs"] = rows, flat - rows * self.fires.shape[-1]
        return self._cache["firing_pairs"]

    def firing_values(self) -> torch.Tensor:
        """float32 activation of every firing, in `firing_pairs` order (gathered in the activations' own dtype:
        no float32 copy of a whole bfloat16 batch)."""
        if "firing_values" not in self._cache:
            self._cache["firing_values"] = torch.take(self.acts, self.firing_indices()).float()
        return self._cache["firing_values"]

    def distinct_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct tokens, and each position's [B*T] index among them (once per batch: on a GPU,
        `unique` waits for the device)."""
        if "distinct_tokens" not in self.per_batch:
            self.per_batch["distinct_tokens"] = torch.unique(self.tokens.reshape(-1), return_inverse=True)
        return self.per_batch["distinct_tokens"]

    def position_fires(self) -> torch.Tensor:
        """[T, N] float32: firings at each position summed over the batch (exact integers), by `summed_rows`."""
        if "position_fires" not in self._cache:
            self._cache["position_fires"] = summed_rows(self.fires, as_bytes=self.fires.device.type == "cpu")
        return self._cache["position_fires"]

    def acts_2d(self) -> torch.Tensor:
        """[B*T, N] float32 activations, every position (masked ones included)."""
        if "acts_2d" not in self._cache:
            self._cache["acts_2d"] = self.acts.reshape(-1, self.acts.shape[-1]).float()
        return self._cache["acts_2d"]

    def weights(self) -> torch.Tensor:
        """[1, B*T] float32: 1 where the token is counted, 0 at BOS."""
        if "weights" not in self._cache:
            self._cache["weights"] = self.mask.reshape(1, -1).to(torch.float32)
        return self._cache["weights"]

    def counted_acts(self) -> torch.Tensor:
        """Activations of counted positions only: a [B, T - counted_from, N] view when `counted_from` is
        known (capture always knows it, so no device sync), else a [counted tokens, N] copy. Reduce over
        every dim but the last."""
        if "counted_acts" not in self._cache:
            if self.counted_from is not None:
                self._cache["counted_acts"] = self.acts[:, self.counted_from :].float()
            else:
                self._cache["counted_acts"] = self.acts_2d()[self.mask.reshape(-1)]
        return self._cache["counted_acts"]


def summed_rows(fires: torch.Tensor, as_bytes: bool) -> torch.Tensor:
    """[T, N] float32 sum over the leading axis of a boolean [B, T, N] matrix.

    `as_bytes` (for CPUs) adds the rows as bytes, up to 255 at a time: no float copy of the whole matrix
    (B x T x N x 4 bytes; 4.8 GB for a batch of 16 of OPT-66b), and 20-40x faster on a CPU than that copy
    and its matrix product, or than an integer reduction over the batch axis. On a GPU that loop is a
    kernel launch per row, and one reduction kernel that accumulates in float32 is the cheaper form.
    """
    if not as_bytes:
        return fires.sum(dim=0, dtype=torch.float32)
    rows = fires.view(torch.uint8)
    total: torch.Tensor | None = None
    for start in range(0, rows.shape[0], BYTE_ROWS):
        part = rows[start].clone()
        for row in rows[start + 1 : start + BYTE_ROWS]:
            part += row
        total = part.to(torch.float32) if total is None else total.add_(part)
    assert total is not None, "a batch has at least one row"
    return total


class ExactFloatCounts:
    """Integer counts added as float32 (fast) and moved to int64 before float32 could lose a unit.

    float32 holds every integer up to 2**24 exactly; `add` moves a row into the int64 total whenever
    its float part could pass that, so the count is exact whatever the number of tokens. The float part
    is kept per leading index (a layer slot), allocated on the capture device at its first `add`; the
    int64 total lives in host memory. So the device holds 4 bytes a cell, not 12, and `release` frees a
    layer slot that will not be counted again (layerwise capture, one layer after the other): per-position
    counts of OPT-66b are 64 layers x 2048 positions x 36,864 neurons, 58 GB as float32 and int64 on the
    device, 19 GB as float32, 0.3 GB for the layer being run.
    """

    LIMIT = float(1 << 24)

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.shape, self.device = shape, device
        self.partial: dict[int, torch.Tensor] = {}  # leading index -> float32 counts not yet in `total`
        self._bound: dict[int, float] = {}  # the most any cell of that row's float part can hold
        self.total: dict[int, torch.Tensor] = {}  # leading index -> int64 host counts, from its first release

    def add(self, row: int, values: torch.Tensor, max_value: float) -> None:
        """Add non-negative integer-valued `values` (each at most `max_value`) at leading index `row`."""
        if self._bound.get(row, 0.0) + max_value >= self.LIMIT:
            self.release(row)
        if row not in self.partial:
            self.partial[row] = torch.zeros(self.shape[1:], dtype=torch.float32, device=self.device)
            self._bound[row] = 0.0
        self.partial[row] += values
        self._bound[row] += max_value

    def release(self, row: int) -> None:
        """Add `row`'s float part to the host total and free it on the device (a later `add` starts a new one)."""
        if row in self.partial:
            released = host_tensors(self.partial.pop(row).to(torch.int64))[0]
            self.total[row] = self.total[row] + released if row in self.total else released
            del self._bound[row]

    def take(self, row: int) -> torch.Tensor:
        """Row `row`'s int64 counts, on the host, handed over: nothing of the row is kept in host memory."""
        self.release(row)
        taken = self.total.pop(row, None)
        return taken if taken is not None else torch.zeros(self.shape[1:], dtype=torch.int64)

    def result(self) -> torch.Tensor:
        """The int64 counts of every row, on the host."""
        for row in list(self.partial):
            self.release(row)
        empty = torch.zeros(self.shape[1:], dtype=torch.int64)
        return torch.stack([self.total.get(row, empty) for row in range(self.shape[0])])


@dataclass(frozen=True)
class Geometry:
    """Sizes every accumulator is allocated from."""

    layers: tuple[int, ...]  # model layer numbers that are analysed, ascending
    n_neurons: int
    seq_len: int
    vocab_size: int

    def slot(self, layer: int) -> int:
        return self.layers.index(layer)


class Accumulator(Protocol):
    """What capture feeds. An accumulator whose state has a layer axis also defines `take_layer(layer)`:
    once `layer` has seen its last batch, capture takes that layer's state (as a capture of the layer alone
    would give it, see `neuron_census.capture.layer_states`) and writes it out, so neither the device nor the host
    keeps every layer's tables."""

    name: ClassVar[str]

    def update(self, batch: LayerBatch) -> None: ...

    def state(self) -> State: ...

    @staticmethod
    def merge(states: list[State]) -> State: ...


def _settings_of(states: list[State], keys: tuple[str, ...], what: str) -> State:
    """The arrays under `keys`, which every state must share to be merged (the first state's)."""
    first = states[0]
    for other in states[1:]:
        for key in keys:
            if not np.array_equal(other[key], first[key]):
                raise ValueError(f"cannot merge {what} with different {key}: {other[key]} vs {first[key]}")
    return {key: first[key] for key in keys}


def _sum_states(states: list[State]) -> State:
    return {key: np.sum([s[key] for s in states], axis=0) for key in states[0]}


class FireCount:
    """Firings per neuron and counted tokens per layer: dead neurons and firing frequency."""

    name: ClassVar[str] = "fire_count"

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        n_layers = len(geometry.layers)
        self.counts = ExactFloatCounts((n_layers, geometry.n_neurons), device)
        self.tokens = torch.zeros(n_layers, dtype=torch.int64, device=device)

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        per_position = batch.position_fires()
        ones = torch.ones(1, per_position.shape[0], dtype=torch.float32, device=per_position.device)
        self.counts.add(slot, (ones @ per_position)[0], float(batch.fires.shape[0] * batch.fires.shape[1]))
        self.tokens[slot] += batch.mask.sum()

    def take_layer(self, layer: int) -> State:
        slot = self.geometry.slot(layer)
        return {"counts": self.counts.take(slot)[None].numpy(), "tokens": host_array(self.tokens[slot : slot + 1])}

    def state(self) -> State:
        return {"counts": self.counts.result().numpy(), "tokens": host_array(self.tokens)}

    merge = staticmethod(_sum_states)


class PositionFireCount:
    """Firings per (position, neuron) and counted tokens per position: positional neurons."""

    name: ClassVar[str] = "position_fire_count"

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        shape = (len(geometry.layers), geometry.seq_len, geometry.n_neurons)
        self.counts = ExactFloatCounts(shape, device)
        self.tokens = torch.zeros(geometry.seq_len, dtype=torch.int64, device=device)
        self._first_layer = geometry.layers[0]

    def update(self, batch: LayerBatch) -> None:
        self.counts.add(self.geometry.slot(batch.layer), batch.position_fires(), float(batch.fires.shape[0]))
        if batch.layer == self._first_layer:
            self.tokens += batch.mask.sum(dim=0)

    def take_layer(self, layer: int) -> State:
        """Tokens per position are counted at the first layer, so they are complete once any layer is."""
        return {"counts": self.counts.take(self.geometry.slot(layer))[None].numpy(), "tokens": host_array(self.tokens)}

    def state(self) -> State:
        return {"counts": self.counts.result().numpy(), "tokens": host_array(self.tokens)}

    merge = staticmethod(_sum_states)


class TokenCount:
    """Occurrences of every token among counted positions (the denominator of token detectors)."""

    name: ClassVar[str] = "token_count"

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        self.counts = torch.zeros(geometry.vocab_size, dtype=torch.int64, device=device)
        self._first_layer = geometry.layers[0]

    def update(self, batch: LayerBatch) -> None:
        if batch.layer == self._first_layer:
            self.counts += torch.bincount(batch.tokens[batch.mask], minlength=self.geometry.vocab_size)

    def state(self) -> State:
        return {"counts": host_array(self.counts)}

    merge = staticmethod(_sum_states)


def coalesce_sparse(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal keys; return sorted unique keys and their totals."""
    keys, counts = np.asarray(keys, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    if len(keys) == 0:
        return keys, counts
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts[order], starts)


def count_pairs(
    major: torch.Tensor, minor: torch.Tensor, major_span: int, minor_span: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct (major, minor) pairs, sorted by (major, minor), and how often each occurs.

    One sort of the compact keys `major * minor_span + minor` (32-bit when they fit: fewer radix passes)
    replaces a dense [minor, major] count matrix and its nonzero scan.
    """
    dtype = torch.int32 if major_span * minor_span < 1 << 31 else torch.int64
    keys = major.to(dtype) * minor_span + minor.to(dtype)
    keys, counts = torch.unique_consecutive(torch.sort(keys).values, return_counts=True)
    return (keys // minor_span).to(torch.int64), (keys % minor_span).to(torch.int64), counts


class SlotMerges:
    """When each layer slot's pending batch pairs are merged into that slot's sorted table.

    A slot merges once at least `min_pending` of its own pairs, and at least as many as its table holds,
    are pending: each pair is then re-sorted O(log) times, and pending memory stays within the table's
    size (or `min_pending`). Merge points depend only on the batches of that slot, never on the order in
    which layers and batches interleave, so a bounded (Misra-Gries) summary comes out the same under
    every execution strategy, and the merge temporaries are one slot's, not all layers'.
    """

    def __init__(self, n_slots: int, merge_pending: int) -> None:
        self.min_pending = max(1, merge_pending // max(1, n_slots))
        self.pending = [0] * n_slots

    def due(self, slot: int, added: int, held: int) -> bool:
        """Record `added` pending pairs of `slot`; True when the slot should merge now (and reset it)."""
        self.pending[slot] += added
        if self.pending[slot] < max(self.min_pending, held):
            return False
        self.pending[slot] = 0
        return True


class TokenFireCount:
    """Firings per (layer, token, neuron): which tokens trigger each neuron.

    Up to `dense_limit` cells (layers x vocabulary x neurons), counts are kept in place: a dense int32
    [vocab, neurons] table per analysed layer on the device, exact, into which a batch's firings are added
    by their flat index (one `index_add_` over the shared firing pairs, no copy of the firing matrix). A
    layer's table is allocated at its first batch and dropped when the layer is handed over, so layerwise
    capture holds one. Above the limit (OPT/GPT-2 vocabularies by default) a batch's pairs are counted
    over its distinct tokens and kept, per analysed layer, in a `count_tables` table on the device, merged
    as `SlotMerges` says (`merge_pending` is the pending budget shared by all layers). On a GPU the merges
    run there: moving the pairs to the host and merging them there costs far more than the forward pass.

    `capacity` None keeps every (token, neuron) pair seen: exact, and bounded only by layers x
    vocabulary x neurons. An integer keeps, per neuron, a Misra-Gries summary of at most `capacity`
    tokens (`neuron_census.ngrams`, as for n-grams): exact for every neuron that meets no more distinct
    tokens than that, certified bounds beyond, and memory that stops growing once the summaries are full.
    State keys are ``(slot * vocab + token) * n_neurons + neuron`` with slot the analysed-layer index (the
    order a batch's pairs come out in); a bounded table has a row per neuron while capturing, since
    pruning needs each neuron's tokens together, and is re-sorted token-major once when its state is read.
    """

    name: ClassVar[str] = "token_fire_count"

    def __init__(
        self,
        geometry: Geometry,
        device: torch.device,
        *,
        dense_limit: int = 1 << 26,
        capacity: int | None = None,
        merge_pending: int = 1 << 18,
    ) -> None:
        self.geometry = geometry
        n_slots = len(geometry.layers)
        n_cells = n_slots * geometry.vocab_size * geometry.n_neurons
        self.device = device
        # dense: each slot's [vocab * n_neurons] table, None until its first batch and after its hand-over
        self.dense: list[torch.Tensor | None] | None = [None] * n_slots if n_cells <= dense_limit else None
        self.capacity = capacity
        self._merges = SlotMerges(n_slots, merge_pending)
        vocab, n_neurons = geometry.vocab_size, geometry.n_neurons
        # exact: a row per token (the state's order); bounded: a row per neuron, pruned to `capacity` tokens
        shape = (vocab, n_neurons) if capacity is None else (n_neurons, vocab)
        self._tables = [count_table(*shape, capacity, device) for _ in range(n_slots)]

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        n_neurons = self.geometry.n_neurons
        rows, neurons = batch.firing_pairs()  # BOS rows never fire
        if self.dense is not None:
            cells = batch.tokens.reshape(-1).index_select(0, rows) * n_neurons + neurons
            self._dense_table(slot).index_add_(0, cells, torch.ones_like(cells, dtype=torch.int32))
            return
        unique, inverse = batch.distinct_tokens()
        table = self._tables[slot]
        if self.capacity is None:
            tokens, neurons, counts = count_pairs(inverse.index_select(0, rows), neurons, len(unique), n_neurons)
            table.stage(unique.index_select(0, tokens), neurons, counts)
        else:
            neurons, tokens, counts = count_pairs(neurons, inverse.index_select(0, rows), n_neurons, len(unique))
            table.stage(neurons, unique.index_select(0, tokens), counts)
        if self._merges.due(slot, len(counts), held=table.held()):
            self._flush(slot)

    def take_layer(self, layer: int) -> State:
        """The layer's pending pairs merged (as `state` does) and its table handed over, keys of slot 0."""
        slot = self.geometry.slot(layer)
        if self.dense is not None:
            table, self.dense[slot] = self.dense[slot], None
            return self._dense_state([table])
        self._flush(slot)
        keys, counts = self._state_keys(slot)
        self._tables[slot].clear()
        cells = self.geometry.vocab_size * self.geometry.n_neurons
        keys_np, counts_np = host_arrays(keys - slot * cells, counts)
        return self._header(self.capacity or 0) | {"keys": keys_np, "counts": counts_np}

    def _flush(self, slot: int) -> None:
        self._tables[slot].merge()

    def _header(self, capacity: int) -> State:
        return {
            "vocab_size": np.asarray([self.geometry.vocab_size], dtype=np.int64),
            "n_neurons": np.asarray([self.geometry.n_neurons], dtype=np.int64),
            "capacity": np.asarray([capacity], dtype=np.int64),
        }

    def _dense_table(self, slot: int) -> torch.Tensor:
        assert self.dense is not None
        table = self.dense[slot]
        if table is None:
            cells = self.geometry.vocab_size * self.geometry.n_neurons
            table = self.dense[slot] = torch.zeros(cells, dtype=torch.int32, device=self.device)
        return table

    def _dense_state(self, tables: list[torch.Tensor | None]) -> State:
        """The nonzero cells of consecutive slots' dense tables (None: nothing counted), keyed by their index
        in the tables joined. Found on the device, so only they are copied out (on a CPU, torch's `nonzero`
        is a third of NumPy's `flatnonzero` on one layer of OPT-125m)."""
        cells = self.geometry.vocab_size * self.geometry.n_neurons
        keys, counts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for slot, table in enumerate(tables):
            if table is None:
                continue
            found = table.nonzero().squeeze(1)
            found_np, counts_np = host_arrays(found, table.index_select(0, found))
            keys.append(found_np + slot * cells)
            counts.append(counts_np.astype(np.int64))
        return self._header(0) | {"keys": np.concatenate(keys), "counts": np.concatenate(counts)}

    def state(self) -> State:
        if self.dense is not None:
            return self._dense_state(self.dense)
        for slot in range(len(self._tables)):
            self._flush(slot)
        # slots hold consecutive key ranges, so their tables join in sorted order; each is re-keyed and
        # copied into the joined arrays in turn, so host memory holds the tables, the result and one slot's
        # temporaries (not every slot's re-keyed copy as well)
        columns = _JoinedColumns(2, sum(table.held() for table in self._tables))
        for slot in range(len(self._tables)):
            columns.append(*self._state_keys(slot))
        keys, counts = columns.arrays
        return self._header(self.capacity or 0) | {"keys": keys, "counts": counts}

    def _state_keys(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A slot's merged table as sorted state keys `(slot * vocab + token) * n_neurons + neuron`, and counts."""
        vocab, n_neurons = self.geometry.vocab_size, self.geometry.n_neurons
        offset = slot * vocab * n_neurons
        if self.capacity is None:  # a row per token: already in key order
            tokens, neurons, counts = (torch.cat(column) for column in zip(*self._tables[slot].parts()))
        else:  # a row per neuron: read token-major
            neurons, tokens, counts = self._tables[slot].by_column()
        return tokens * n_neurons + neurons + offset, counts

    @staticmethod
    def merge(states: list[State]) -> State:
        header = _settings_of(states, ("vocab_size", "n_neurons", "capacity"), "token firing counts")
        capacity, vocab, n_neurons = (int(header[key][0]) for key in ("capacity", "vocab_size", "n_neurons"))
        if not capacity:
            keys, counts = coalesce_sparse(
                np.concatenate([s["keys"] for s in states]), np.concatenate([s["counts"] for s in states])
            )
            return header | {"keys": keys, "counts": counts}
        parts = []
        for state in states:
            slot, token, neuron = decode_token_fire_keys(state["keys"], vocab, n_neurons)
            parts.append((slot * n_neurons + neuron, token, state["counts"]))
        keys, counts = _token_major(*merge_summaries(parts, capacity), vocab, n_neurons)
        return header | {"keys": keys, "counts": counts}


def _token_major(
    group: np.ndarray, token: np.ndarray, counts: np.ndarray, vocab_size: int, n_neurons: int
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of distinct (group = slot * n_neurons + neuron, token) pairs (a merged summary's) as sorted
    TokenFireCount state keys: one radix sort of the keys, as capture re-keys its tables."""
    slot, neuron = np.divmod(group, n_neurons)
    keys, order = torch.sort(torch.from_numpy((slot * vocab_size + token) * n_neurons + neuron))
    return keys.numpy(), counts[order.numpy()]


class _JoinedColumns:
    """int64 host arrays of a known total length, filled one table's columns at a time."""

    def __init__(self, n_columns: int, size: int) -> None:
        self.arrays = [np.empty(size, dtype=np.int64) for _ in range(n_columns)]
        self.filled = 0

    def append(self, *columns: torch.Tensor) -> None:
        end = self.filled + len(columns[0])
        for array, column in zip(self.arrays, host_arrays(*columns)):
            array[self.filled : end] = column
        self.filled = end


def decode_token_fire_keys(keys: np.ndarray, vocab_size: int, n_neurons: int) -> tuple[np.ndarray, ...]:
    """Split TokenFireCount keys into (layer slot, token, neuron) arrays."""
    neuron = keys % n_neurons
    rest = keys // n_neurons
    return rest // vocab_size, rest % vocab_size, neuron


SPARSE_TOP_SHARE = 16  # TopK takes the sparse path when at most 1/16 of a batch's activations are candidates
FIRST_ROWS_SHARE = 4  # a layer's first batch: dense top-k of its first quarter, candidates from the rest


class TopK:
    """The `k` largest activations of every neuron with the (sequence, position) where they occurred.

    Ties are broken towards the earlier (sequence, position) so the result is deterministic and the
    merge of shards equals one pass over all of them.
    """

    name: ClassVar[str] = "top_k"

    def __init__(self, geometry: Geometry, device: torch.device, *, k: int = 16) -> None:
        self.geometry = geometry
        self.k = k
        shape = (len(geometry.layers), k, geometry.n_neurons)
        self._full = [False] * len(geometry.layers)  # every neuron of the layer holds k entries (then for good)
        self._kth_nonnegative = [False] * len(geometry.layers)  # so is every k-th value >= 0
        self.values = torch.full(shape, -torch.inf, dtype=torch.float32, device=device)
        self.seq = torch.full(shape, -1, dtype=torch.int64, device=device)
        self.pos = torch.full(shape, -1, dtype=torch.int64, device=device)

    def update(self, batch: LayerBatch) -> None:
        """Only entries above a neuron's current k-th value can change its top k.

        A batch value equal to the k-th value comes later than it, so it never displaces it; skipping those
        entries gives exactly the result of merging every batch in full. Once every neuron holds k entries,
        the candidates are few (late in a long shard, a few per neuron). Until then, a dense top-k of the
        batch's first rows fills every neuron, and its rest takes the candidate path: a dense top-k of a
        whole batch transposes all its activations, several times the cost of the rest of the update.
        """
        slot = self.geometry.slot(batch.layer)
        acts = batch.acts_2d()
        start = 0
        if not self._full[slot]:  # read from the device only until it holds, not on every batch
            self._full[slot] = not bool(torch.isinf(self.values[slot, -1]).any())
        if not self._full[slot]:
            start = min(len(acts), max(len(acts) // FIRST_ROWS_SHARE, 4 * self.k))
            self._update_dense(slot, batch, acts, 0, start)
            self._full[slot] = not bool(torch.isinf(self.values[slot, -1]).any())
            if start == len(acts):
                return
            if not self._full[slot]:  # too few counted rows among the first: the rest in full as well
                self._update_dense(slot, batch, acts, start, len(acts))
                return
        kth = self.values[slot, -1]
        # every neuron has k entries: only values above its k-th can enter, usually a few per neuron
        if batch.fires_where_positive and self._nonnegative(slot):  # then candidates are firings
            (rows, neurons), values = batch.firing_pairs(), batch.firing_values()
            if start:  # pairs come in row order: those of the rows still to merge are a suffix
                first = int(torch.searchsorted(rows, torch.tensor(start, device=rows.device)))
                rows, neurons, values = rows[first:], neurons[first:], values[first:]
            above = (values > kth.index_select(0, neurons)).nonzero(as_tuple=True)[0]  # one wait for the device
            rows, neurons, values = (t.index_select(0, above) for t in (rows, neurons, values))
        else:
            rows, neurons = (acts[start:] > kth).nonzero(as_tuple=True)
            rows += start
            counted = batch.mask.reshape(-1).index_select(0, rows).nonzero(as_tuple=True)[0]
            rows, neurons = rows.index_select(0, counted), neurons.index_select(0, counted)
            values = torch.take(acts, rows * acts.shape[1] + neurons)
        if len(rows) == 0:
            return
        if len(rows) <= acts.numel() // SPARSE_TOP_SHARE:
            self._update_sparse(slot, batch, rows, neurons, values)
            return
        self._update_dense(slot, batch, acts, start, len(acts))

    def _update_dense(self, slot: int, batch: LayerBatch, acts: torch.Tensor, lo: int, hi: int) -> None:
        """Merge the top k of rows lo:hi of the batch, in the neurons whose maximum there beats their k-th."""
        acts = acts[lo:hi]
        columns = (acts.amax(dim=0) > self.values[slot, -1]).nonzero(as_tuple=True)[0]
        if len(columns) == 0:
            return
        every = len(columns) == acts.shape[1]
        k = min(self.k, acts.shape[0])
        values, rows = _batch_top(acts if every else acts[:, columns], k, excluded=~batch.mask.reshape(-1)[lo:hi])
        rows += lo
        seq_len = batch.acts.shape[1]
        seq, pos = batch.seq_ids[rows // seq_len], rows % seq_len
        if every:
            self._merge_into(slot, values, seq, pos)
            return
        self._merge_columns(slot, columns, values, seq, pos)

    def _nonnegative(self, slot: int) -> bool:
        """Every k-th value of the layer is >= 0 (read from the device until it holds; k-th values only rise)."""
        if not self._kth_nonnegative[slot]:
            self._kth_nonnegative[slot] = bool((self.values[slot, -1] >= 0).all())
        return self._kth_nonnegative[slot]

    def _merge_columns(
        self, slot: int, columns: torch.Tensor, values: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor
    ) -> None:
        """Merge [k, len(columns)] entries into the kept top-k of those neurons."""
        merged = _select_top(
            torch.cat([self.values[slot][:, columns], values]),
            torch.cat([self.seq[slot][:, columns], seq]),
            torch.cat([self.pos[slot][:, columns], pos]),
            self.k,
        )
        self.values[slot][:, columns], self.seq[slot][:, columns], self.pos[slot][:, columns] = merged

    def _update_sparse(
        self, slot: int, batch: LayerBatch, rows: torch.Tensor, neurons: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Merge candidate (row, neuron) entries with their `values`: per neuron the best k by (value desc, row
        asc), then `_select_top`."""
        seq_len = batch.acts.shape[1]
        order = torch.sort(_by_neuron_then_value_descending(neurons, values), stable=True).indices  # ties: row order
        rows, neurons, values = (t.index_select(0, order) for t in (rows, neurons, values))
        first = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
        first[1:] = neurons[1:] != neurons[:-1]
        starts = first.nonzero(as_tuple=True)[0]
        group = torch.cumsum(first, 0) - 1
        # entries ranked k or later all land in a spare row k, dropped below (no compaction: no wait)
        rank = (torch.arange(len(rows), device=rows.device) - starts.index_select(0, group)).clamp_(max=self.k)
        columns = neurons.index_select(0, starts)
        shape = (self.k + 1, len(columns))
        new_values = torch.full(shape, -torch.inf, dtype=self.values.dtype, device=rows.device)
        new_seq = torch.full(shape, -1, dtype=torch.int64, device=rows.device)
        new_pos = torch.full(shape, -1, dtype=torch.int64, device=rows.device)
        new_values[rank, group] = values
        new_seq[rank, group] = batch.seq_ids.index_select(0, rows // seq_len)
        new_pos[rank, group] = rows % seq_len
        self._merge_columns(slot, columns, new_values[: self.k], new_seq[: self.k], new_pos[: self.k])

    def _merge_into(self, slot: int, values: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> None:
        all_values = torch.cat([self.values[slot], values])
        all_seq = torch.cat([self.seq[slot], seq])
        all_pos = torch.cat([self.pos[slot], pos])
        top_values, top_seq, top_pos = _select_top(all_values, all_seq, all_pos, self.k)
        self.values[slot], self.seq[slot], self.pos[slot] = top_values, top_seq, top_pos

    def take_layer(self, layer: int) -> State:
        rows = slice(self.geometry.slot(layer), self.geometry.slot(layer) + 1)
        return dict(zip(("values", "seq", "pos"), host_arrays(self.values[rows], self.seq[rows], self.pos[rows])))

    def state(self) -> State:
        return dict(zip(("values", "seq", "pos"), host_arrays(self.values, self.seq, self.pos)))

    @staticmethod
    def merge(states: list[State]) -> State:
        k = states[0]["values"].shape[1]
        values = torch.from_numpy(np.concatenate([s["values"] for s in states], axis=1))
        seq = torch.from_numpy(np.concatenate([s["seq"] for s in states], axis=1))
        pos = torch.from_numpy(np.concatenate([s["pos"] for s in states], axis=1))
        out = [_select_top(values[i], seq[i], pos[i], k) for i in range(values.shape[0])]
        return {
            "values": np.stack([o[0].numpy() for o in out]),
            "seq": np.stack([o[1].numpy() for o in out]),
            "pos": np.stack([o[2].numpy() for o in out]),
        }


def _by_neuron_then_value_descending(neurons: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """int64 keys whose ascending order is (neuron ascending, float32 value descending).

    One integer sort instead of a float sort and a second, stable sort by neuron (4x faster on 150k
    candidates on a CPU). A float's bits, with the magnitude bits of negatives flipped, order like the
    floats (-0.0 is made 0.0 first, so the two zeros tie as they compare); descending is 2**32 - 1 minus that.
    """
    bits = (values.float() + 0.0).view(torch.int32).to(torch.int64)
    ascending = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)  # 0 .. 2**32 - 1
    return (neurons << 32) | ((1 << 32) - 1 - ascending)


def _batch_top(acts: torch.Tensor, k: int, excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the k largest values and their row indices [k, N], ties broken towards the earliest row;
    rows marked in `excluded` count as -inf.

    Works on the transposed matrix (top-k along contiguous rows is several times faster), where excluded
    rows are filled in place. One extra value per column tells whether the k-th value is tied (the (k+1)-th
    equals it): torch.topk picks arbitrarily among equal values (a ReLU neuron that never fires has only
    zeros), so those columns are resolved again by (value class, row index).
    """
    columns = acts.T.contiguous()  # [N, R]
    if excluded is not None:
        columns.masked_fill_(excluded, -torch.inf)
    n_rows = columns.shape[1]
    take = min(k + 1, n_rows)
    values, rows = torch.topk(columns, take, dim=1)
    if take > k:
        tied = (values[:, k] == values[:, k - 1]).nonzero(as_tuple=True)[0]
        values, rows = values[:, :k].contiguous(), rows[:, :k].contiguous()
        if len(tied) > 0:
            # values above the k-th are all in; the rest are the earliest rows equal to the k-th value,
            # found by a top-k of (n_rows - row) over the equal entries (exact in float32 up to 2**24 rows)
            kth = values[tied, k - 1 : k]
            above = (values[tied] > kth).sum(dim=1, keepdim=True)
            later = torch.arange(n_rows, 0, -1, dtype=torch.float32, device=acts.device)
            earliest = torch.topk(torch.where(columns[tied] == kth, later, 0.0), k, dim=1).indices
            slot = torch.arange(k, device=acts.device)[None, :]
            from_equal = earliest.gather(1, (slot - above).clamp(min=0))
            rows[tied] = torch.where(slot < above, rows[tied], from_equal)
            values[tied] = torch.where(slot < above, values[tied], kth)
    return values.T, rows.T


def _select_top(
    values: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column, the k entries with largest value; ties go to the smallest (seq, pos); sorted descending."""
    # Sort by (seq, pos) ascending first, then a stable sort by value descending keeps that order in ties.
    # Empty slots (seq = -1) sort last among equal values. Sorted along contiguous rows of the transpose.
    values, seq, pos = (t.T.contiguous() for t in (values, seq, pos))
    order_key = torch.where(seq < 0, torch.iinfo(torch.int64).max, seq * (1 << 24) + pos)
    by_position = torch.argsort(order_key, dim=1, stable=True)
    values, seq, pos = (t.gather(1, by_position) for t in (values, seq, pos))
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, by_value).T.contiguous() for t in (values, seq, pos))  # type: ignore[return-value]


class Moments:
    """Sum, sum of squares, minimum and maximum of every neuron's activation.

    Each batch's sums are matrix products in float32 (a weight of 0 drops BOS), added into float64 totals:
    the relative error is that of one batch's float32 sum, whatever the number of batches.

    On a CPU, a batch whose counted activations are all >= 0 (a ReLU) and whose firings are exactly its
    positive activations takes sums and maximum from its firings alone, added in float64: every other
    counted activation is 0. That reads the few percent of activations that fire (already gathered for the
    sparse accumulators) instead of making three more passes over all of them.
    """

    name: ClassVar[str] = "moments"

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        shape = (len(geometry.layers), geometry.n_neurons)
        self.total = torch.zeros(shape, dtype=torch.float64, device=device)
        self.squares = torch.zeros(shape, dtype=torch.float64, device=device)
        self.minimum = torch.full(shape, torch.inf, dtype=torch.float32, device=device)
        self.maximum = torch.full(shape, -torch.inf, dtype=torch.float32, device=device)

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        counted = batch.counted_acts()
        if counted.numel() == 0:
            return
        low = counted
        while low.dim() > 1:  # one dim at a time: reducing several dims of a strided view at once is slow
            low = low.amin(dim=-2)
        self.minimum[slot] = torch.minimum(self.minimum[slot], low)
        if counted.device.type == "cpu" and batch.fires_where_positive and bool((low >= 0).all()):
            _, neurons = batch.firing_pairs()
            values = batch.firing_values()
            wide = values.double()
            self.total[slot].index_add_(0, neurons, wide)
            self.squares[slot].index_add_(0, neurons, wide * wide)
            # a neuron that did not fire everywhere has a counted 0; its firings are all above that
            self.maximum[slot].clamp_(min=0.0).scatter_reduce_(0, neurons, values, "amax")
            return
        acts, weights = batch.acts_2d(), batch.weights()
        self.total[slot] += (weights @ acts)[0].double()
        self.squares[slot] += _weighted_squares(weights, acts)[0].double()
        high = counted
        while high.dim() > 1:
            high = high.amax(dim=-2)
        self.maximum[slot] = torch.maximum(self.maximum[slot], high)

    def take_layer(self, layer: int) -> State:
        rows = slice(self.geometry.slot(layer), self.geometry.slot(layer) + 1)
        arrays = {"sum": self.total, "sum_sq": self.squares, "min": self.minimum, "max": self.maximum}
        return dict(zip(arrays, host_arrays(*(array[rows] for array in arrays.values()))))

    def state(self) -> State:
        arrays = host_arrays(self.total, self.squares, self.minimum, self.maximum)
        return dict(zip(("sum", "sum_sq", "min", "max"), arrays))

    @staticmethod
    def merge(states: list[State]) -> State:
        return {
            "sum": np.sum([s["sum"] for s in states], axis=0),
            "sum_sq": np.sum([s["sum_sq"] for s in states], axis=0),
            "min": np.min([s["min"] for s in states], axis=0),
            "max": np.max([s["max"] for s in states], axis=0),
        }


SQUARE_ROWS = 256  # on a CPU, rows squared at a time: the squares stay in cache for their matrix product


def _weighted_squares(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """[1, N] float32 `weights @ acts**2`; on a CPU in blocks of rows, without a full-size squared copy."""
    if acts.device.type != "cpu":
        return weights @ (acts * acts)
    total = torch.zeros(1, acts.shape[1], dtype=torch.float32)
    for start in range(0, acts.shape[0], SQUARE_ROWS):
        rows = acts[start : start + SQUARE_ROWS]
        total.addmm_(weights[:, start : start + SQUARE_ROWS], rows * rows)
    return total


def _eligible_ngram_ends(mask: torch.Tensor, order: int) -> torch.Tensor:
    """[B, T] bool: the n-gram ending here lies inside the sequence and every token of it is counted."""
    eligible = mask.clone()
    for offset in range(1, order):
        eligible[:, offset:] &= mask[:, :-offset]
        eligible[:, :offset] = False
    return eligible


def _packed_ngrams(tokens: torch.Tensor, order: int, vocab_size: int) -> torch.Tensor:
    """[B, T] int64 key of the n-gram ending at each position (garbage where it would start before 0)."""
    keys = tokens.clone()
    for offset in range(1, order):
        shifted = torch.zeros_like(tokens)
        shifted[:, offset:] = tokens[:, :-offset]
        keys = keys + shifted * vocab_size**offset
    return keys


class NgramFireCount:
    """Firings per (layer, neuron, n-gram) in bounded memory: n-gram coverage of each neuron.

    Each neuron keeps a mergeable Misra-Gries summary of at most `capacity` n-grams per order (see
    `neuron_census.ngrams`): exact until a neuron meets more distinct n-grams than that, certified
    bounds afterwards. `fires` counts the firings at positions whose n-gram is complete and BOS-free,
    the denominator of coverage. Only the layers in `layers` are counted; each keeps its own summaries,
    merged with its pending batch pairs as `SlotMerges` says.

    A summary is a `count_tables` table with a row per neuron and a column per n-gram: a batch's
    (neuron, n-gram) pairs come out of `count_pairs` already sorted, as the tables take them.
    """

    name: ClassVar[str] = "ngram_fire_count"

    def __init__(
        self,
        geometry: Geometry,
        device: torch.device,
        *,
        layers: tuple[int, ...],
        orders: tuple[int, ...] = (2, 3),
        capacity: int = 65536,
        merge_pending: int = 1 << 18,
    ) -> None:
        for order in orders:
            check_packable(geometry.vocab_size, order)
        self.geometry = geometry
        self.layers = tuple(layers)
        self.orders = tuple(orders)
        self.capacity = capacity
        self.fires = torch.zeros(len(orders), len(layers), geometry.n_neurons, dtype=torch.int64, device=device)
        self._merges = SlotMerges(len(self.layers), merge_pending)
        self._tables = [  # [slot][order]
            {n: count_table(geometry.n_neurons, geometry.vocab_size**n, capacity, device) for n in orders}
            for _ in self.layers
        ]

    def update(self, batch: LayerBatch) -> None:
        if batch.layer not in self.layers:
            return
        slot = self.layers.index(batch.layer)
        added = 0
        rows, neurons = batch.firing_pairs()
        n_neurons = self.geometry.n_neurons
        for index, order in enumerate(self.orders):
            unique_grams, row_gram = self._batch_ngrams(batch, order)
            spare = len(unique_grams)  # the index of positions with no complete n-gram
            row_grams = row_gram.index_select(0, rows)
            # firings at the spare are counted under a neuron past the last, so that they sort into one run
            # after every other: dropping it is a slice, not a scan and a gather of every pair
            major = torch.where(row_grams == spare, n_neurons, neurons)
            neurons_of, grams, counts = count_pairs(major, row_grams, n_neurons + 1, spare + 1)
            if len(counts) and int(neurons_of[-1]) == n_neurons:  # one wait for the device, as a nonzero would be
                neurons_of, grams, counts = neurons_of[:-1], grams[:-1], counts[:-1]
            self.fires[index, slot].index_add_(0, neurons_of, counts)
            if len(counts) == 0:
                continue
            self._tables[slot][order].stage(neurons_of, unique_grams.index_select(0, grams), counts)
            added += len(counts)
        held = max(table.held() for table in self._tables[slot].values())
        if self._merges.due(slot, added, held):
            self._flush(slot)

    def _batch_ngrams(self, batch: LayerBatch, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct complete n-grams, and per position [B*T] its n-gram's index (or the spare).

        The same for every layer of a batch, so kept with the batch's shared tensors.
        """
        key = ("ngrams", order)
        if key not in batch.per_batch:
            eligible = _eligible_ngram_ends(batch.mask, order).reshape(-1)
            packed = _packed_ngrams(batch.tokens, order, self.geometry.vocab_size).reshape(-1)
            unique_grams, gram_index = torch.unique(packed[eligible], return_inverse=True)
            row_gram = torch.full_like(packed, len(unique_grams))
            row_gram[eligible] = gram_index
            batch.per_batch[key] = (unique_grams, row_gram)
        return batch.per_batch[key]

    def take_layer(self, layer: int) -> State:
        """The layer's summaries, pending pairs merged (as `state` does), handed over: the state of a capture
        of this layer alone (empty when its n-grams are not counted)."""
        counted = layer in self.layers
        slot = self.layers.index(layer) if counted else 0
        fires = self.fires[:, slot : slot + 1] if counted else self.fires[:, :0]
        state = self._header() | {
            "layers": np.asarray([layer] if counted else [], dtype=np.int64),
            "fires": host_array(fires),
        }
        if counted:
            self._flush(slot)
        for order in self.orders:
            table = self._tables[slot][order] if counted else None
            columns = _JoinedColumns(3, table.held() if table is not None else 0)
            for part in table.parts() if table is not None else ():
                columns.append(*part)
            group, gram, count = columns.arrays
            state |= {f"order{order}_group": group, f"order{order}_gram": gram, f"order{order}_count": count}
            if table is not None:
                table.clear()
        return state

    def _header(self) -> State:
        return {"orders": np.asarray(self.orders, dtype=np.int64), "capacity": np.asarray([self.capacity], dtype=np.int64)}

    def _flush(self, slot: int) -> None:
        for table in self._tables[slot].values():
            table.merge()

    def state(self) -> State:
        state = self._header() | {"layers": np.asarray(self.layers, dtype=np.int64), "fires": host_array(self.fires)}
        for slot in range(len(self.layers)):
            self._flush(slot)
        n_neurons = self.geometry.n_neurons
        for order in self.orders:  # groups are slot * n_neurons + neuron: tables join in sorted order
            columns = _JoinedColumns(3, sum(tables[order].held() for tables in self._tables))
            for slot, tables in enumerate(self._tables):  # filled a table at a time, as TokenFireCount.state does
                for neuron, gram, count in tables[order].parts():
                    columns.append(neuron + slot * n_neurons, gram, count)
            group, gram, count = columns.arrays
            state |= {f"order{order}_group": group, f"order{order}_gram": gram, f"order{order}_count": count}
        return state

    @staticmethod
    def merge(states: list[State]) -> State:
        first = states[0]
        merged = _settings_of(states, ("orders", "layers", "capacity"), "n-gram counts")
        capacity = int(first["capacity"][0])
        merged["fires"] = np.sum([s["fires"] for s in states], axis=0)
        for order in first["orders"].tolist():
            parts = [(s[f"order{order}_group"], s[f"order{order}_gram"], s[f"order{order}_count"]) for s in states]
            group, gram, count = merge_summaries(parts, capacity)
            merged |= {f"order{order}_group": group, f"order{order}_gram": gram, f"order{order}_count": count}
        return merged


class NgramCount:
    """Occurrences of each n-gram at counted positions (the denominator of n-gram detectors).

    One Misra-Gries summary of at most `capacity` n-grams per order: exact while the data has fewer
    distinct n-grams, which `total` (all counted n-gram positions) lets a reader check; otherwise every
    count is at most `ngrams.summary_slack` below the truth.
    """

    name: ClassVar[str] = "ngram_count"

    def __init__(
        self,
        geometry: Geometry,
        device: torch.device,
        *,
        orders: tuple[int, ...] = (2,),
        capacity: int = 1 << 22,
        merge_pending: int = 1 << 18,
    ) -> None:
        for order in orders:
            check_packable(geometry.vocab_size, order)
        self.geometry = geometry
        self.orders = tuple(orders)
        self.capacity = capacity
        self.total = np.zeros(len(orders), dtype=np.int64)
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        self._tables = {n: (empty, empty) for n in orders}  # sorted n-gram keys and their counts
        self._pending: dict[int, list[torch.Tensor]] = {n: [] for n in orders}
        self._merges = SlotMerges(1, merge_pending)
        self._first_layer = geometry.layers[0]

    def update(self, batch: LayerBatch) -> None:
        """Gather the batch's n-grams; they are counted into the summary as `SlotMerges` says."""
        if batch.layer != self._first_layer:
            return
        added = 0
        for index, order in enumerate(self.orders):
            eligible = _eligible_ngram_ends(batch.mask, order)
            grams = _packed_ngrams(batch.tokens, order, self.geometry.vocab_size)[eligible]
            self.total[index] += len(grams)
            self._pending[order].append(grams)
            added += len(grams)
        held = max(len(keys) for keys, _ in self._tables.values())
        if self._merges.due(0, added, held):
            self._flush()

    def _flush(self) -> None:
        for order in self.orders:
            if self._pending[order]:
                unique, counts = torch.unique(torch.cat(self._pending[order]), return_counts=True)
                keys, counts = add_sorted_keys(*self._tables[order], unique, counts)
                # one group (key // vocab**order == 0): a single summary of at most `capacity` n-grams
                self._tables[order] = prune_keys(keys, counts, self.geometry.vocab_size**order, self.capacity)
                self._pending[order] = []

    def state(self) -> State:
        self._flush()
        state: State = {
            "orders": np.asarray(self.orders, dtype=np.int64),
            "capacity": np.asarray([self.capacity], dtype=np.int64),
            "total": self.total.copy(),
        }
        for order, (gram, count) in self._tables.items():
            gram_np, count_np = host_arrays(gram, count)
            state |= {f"order{order}_gram": gram_np, f"order{order}_count": count_np}
        return state

    @staticmethod
    def merge(states: list[State]) -> State:
        first = states[0]
        merged = _settings_of(states, ("orders", "capacity"), "n-gram counts")
        merged["total"] = np.sum([s["total"] for s in states], axis=0)
        for order in first["orders"].tolist():
            parts = [
                (np.zeros(len(s[f"order{order}_gram"]), dtype=np.int64), s[f"order{order}_gram"], s[f"order{order}_count"])
                for s in states
            ]
            _, gram, count = merge_summaries(parts, int(first["capacity"][0]))
            merged |= {f"order{order}_gram": gram, f"order{order}_count": count}
        return merged


REGISTRY: dict[str, type] = {
    cls.name: cls
    for cls in (FireCount, PositionFireCount, TokenCount, TokenFireCount, TopK, Moments, NgramFireCount, NgramCount)
}


def sums_elementwise(name: str) -> bool:
    """Accumulator `name` merges by adding its arrays element by element (so any block of rows merges alone)."""
    return REGISTRY[name].merge is _sum_states


def merge_states(states: list[dict[str, State]]) -> dict[str, State]:
    """Merge per-shard states accumulator by accumulator (each is associative)."""
    names = sorted(states[0])
    for other in states[1:]:
        if sorted(other) != names:
            raise ValueError(f"cannot merge stores with different accumulators: {names} vs {sorted(other)}")
    return {name: REGISTRY[name].merge([s[name] for s in states]) for name in names}
