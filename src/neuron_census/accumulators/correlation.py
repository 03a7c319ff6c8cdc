"""Pearson correlation of every neuron of a reference model with every neuron of other models over the same
tokens (universal neurons, Gurnee et al. 2024): streaming co-moments of one block of layer pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neuron_census.accumulators.base import State, kept_rows, paired
from neuron_census.capture.host_copies import host_arrays

if TYPE_CHECKING:
    from neuron_census.capture.sources import PairedActivations


def mean_key(model: str) -> str:
    return f"mean@{model}"


def m2_key(model: str) -> str:
    return f"m2@{model}"


def co_key(model: str) -> str:
    return f"co@{model}"


def within_key(model: str) -> str:
    return f"within@{model}"


@paired
class NeuronCorrelation:
    """Fed by `capture_paired` with the union of both layer lists. Per batch, the rows to count (not BOS,
    not a dropped token such as pad or newline) of every held layer are centred on the batch's mean, and one
    float32 matrix product per other model ([rows, La*d]^T [rows, Lb*d]) is combined with the running
    co-moments in float64 by Chan et al.'s pairwise rule, as shards are (`merge`). Co-moments, not raw
    sums: sum(xy)/n - mean(x)mean(y) cancels to noise for a neuron whose spread is small next to its mean.

    The co-moments within each layer of the other models are kept too: the correlation with any rotation
    of a layer's neuron basis follows from them (`analyses.universal`) without a second product. A batch
    arrives a layer at a time, so each model's rows are held until the batch's last layer: capture with
    the resident or offload placement (layerwise runs a layer over every batch first, and is refused).
    """

    name = "correlation"

    def __init__(
        self,
        reference: str,
        others: Sequence[str],
        layers_a: Sequence[int],
        layers_b: Sequence[int],
        n_neurons: int | dict[str, int],
        device: torch.device,
        *,
        dropped_tokens: Sequence[int] = (),
        preactivation: bool = False,
    ) -> None:
        self.reference, self.others = reference, tuple(others)
        if reference in self.others or len(set(self.others)) != len(self.others) or not self.others:
            raise ValueError(f"correlation needs a reference model and distinct others, got '{reference}' and {list(others)}")
        self.layers_a, self.layers_b = tuple(sorted(layers_a)), tuple(sorted(layers_b))
        widths = n_neurons if isinstance(n_neurons, dict) else {name: n_neurons for name in (reference, *self.others)}
        self.width = widths
        self.device = device
        self.preactivation = preactivation
        self.dropped = torch.as_tensor(list(dropped_tokens), dtype=torch.int64, device=device)
        self.last = max(self.layers_a[-1], self.layers_b[-1])
        self.count = 0
        d_a = len(self.layers_a) * widths[reference]
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.mean = {reference: zeros(d_a)} | {b: zeros(len(self.layers_b) * widths[b]) for b in self.others}
        self.m2 = {name: zeros(len(mean)) for name, mean in self.mean.items()}
        self.co = {b: zeros(d_a, len(self.layers_b) * widths[b]) for b in self.others}
        self.within = {b: zeros(len(self.layers_b), widths[b], widths[b]) for b in self.others}
        self._held: dict[tuple[str, int], torch.Tensor] = {}
        self._batch: int | None = None
        self._rows: torch.Tensor | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        """What the paired capture must analyse."""
        return tuple(sorted(set(self.layers_a) | set(self.layers_b)))

    def update(self, item: PairedActivations) -> None:
        if item.layer not in self.layers:  # another block's layer of the same capture
            return
        if self._batch is not None and item.batch.index != self._batch:
            raise ValueError(
                "correlation needs every layer of a batch before the next batch: capture with the resident or "
                "offload placement, not layerwise"
            )
        if self._batch is None:
            self._batch = item.batch.index
            self._rows = kept_rows(item.batch.tokens, item.batch.mask, self.dropped)
        source = item.preacts if self.preactivation else item.acts
        for name in (self.reference, *self.others):
            if item.layer in (self.layers_a if name == self.reference else self.layers_b):
                acts = source[name]
                if acts is None:
                    raise ValueError(f"model '{name}' gave no pre-activations of layer {item.layer}")
                self._held[name, item.layer] = acts.reshape(-1, acts.shape[-1]).index_select(0, self._rows).float()
        if item.layer == self.last:
            self._add()
            self._held.clear()
            self._batch = None

    def _add(self) -> None:
        assert self._rows is not None
        n = len(self._rows)
        if n == 0:
            return
        before = self.count
        self.count += n
        weight = before * n / self.count  # Chan et al.: the shift of the means, weighted
        centred: dict[str, torch.Tensor] = {}
        shift: dict[str, torch.Tensor] = {}
        for name in (self.reference, *self.others):
            layers = self.layers_a if name == self.reference else self.layers_b
            rows = torch.cat([self._held[name, layer] for layer in layers], dim=1)
            batch_mean = rows.sum(dim=0, dtype=torch.float64) / n
            centred[name] = rows - batch_mean.float()
            shift[name] = batch_mean - self.mean[name]
            self.m2[name] += centred[name].square().sum(dim=0, dtype=torch.float64) + shift[name].square() * weight
            self.mean[name] += shift[name] * (n / self.count)
        x = centred[self.reference]
        for b in self.others:
            y = centred[b]
            self.co[b] += (x.T @ y).double().add_(torch.outer(shift[self.reference], shift[b]), alpha=weight)
            width = self.width[b]
            for slot in range(len(self.layers_b)):
                part, moved = y[:, slot * width : (slot + 1) * width], shift[b][slot * width : (slot + 1) * width]
                self.within[b][slot] += (part.T @ part).double().add_(torch.outer(moved, moved), alpha=weight)

    @staticmethod
    def memory(width_a: int, n_layers_a: int, width_b: int, n_layers_b: int, n_others: int, rows: int) -> dict[str, int]:
        """Bytes one block holds: the float64 co-moments of every other model, those within its layers, one
        batch's rows of every model (and their centred copies), and one float32 product with its float64
        copy while it is added."""
        d_a, d_b = width_a * n_layers_a, width_b * n_layers_b
        return {
            "co-moments": n_others * d_a * d_b * 8,
            "within-layer co-moments": n_others * n_layers_b * width_b**2 * 8,
            "batch rows": 2 * rows * (d_a + n_others * d_b) * 4,
            "product": d_a * d_b * 12,
        }

    def state(self) -> State:
        names = (self.reference, *self.others)
        tensors = {mean_key(n): self.mean[n] for n in names} | {m2_key(n): self.m2[n] for n in names}
        tensors |= {co_key(b): self.co[b] for b in self.others} | {within_key(b): self.within[b] for b in self.others}
        header = {
            "count": np.asarray([self.count], dtype=np.int64),
            "layers_a": np.asarray(self.layers_a, dtype=np.int64),
            "layers_b": np.asarray(self.layers_b, dtype=np.int64),
            "models": np.asarray(names),
        }
        return header | dict(zip(tensors, host_arrays(*tensors.values())))

    @staticmethod
    def merge(states: Sequence[State]) -> State:
        """Shards of the same block combined exactly (Chan et al.'s pairwise rule, in float64)."""
        merged = dict(states[0])
        for state in states[1:]:
            for key in ("layers_a", "layers_b", "models"):
                if not np.array_equal(state[key], merged[key]):
                    raise ValueError(f"correlation shards of different blocks cannot merge ({key} differ)")
            merged = _combined(merged, state)
        return merged


def _combined(first: State, second: State) -> State:
    n1, n2 = int(first["count"][0]), int(second["count"][0])
    if n2 == 0:
        return first
    if n1 == 0:
        return second
    total = n1 + n2
    weight = n1 * n2 / total
    names = [str(name) for name in first["models"]]
    shift = {name: second[mean_key(name)] - first[mean_key(name)] for name in names}
    out: dict[str, Any] = {key: first[key] for key in ("layers_a", "layers_b", "models")}
    out["count"] = np.asarray([total], dtype=np.int64)
    for name in names:
        out[mean_key(name)] = first[mean_key(name)] + shift[name] * (n2 / total)
        out[m2_key(name)] = first[m2_key(name)] + second[m2_key(name)] + shift[name] ** 2 * weight
    reference = names[0]
    n_layers_b = len(first["layers_b"])
    for b in names[1:]:
        out[co_key(b)] = first[co_key(b)] + second[co_key(b)] + np.outer(shift[reference], shift[b]) * weight
        moved = shift[b].reshape(n_layers_b, -1)
        out[within_key(b)] = first[within_key(b)] + second[within_key(b)] + moved[:, :, None] * moved[:, None, :] * weight
    return out


def pearson(state: State, other: str) -> np.ndarray:
    """[La*d, Lb*d] correlations of the reference's neurons with `other`'s; 0 where either neuron is
    constant (dead) over the counted tokens."""
    reference = str(state["models"][0])
    spread = np.sqrt(np.outer(state[m2_key(reference)], state[m2_key(other)]))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(spread > 0, state[co_key(other)] / spread, 0.0)
    return np.clip(r, -1.0, 1.0)
