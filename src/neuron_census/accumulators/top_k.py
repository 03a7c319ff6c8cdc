"""The `k` largest activations of every neuron, with the (sequence, position) where they occurred."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import Accumulator, Geometry, LayerBatch, Memory, Parts, State, StateArrays, appended, layered
from neuron_census.capture.host_copies import host_arrays

EMPTY = torch.iinfo(torch.int64).min  # the key of a slot no activation has filled
ROW_BITS = 32
CHUNK_BYTES = 1 << 30  # the most a batch's keys take at once (more rows are ranked a chunk at a time)


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
    the device. Rows are
    counted from the first sequence this accumulator sees, so a capture covers up to 2**32 tokens.
    """

    name: ClassVar[str] = "top_k"

    def __init__(self, geometry: Geometry, device: torch.device, *, k: int = 16) -> None:
        self.geometry = geometry
        self.k = k
        self.device = device
        self.keys = [torch.full((k, geometry.n_neurons), EMPTY, dtype=torch.int64, device=device) for _ in geometry.layers]
        self.first_seq: int | None = None

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> TopK:
        return cls(geometry, device, k=settings.top_k)

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        seq_len = batch.acts.shape[1]
        if self.first_seq is None:
            self.first_seq = batch.first_seq if batch.first_seq is not None else int(batch.seq_ids[0])
        first = batch.first_seq if batch.first_seq is not None else None
        if first is not None and (first - self.first_seq + batch.acts.shape[0]) * seq_len > 1 << ROW_BITS:
            raise ValueError(f"top_k counts rows of up to 2**{ROW_BITS} tokens a capture; capture fewer sequences")
        rank = batch.shared(("top_k_rank", self.first_seq), lambda: self._row_rank(batch))
        excluded = batch.shared("top_k_excluded", lambda: ~batch.mask.reshape(-1, 1))
        acts = batch.acts_2d()
        step = max(1, CHUNK_BYTES // (8 * acts.shape[1]))  # rows whose int64 keys are ranked at a time
        best = [self.keys[slot]]
        for start in range(0, acts.shape[0], step):
            whole = start == 0 and step >= acts.shape[0]  # one chunk: no slices
            rows = slice(None) if whole else slice(start, start + step)
            keys = (ordered_bits(acts if whole else acts[rows]).to(torch.int64) << ROW_BITS) | (rank if whole else rank[rows])
            keys.masked_fill_(excluded if whole else excluded[rows], EMPTY)
            best.append(torch.topk(keys, min(self.k, keys.shape[0]), dim=0, sorted=False).values)
        self.keys[slot] = torch.topk(torch.cat(best), self.k, dim=0).values

    def _row_rank(self, batch: LayerBatch) -> torch.Tensor:
        """[B*T, 1] int64: (2**32 - 1) minus each row's index counted from the first sequence seen (made on
        the host when the batch's first sequence is known there, and copied over)."""
        n_seq, seq_len = batch.acts.shape[:2]
        assert self.first_seq is not None
        if batch.first_seq is None:
            seq = (batch.seq_ids - self.first_seq)[:, None]
            rows = seq * seq_len + torch.arange(seq_len, device=batch.seq_ids.device)
            return ((1 << ROW_BITS) - 1 - rows).reshape(-1, 1)
        start = (batch.first_seq - self.first_seq) * seq_len
        rows = np.arange(start, start + n_seq * seq_len, dtype=np.int64)
        return torch.from_numpy(((1 << ROW_BITS) - 1 - rows)[:, None]).to(batch.seq_ids.device)

    def _decoded(self, keys: torch.Tensor) -> State:
        seq_len = self.geometry.seq_len
        empty = keys == EMPTY
        rows = (1 << ROW_BITS) - 1 - (keys & ((1 << ROW_BITS) - 1))
        values = value_of(keys >> ROW_BITS).masked_fill(empty, -torch.inf)
        seq = (rows // seq_len + (self.first_seq or 0)).masked_fill(empty, -1)
        pos = (rows % seq_len).masked_fill(empty, -1)
        return dict(zip(("values", "seq", "pos"), host_arrays(values, seq, pos)))

    def take_layer(self, layer: int) -> State:
        return self._decoded(self.keys[self.geometry.slot(layer)][None])

    def state(self) -> State:
        return self._decoded(torch.stack(self.keys))

    @staticmethod
    def merge(states: list[State]) -> State:
        k = states[0]["values"].shape[1]
        values = torch.from_numpy(np.concatenate([s["values"] for s in states], axis=1))
        seq = torch.from_numpy(np.concatenate([s["seq"] for s in states], axis=1))
        pos = torch.from_numpy(np.concatenate([s["pos"] for s in states], axis=1))
        out = [select_top(values[i], seq[i], pos[i], k) for i in range(values.shape[0])]
        return {key: np.stack([o[index].numpy() for o in out]) for index, key in enumerate(("values", "seq", "pos"))}

    @staticmethod
    def read_layer(arrays: StateArrays, slot: int, layer: int) -> State:
        return layered(arrays, ("values", "seq", "pos"), slot)

    @staticmethod
    def layer_parts(state: State, slot: int, counted_before: int) -> Parts:
        return appended(state, ("values", "seq", "pos"))

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        """The kept keys of every layer, and one batch's keys while they are ranked."""
        kept = len(geometry.layers) * settings.top_k * geometry.n_neurons
        chunk = min(settings.batch_size * geometry.seq_len * geometry.n_neurons * 8, CHUNK_BYTES)
        return Memory(device=kept * 8 + 2 * chunk, host=kept * (4 + 8 + 8))


def select_top(values: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column, the k entries with largest value; ties go to the smallest (seq, pos); sorted descending."""
    # Sort by (seq, pos) ascending first, then a stable sort by value descending keeps that order in ties.
    # Empty slots (seq = -1) sort last among equal values. Sorted along contiguous rows of the transpose.
    values, seq, pos = (t.T.contiguous() for t in (values, seq, pos))
    order_key = torch.where(seq < 0, torch.iinfo(torch.int64).max, seq * (1 << 24) + pos)
    by_position = torch.argsort(order_key, dim=1, stable=True)
    values, seq, pos = (t.gather(1, by_position) for t in (values, seq, pos))
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, by_value).T.contiguous() for t in (values, seq, pos))  # type: ignore[return-value]
