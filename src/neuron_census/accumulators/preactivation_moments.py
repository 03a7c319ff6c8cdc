"""Activation frequency and the first four moments of every neuron's pre-activation over the tokens of a
paired capture (neuron properties, Gurnee et al. 2024, Sec. 4.1): the same tokens its correlations count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neuron_census.accumulators.base import State, kept_rows, paired
from neuron_census.capture.host_copies import host_arrays

if TYPE_CHECKING:
    from neuron_census.capture.sources import PairedActivations

CENTRAL = ("m2", "m3", "m4")  # sums of the 2nd, 3rd and 4th powers of the deviations from the mean


@paired
class PreactivationMoments:
    """Fed by `capture_paired` (with `read_preactivation`). Each (layer, batch)'s kept rows give the batch's
    central moment sums in float64, combined with the running ones by Pébay's (2008) pairwise formulas, as
    shards are (`merge`): no raw power sums, which cancel to noise for a neuron whose spread is small next
    to its mean. Also counts where the pre-activation is positive (the activation frequency)."""

    name = "preactivation_moments"

    def __init__(self, model: str, layers: Sequence[int], n_neurons: int, device: torch.device, *, dropped_tokens: Sequence[int] = ()) -> None:
        self.model, self.layers = model, tuple(sorted(layers))
        self.dropped = torch.as_tensor(list(dropped_tokens), dtype=torch.int64, device=device)
        shape = (len(self.layers), n_neurons)
        self.count = np.zeros(len(self.layers), dtype=np.int64)
        self.sums = {key: torch.zeros(shape, dtype=torch.float64, device=device) for key in ("mean", *CENTRAL)}
        self.positive = torch.zeros(shape, dtype=torch.int64, device=device)
        self._batch: int | None = None
        self._rows: torch.Tensor | None = None

    def update(self, item: PairedActivations) -> None:
        if item.layer not in self.layers:
            return
        if item.batch.index != self._batch:
            self._batch = item.batch.index
            self._rows = kept_rows(item.batch.tokens, item.batch.mask, self.dropped)
        assert self._rows is not None
        preacts = item.preacts[self.model]
        if preacts is None:
            raise ValueError(f"model '{self.model}' gave no pre-activations of layer {item.layer}")
        n = len(self._rows)
        if n == 0:
            return
        x = preacts.reshape(-1, preacts.shape[-1]).index_select(0, self._rows).double()
        slot = self.layers.index(item.layer)
        self.positive[slot] += (x > 0).sum(dim=0)
        mean = x.mean(dim=0)
        deviation = x.sub_(mean)
        square = deviation.square()
        batch = {"mean": mean, "m2": square.sum(dim=0), "m3": (square * deviation).sum(dim=0), "m4": square.square_().sum(dim=0)}
        running = {key: value[slot] for key, value in self.sums.items()}
        for key, value in combine(running, int(self.count[slot]), batch, n).items():
            self.sums[key][slot] = value
        self.count[slot] += n

    def state(self) -> State:
        keys = ("mean", *CENTRAL)
        arrays = host_arrays(*(self.sums[key] for key in keys), self.positive)
        return {"count": self.count.copy(), "layers": np.asarray(self.layers, dtype=np.int64), "positive": arrays[-1]} | dict(zip(keys, arrays))

    @staticmethod
    def merge(states: Sequence[State]) -> State:
        """Shards of the same layers combined exactly (Pébay's pairwise formulas, in float64)."""
        merged = dict(states[0])
        for state in states[1:]:
            if not np.array_equal(state["layers"], merged["layers"]):
                raise ValueError("pre-activation moments of different layers cannot merge")
            n_a, n_b = merged["count"][:, None].astype(np.float64), state["count"][:, None].astype(np.float64)
            merged |= combine(merged, n_a, state, n_b)
            merged["count"] = merged["count"] + state["count"]
            merged["positive"] = merged["positive"] + state["positive"]
        return merged


def combine(a: dict[str, Any], n_a: Any, b: dict[str, Any], n_b: Any) -> dict[str, Any]:
    """Mean and central moment sums of the union of two sets of n_a and n_b values (Pébay 2008, eqs. 2.1,
    3.1, 3.2 with the 4th-order term of Terriberry); element-wise, for numpy arrays or tensors alike. A set
    with no values leaves the other unchanged."""
    n = n_a + n_b
    n_safe = n + (n == 0)  # 0/0 -> 0 where both sets are empty
    delta = b["mean"] - a["mean"]
    share = delta * n_b / n_safe  # the mean's move
    m2 = a["m2"] + b["m2"] + delta * share * n_a
    m3 = (
        a["m3"] + b["m3"]
        + delta**3 * n_a * n_b * (n_a - n_b) / n_safe**2
        + 3 * delta * (n_a * b["m2"] - n_b * a["m2"]) / n_safe
    )
    m4 = (
        a["m4"] + b["m4"]
        + delta**4 * n_a * n_b * (n_a**2 - n_a * n_b + n_b**2) / n_safe**3
        + 6 * delta**2 * (n_a**2 * b["m2"] + n_b**2 * a["m2"]) / n_safe**2
        + 4 * delta * (n_a * b["m3"] - n_b * a["m3"]) / n_safe
    )
    return {"mean": a["mean"] + share, "m2": m2, "m3": m3, "m4": m4}


def property_columns(state: State) -> dict[str, np.ndarray]:
    """Per (layer, neuron), flattened layer-major: activation frequency (pre-activation > 0) and the mean,
    variance, skew and (non-excess, a Gaussian's is 3) kurtosis of the pre-activation; skew and kurtosis
    are NaN for a neuron whose pre-activation is constant."""
    n = np.maximum(state["count"][:, None], 1).astype(np.float64)
    m2 = state["m2"]
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(m2 > 0, np.sqrt(n) * state["m3"] / m2**1.5, np.nan)
        kurtosis = np.where(m2 > 0, n * state["m4"] / m2**2, np.nan)
    return {
        "act_freq": (state["positive"] / n).reshape(-1),
        "pre_mean": state["mean"].reshape(-1),
        "pre_var": (m2 / n).reshape(-1),
        "pre_skew": skew.reshape(-1),
        "pre_kurtosis": kurtosis.reshape(-1),
    }
