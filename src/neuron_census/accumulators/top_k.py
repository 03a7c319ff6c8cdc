"""The `k` largest activations of every neuron, with the (sequence, position) where they occurred."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import (
    CAPTURE_DEFAULTS,
    Accumulator,
    Geometry,
    LayerBatch,
    Memory,
    State,
    host_paths,
)
from neuron_census.accumulators.sorting import stable_order
from neuron_census.capture.host_copies import host_arrays

EMPTY = torch.iinfo(torch.int64).min  # the key of a slot no activation has filled
ROW_BITS = 32
CHUNK_BYTES = 1 << 30  # the most a batch's keys take at once (more rows are ranked a chunk at a time)
SAMPLE_ROWS = 2048  # counted rows whose k-th largest value bars the rest of a CPU batch (`_entry_bar`)


def ordered_bits(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that order like the float32 `values` (-0.0 made 0.0 first, so both zeros tie as they
    compare): a float's bits, with the magnitude bits of negatives flipped."""
    bits = (values + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def value_of(bits: torch.Tensor) -> torch.Tensor:
    """float32 values of `ordered_bits` (the flip is its own inverse)."""
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int32).view(torch.float32)


class TopK(Accumulator):
    """Ties go to the earlier (sequence, position), so the result is deterministic and the merge of shards
    equals one pass over all of them.

    Each activation becomes one int64 key, its value's ordered bits above its row's rank (later rows rank
    lower), so a plain `topk` over the batch's keys, and over those and the kept ones, is exact with the tie
    rule built in: a dozen device ops per (layer, batch) (and chunk of a large batch), none of which waits for
    the device. Rows are counted from the first sequence this accumulator sees: a capture covers 2**32 tokens.

    On a CPU only the activations that can still enter become keys (`_entry_bar`, `_update_from_candidates`):
    the dense keys cost more than the layer's forward pass there, and a whole capture ran 2-3x slower.
    """

    name: ClassVar[str] = "top_k"
    layer_keys: ClassVar[tuple[str, ...]] = ("values", "seq", "pos")

    def __init__(self, geometry: Geometry, device: torch.device, *, k: int = CAPTURE_DEFAULTS["top_k"]) -> None:
        self.geometry, self.k, self.device = geometry, k, device
        self.keys = [torch.full((k, geometry.n_neurons), EMPTY, dtype=torch.int64, device=device) for _ in geometry.layers]
        self.first_seq: int | None = None
        self.next_row = [0 for _ in geometry.layers]  # rows before this are kept or passed (host, when known)

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> TopK:
        return cls(geometry, device, k=settings.top_k)

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        seq_len = batch.acts.shape[1]
        if self.first_seq is None:
            self.first_seq = batch.first_seq
        first_row = (batch.first_seq - self.first_seq) * seq_len
        end_row = first_row + batch.acts.shape[0] * seq_len
        if end_row > 1 << ROW_BITS:
            raise ValueError(f"top_k counts rows of up to 2**{ROW_BITS} tokens a capture; capture fewer sequences")

        def row_rank() -> torch.Tensor:
            """[B*T, 1] int64: (2**32 - 1) minus each row's index counted from the first sequence seen (made on
            the host, and copied over)."""
            rows = np.arange(first_row, end_row, dtype=np.int64)
            return torch.from_numpy(((1 << ROW_BITS) - 1 - rows)[:, None]).to(batch.seq_ids.device)

        rank = batch.shared(("top_k_rank", self.first_seq), row_rank)
        excluded = batch.shared("top_k_excluded", lambda: ~batch.mask.reshape(-1, 1))
        acts = batch.acts_2d()
        if host_paths(self.device):
            seen = self.next_row[slot]
            self.next_row[slot] = max(seen, end_row)
            bar = self._entry_bar(slot, batch) if first_row >= seen else None  # rows after every kept one
            if bar is not None:
                self._update_from_candidates(slot, batch, rank, excluded, *bar)
                return
        step = max(1, CHUNK_BYTES // (8 * acts.shape[1]))  # rows whose int64 keys are ranked at a time
        best = [self.keys[slot]]
        for start in range(0, acts.shape[0], step):
            whole = start == 0 and step >= acts.shape[0]  # one chunk: no slices
            rows = slice(None) if whole else slice(start, start + step)
            # (bits << 32) | rank in one op: the int32 bits are widened and scaled inside the add
            keys = torch.add(rank if whole else rank[rows], ordered_bits(acts if whole else acts[rows]), alpha=1 << ROW_BITS)
            keys.masked_fill_(excluded if whole else excluded[rows], EMPTY)
            best.append(keys if whole else torch.topk(keys, min(self.k, keys.shape[0]), dim=0, sorted=False).values)
        self.keys[slot] = torch.topk(torch.cat(best), self.k, dim=0).values

    def _entry_bar(self, slot: int, batch: LayerBatch) -> tuple[torch.Tensor, int] | None:
        """Per neuron, a value only activations above which can enter the top k, and the leading rows of the
        batch where one equal to it can too; None when no such bar is known (the dense keys then).

        Every neuron full: its k-th kept value, no rows (kept rows are earlier, so they win ties). Nothing kept
        yet: the k-th largest over the counted rows of the batch's first sequences (S); those rows come
        first, so an activation outside S equal to the bar loses to the k in S at or above it.
        """
        kept = self.keys[slot]
        if bool(kept[-1].ne(EMPTY).all()):
            return value_of(kept[-1] >> ROW_BITS), 0
        counted_from = batch.counted_from
        per_seq = batch.acts.shape[1] - (counted_from or 0)
        if counted_from is None or per_seq <= 0 or not bool(kept[0].eq(EMPTY).all()):
            return None
        n_seq = min(batch.acts.shape[0], -(-SAMPLE_ROWS // per_seq))
        if n_seq * per_seq < self.k:
            return None
        sample = batch.acts[:n_seq, counted_from:].reshape(-1, batch.acts.shape[2]).float()
        return torch.topk(sample, self.k, dim=0).values[-1], n_seq * batch.acts.shape[1]

    def _update_from_candidates(
        self, slot: int, batch: LayerBatch, rank: torch.Tensor, excluded: torch.Tensor, bar: torch.Tensor, tie_rows: int
    ) -> None:
        """The batch's activations above each neuron's bar, and enough of those equal to it in the first
        `tie_rows` rows (`_ties`), joined to the kept keys; each neuron's k largest keys are
        kept: one sort of the few candidates, no key for every activation. Where the firings are the
        positive activations and no bar is below 0, those above the bar are firings: the firings are read,
        not the batch."""
        acts = batch.acts_2d()
        kept = self.keys[slot]
        k, n_neurons = kept.shape
        if batch.fires_from_acts and bool((bar >= 0).all()):
            rows, neurons = batch.firing_pairs()
            values = batch.firing_values()
            enter = (values > bar.index_select(0, neurons)).nonzero(as_tuple=True)[0]
            rows, neurons, values = (column.index_select(0, enter) for column in (rows, neurons, values))
        else:
            above = acts > bar
            above.masked_fill_(excluded, False)
            rows, neurons = above.nonzero(as_tuple=True)
            values = acts[rows, neurons]
        if tie_rows:
            tie_at, tie_neurons = self._ties(batch, bar, excluded, tie_rows)
            rows, neurons = torch.cat([rows, tie_at]), torch.cat([neurons, tie_neurons])
            values = torch.cat([values, bar[tie_neurons]])
        bits = ordered_bits(values).to(torch.int64)
        keys = torch.cat([kept.T.reshape(-1), (bits << ROW_BITS) | rank[rows, 0]])
        neurons = torch.cat([torch.arange(n_neurons).repeat_interleave(k), neurons])
        # By neuron, then key descending, in one ascending stable sort of (neuron, value descending): kept rows
        # precede the batch's and both come row by row, so equal values keep their rows ascending.
        bits = torch.cat([kept.T.reshape(-1) >> ROW_BITS, bits])
        order = stable_order((neurons << ROW_BITS) + ((1 << 31) - 1 - bits), n_neurons << ROW_BITS)
        per_neuron = torch.bincount(neurons, minlength=n_neurons)
        top = (torch.cumsum(per_neuron, 0) - per_neuron)[:, None] + torch.arange(k)  # each neuron's first k
        self.keys[slot] = keys[order[top.reshape(-1)]].reshape(n_neurons, k).T.contiguous()

    def _ties(self, batch: LayerBatch, bar: torch.Tensor, excluded: torch.Tensor, tie_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, neuron) of counted activations equal to their neuron's bar in the first `tie_rows` rows: a
        superset of the earliest k ties, looked for in the first 2k counted rows first. A neuron with k
        ties there needs no more; one whose bar is 0 after a ReLU has them (fewer than k of its counted rows
        are above the bar), so the many zeros of rare and dead neurons are never all listed."""
        acts = batch.acts_2d()
        per_seq = batch.acts.shape[1] - batch.counted_from
        counted = np.arange(min(2 * self.k, (tie_rows // batch.acts.shape[1]) * per_seq))
        head = torch.from_numpy(counted // per_seq * batch.acts.shape[1] + batch.counted_from + counted % per_seq)
        at, neurons = (acts.index_select(0, head) == bar).nonzero(as_tuple=True)
        rows = head[at]
        rest = int(head[-1]) + 1
        short = torch.bincount(neurons, minlength=len(bar)) < self.k
        if rest < tie_rows and bool(short.any()):
            ties = (acts[rest:tie_rows] == bar) & short
            ties.masked_fill_(excluded[rest:tie_rows], False)
            more_at, more_neurons = ties.nonzero(as_tuple=True)
            rows, neurons = torch.cat([rows, more_at + rest]), torch.cat([neurons, more_neurons])
        return rows, neurons

    def _decoded(self, keys: torch.Tensor) -> State:
        seq_len = self.geometry.seq_len
        empty = keys == EMPTY
        rows = (1 << ROW_BITS) - 1 - (keys & ((1 << ROW_BITS) - 1))
        values = value_of(keys >> ROW_BITS).masked_fill(empty, -torch.inf)
        seq = (rows // seq_len + (self.first_seq or 0)).masked_fill(empty, -1)
        pos = (rows % seq_len).masked_fill(empty, -1)
        return dict(zip(self.layer_keys, host_arrays(values, seq, pos)))

    def take_layer(self, layer: int) -> State:
        return self._decoded(self.keys[self.geometry.slot(layer)][None])

    def state(self) -> State:
        return self._decoded(torch.stack(self.keys))

    @staticmethod
    def merge(states: list[State]) -> State:
        """Per (layer, neuron), the k entries with largest value; ties go to the smallest (seq, pos); sorted
        descending. Sorted by (seq, pos) ascending first (empty slots, seq = -1, last), then a stable sort by
        value descending keeps that order in ties; along contiguous rows [layer, neuron, entry]."""
        k = states[0]["values"].shape[1]
        values, seq, pos = (
            torch.from_numpy(np.concatenate([s[key] for s in states], axis=1)).transpose(1, 2).contiguous()
            for key in TopK.layer_keys
        )
        position = torch.where(seq < 0, torch.iinfo(torch.int64).max, seq * (1 << 24) + pos)
        by_position = torch.argsort(position, dim=2, stable=True)
        values, seq, pos = (t.gather(2, by_position) for t in (values, seq, pos))
        by_value = torch.argsort(values, dim=2, descending=True, stable=True)[:, :, :k]
        top = (t.gather(2, by_value).transpose(1, 2).contiguous().numpy() for t in (values, seq, pos))
        return dict(zip(TopK.layer_keys, top))

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        """The kept keys of every layer, and one batch's keys while they are ranked."""
        kept = len(geometry.layers) * settings.top_k * geometry.n_neurons
        chunk = min(settings.batch_size * geometry.seq_len * geometry.n_neurons * 8, CHUNK_BYTES)
        return Memory(device=kept * 8 + 2 * chunk, host=kept * (4 + 8 + 8))
