"""Per binary feature of the token and its context, the count, sum and sum of squares of every neuron's
activation where the feature holds (neuron families by variance reduction, Gurnee et al. 2024, Sec. 4.2):
all that the variance within and outside each feature needs, so families are exact and streaming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuron_census.accumulators.base import State, kept_rows, paired
from neuron_census.capture.host_copies import host_arrays

if TYPE_CHECKING:
    from neuron_census.analyses.features import FeatureMatrices
    from neuron_census.capture.sources import PairedActivations

SUMS = ("sum", "square", "total_sum", "total_square")


@paired
class FeatureMoments:
    """Fed by `capture_paired`. Each batch's kept rows (not BOS, not a dropped token) get their features as
    a [rows, F] 0/1 matrix (current token, previous token, position, context: `FeatureMatrices`; the context
    columns of the shard's tokens, `contexts` [sequences, seq_len], are read by the batch's sequence ids),
    built once per batch; each layer then adds two float32 products X^T d and X^T d^2 ([F, N]) in float64, with d the
    activation minus a per-neuron shift (the layer's first batch mean), which keeps the sums of squares
    from cancelling for a neuron whose spread is small next to its mean. Shards merge by moving their sums
    to one shift (`merge`)."""

    name = "feature_moments"

    def __init__(
        self,
        model: str,
        layers: Sequence[int],
        n_neurons: int,
        features: FeatureMatrices,
        device: torch.device,
        *,
        dropped_tokens: Sequence[int] = (),
        preactivation: bool = False,
        contexts: np.ndarray | None = None,
    ) -> None:
        self.model, self.layers, self.preactivation = model, tuple(sorted(layers)), preactivation
        self.dropped = torch.as_tensor(list(dropped_tokens), dtype=torch.int64, device=device)
        as_tensor = lambda array: torch.as_tensor(array, dtype=torch.float32, device=device)  # noqa: E731
        self.current = as_tensor(features.current)
        self.previous = as_tensor(np.vstack([features.previous, np.zeros((1, features.previous.shape[1]), np.float32)]))
        self.position = as_tensor(features.position)
        n_contexts = len(features.sources)
        self.context = as_tensor(np.eye(n_contexts + 1, n_contexts, dtype=np.float32))  # row n_contexts: no context
        self.contexts = None if contexts is None else torch.as_tensor(np.where(contexts >= 0, contexts, n_contexts), dtype=torch.int64, device=device)
        n_layers, width = len(self.layers), features.width
        self.count = np.zeros(1, dtype=np.int64)
        self.feature_count = torch.zeros(width, dtype=torch.float64, device=device)
        self.shift = torch.zeros(n_layers, n_neurons, dtype=torch.float32, device=device)
        per_feature, total = (n_layers, width, n_neurons), (n_layers, n_neurons)
        shapes = {"sum": per_feature, "square": per_feature, "total_sum": total, "total_square": total}
        self.sums = {key: torch.zeros(shape, dtype=torch.float64, device=device) for key, shape in shapes.items()}
        self._batch: int | None = None
        self._rows: torch.Tensor | None = None
        self._features: torch.Tensor | None = None
        self._shifted: set[int] = set()

    def _start_batch(self, item: PairedActivations) -> None:
        tokens, mask = item.batch.tokens, item.batch.mask
        self._rows = kept_rows(tokens, mask, self.dropped)
        length = tokens.shape[1]
        previous = torch.cat([torch.full_like(tokens[:, :1], len(self.previous) - 1), tokens[:, :-1]], dim=1).reshape(-1)
        positions = self._rows % length
        if self.contexts is None:  # unlabelled tokens: no context feature holds
            context = self.context[-1].expand(len(self._rows), -1)
        else:
            context = self.context[self.contexts.index_select(0, item.batch.seq_ids).reshape(-1)[self._rows]]
        self._features = torch.cat(
            [self.current[tokens.reshape(-1)[self._rows]], self.previous[previous[self._rows]], self.position[positions], context], dim=1
        )
        self.feature_count += self._features.sum(dim=0, dtype=torch.float64)
        self.count[0] += len(self._rows)

    def update(self, item: PairedActivations) -> None:
        if item.layer not in self.layers:
            return
        if item.batch.index != self._batch:
            self._batch = item.batch.index
            self._start_batch(item)
        assert self._rows is not None and self._features is not None
        source = (item.preacts if self.preactivation else item.acts)[self.model]
        if source is None:
            raise ValueError(f"model '{self.model}' gave no pre-activations of layer {item.layer}")
        if len(self._rows) == 0:
            return
        slot = self.layers.index(item.layer)
        acts = source.reshape(-1, source.shape[-1]).index_select(0, self._rows).float()
        if slot not in self._shifted:  # the layer's first rows: a shift near the mean
            self.shift[slot] = acts.mean(dim=0)
            self._shifted.add(slot)
        deviation = acts - self.shift[slot]
        square = deviation.square()
        self.sums["sum"][slot] += (self._features.T @ deviation).double()
        self.sums["square"][slot] += (self._features.T @ square).double()
        self.sums["total_sum"][slot] += deviation.sum(dim=0, dtype=torch.float64)
        self.sums["total_square"][slot] += square.sum(dim=0, dtype=torch.float64)

    def state(self) -> State:
        arrays = host_arrays(self.feature_count, self.shift, *(self.sums[key] for key in SUMS))
        return {
            "count": self.count.copy(),
            "layers": np.asarray(self.layers, dtype=np.int64),
            "feature_count": arrays[0],
            "shift": arrays[1].astype(np.float64),
        } | dict(zip(SUMS, arrays[2:]))

    @staticmethod
    def merge(states: Sequence[State]) -> State:
        """Shards of the same layers and features: sums moved to the first shard's shift, then added."""
        merged = {key: np.array(value, copy=True) for key, value in states[0].items()}
        for state in states[1:]:
            if not np.array_equal(state["layers"], merged["layers"]) or state["feature_count"].shape != merged["feature_count"].shape:
                raise ValueError("feature moments of different layers or features cannot merge")
            moved = shifted(state, merged["shift"])
            for key in ("count", "feature_count", *SUMS):
                merged[key] = merged[key] + moved[key]
        return merged


def shifted(state: State, shift: np.ndarray) -> State:
    """`state`'s sums of (a - its shift) rewritten as sums of (a - `shift`): with delta = old - new shift,
    sum(a - new) = sum(a - old) + n delta and sum((a - new)^2) = sum((a - old)^2) + 2 delta sum(a - old) + n delta^2."""
    delta = state["shift"] - shift  # [L, N]
    n_f = state["feature_count"][None, :, None]
    n = float(state["count"][0])
    return state | {
        "shift": shift,
        "sum": state["sum"] + n_f * delta[:, None, :],
        "square": state["square"] + 2 * delta[:, None, :] * state["sum"] + n_f * delta[:, None, :] ** 2,
        "total_sum": state["total_sum"] + n * delta,
        "total_square": state["total_square"] + 2 * delta * state["total_sum"] + n * delta**2,
    }


def variance_reduction(state: State) -> np.ndarray:
    """[L, F, N]: 1 - [m2(a | F) + m2(a | not F)] / m2(a), the share of each neuron's activation variance
    that knowing the feature explains (p_F Var(a|F) = m2(a|F) / n). 0 where the feature holds on every
    counted token or none, or where the neuron is constant."""
    n = float(state["count"][0])
    n_f = state["feature_count"][None, :, None]
    n_not = n - n_f
    s1, s2 = state["sum"], state["square"]
    t1, t2 = state["total_sum"][:, None, :], state["total_square"][:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(n_f > 0, s2 - s1**2 / n_f, 0.0)
        outside = np.where(n_not > 0, (t2 - s2) - (t1 - s1) ** 2 / n_not, 0.0)
        total = t2 - t1**2 / max(n, 1.0)
        reduction = 1.0 - (within + outside) / total
    split = (n_f > 0) & (n_not > 0)
    return np.where(split & (total > 0), np.clip(reduction, 0.0, 1.0), 0.0)
