"""Activations kept as they are at labelled positions: what probes and variance analyses are fitted on.

A span is (sequence id, start, end, label); its sample is every analysed neuron's mean activation over the
span's positions [start, end) (one position: its activation). The spans come from a parquet file (columns
`seq`, `start`, `end`, `label`), sorted by (seq, start, end); the first `limit` of them are kept. A batch
whose sequences hold spans adds their samples with one matrix product per layer (span weights x
activations) into a buffer on the device; nothing is read back until a layer is handed over.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import torch

from neuron_census.accumulators.base import Accumulator, Geometry, LayerBatch, Memory, State
from neuron_census.capture.host_copies import host_array

SPAN_KEYS = ("seq", "start", "end", "label")


def read_spans(path: str | Path, seq_len: int) -> dict[str, np.ndarray]:
    """Spans of a parquet file as int64 columns sorted by (seq, start, end); a bad one is named."""
    try:
        frame = pl.read_parquet(path, columns=list(SPAN_KEYS))
    except Exception as error:  # polars raises several kinds for missing files and columns
        raise ValueError(f"capture.sample_spans {path}: cannot read seq, start, end, label ({error})") from None
    spans = {key: frame[key].cast(pl.Int64).to_numpy() for key in SPAN_KEYS}
    bad = (spans["start"] < 0) | (spans["end"] <= spans["start"]) | (spans["end"] > seq_len) | (spans["seq"] < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"capture.sample_spans {path}: row {row} (seq {spans['seq'][row]}, start {spans['start'][row]}, "
            f"end {spans['end'][row]}) is not a span of positions 0..{seq_len}"
        )
    order = np.lexsort((spans["end"], spans["start"], spans["seq"]))
    return {key: column[order] for key, column in spans.items()}


class Samples(Accumulator):
    name: ClassVar[str] = "samples"
    default: ClassVar[bool] = False  # runs when a capture names its spans
    layer_keys: ClassVar[tuple[str, ...]] = ("values",)
    shared_keys: ClassVar[tuple[str, ...]] = SPAN_KEYS

    def __init__(self, geometry: Geometry, device: torch.device, *, spans: dict[str, np.ndarray], limit: int) -> None:
        self.geometry, self.device = geometry, device
        self.spans = {key: column[:limit] for key, column in spans.items()}
        self.kept = np.zeros(len(self.spans["seq"]), dtype=bool)  # spans whose sequence has been seen
        self.values: list[torch.Tensor | None] = [None] * len(geometry.layers)

    @classmethod
    def from_settings(cls, settings, geometry: Geometry, device: torch.device) -> Samples:
        if settings.sample_spans is None:
            raise ValueError("the samples accumulator needs capture.sample_spans (a parquet file of seq, start, end, label)")
        return cls(geometry, device, spans=read_spans(settings.sample_spans, geometry.seq_len), limit=settings.sample_limit)

    def _batch_weights(self, batch: LayerBatch) -> tuple[np.ndarray, torch.Tensor] | None:
        """The batch's spans (indices into the kept ones) and their [spans, B*T] averaging weights: built
        on the host from the batch's sequence ids, once for all layers."""
        seq_ids = batch.first_seq + np.arange(batch.acts.shape[0])
        lo, hi = np.searchsorted(self.spans["seq"], [seq_ids[0], seq_ids[-1] + 1])
        if hi == lo:
            return None
        index = np.arange(lo, hi)
        index = index[np.isin(self.spans["seq"][index], seq_ids)]
        seq_len = batch.acts.shape[1]
        weights = np.zeros((len(index), len(seq_ids) * seq_len), dtype=np.float32)
        rows = np.searchsorted(seq_ids, self.spans["seq"][index]) * seq_len
        for out, (row, start, end) in enumerate(zip(rows, self.spans["start"][index], self.spans["end"][index])):
            weights[out, row + start : row + end] = 1.0 / (end - start)
        self.kept[index] = True
        return index, torch.from_numpy(weights).to(self.device)

    def update(self, batch: LayerBatch) -> None:
        found = batch.shared("sample_weights", lambda: self._batch_weights(batch))
        if found is None:
            return
        index, weights = found
        slot = self.geometry.slot(batch.layer)
        if self.values[slot] is None:
            shape = (len(self.spans["seq"]), self.geometry.n_neurons)
            self.values[slot] = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.values[slot][torch.from_numpy(index).to(self.device)] = weights @ batch.acts_2d()

    def _spans_seen(self) -> State:
        return {key: self.spans[key][self.kept] for key in SPAN_KEYS}

    def _values(self, slot: int) -> np.ndarray:
        values = self.values[slot]
        if values is None:
            return np.zeros((0, self.geometry.n_neurons), dtype=np.float32)
        return host_array(values)[self.kept]

    def take_layer(self, layer: int) -> State:
        slot = self.geometry.slot(layer)
        state = self._spans_seen() | {"values": self._values(slot)[None]}
        self.values[slot] = None
        return state

    def state(self) -> State:
        return self._spans_seen() | {"values": np.stack([self._values(slot) for slot in range(len(self.geometry.layers))])}

    @staticmethod
    def merge(states: list[State]) -> State:
        """Concatenated, in (seq, start, end) order: shards hold other sequences, so no span is repeated."""
        spans = {key: np.concatenate([s[key] for s in states]) for key in SPAN_KEYS}
        order = np.lexsort((spans["end"], spans["start"], spans["seq"]))
        values = np.concatenate([s["values"] for s in states], axis=1)[:, order]
        return {key: column[order] for key, column in spans.items()} | {"values": values}

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        samples = settings.sample_limit * geometry.n_neurons * 4
        return Memory(device=(1 if layerwise else len(geometry.layers)) * samples, host=2 * samples)
