"""Count, sum, centred sum of squares, minimum and maximum of every neuron's activation."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from neuron_census.accumulators.base import Accumulator, Geometry, LayerBatch, Memory, State, host_paths
from neuron_census.capture.host_copies import host_arrays


class Moments(Accumulator):
    """Each batch's mean and m2 (the sum of squared deviations from its mean) come from one `var_mean`
    reduction on a GPU (float32 results), and on a CPU from deviations a block of rows at a time, summed in
    float64, or from the firings alone where every other activation is 0 (a ReLU); batches and shards then
    combine in float64 by Chan et al.'s pairwise rule. The spread is never E[x^2] - E[x]^2, which cancels to
    rounding noise when the spread is small next to the mean; a constant neuron's m2 is exactly 0. A dozen
    device ops per (layer, batch) on a GPU, none of which waits for it, and no float64 copy of a batch."""

    name: ClassVar[str] = "moments"
    layer_keys: ClassVar[tuple[str, ...]] = ("count", "sum", "m2", "min", "max")

    def __init__(self, geometry: Geometry, device: torch.device) -> None:
        self.geometry = geometry
        n = geometry.n_neurons
        slots = range(len(geometry.layers))
        self.count = [0 for _ in slots]  # counted tokens, on the host
        self.mean = [torch.zeros(n, dtype=torch.float64, device=device) for _ in slots]
        self.m2 = [torch.zeros(n, dtype=torch.float64, device=device) for _ in slots]
        self.minimum = [torch.full((n,), torch.inf, dtype=torch.float32, device=device) for _ in slots]
        self.maximum = [torch.full((n,), -torch.inf, dtype=torch.float32, device=device) for _ in slots]

    def update(self, batch: LayerBatch) -> None:
        slot = self.geometry.slot(batch.layer)
        if batch.counted_from is not None:  # a view past the BOS: no copy, no wait for the device
            counted = batch.acts[:, batch.counted_from :]
        else:  # the masked positions (a copy whose size the host waits for)
            counted = batch.acts_2d()[batch.mask.reshape(-1)][None]
        n = counted.shape[0] * counted.shape[1]
        if n == 0:
            return
        if counted.dtype != torch.float32:  # a bfloat16 batch's values are exact in float32
            counted = counted.float()
        if host_paths(counted.device):  # one reduction over two dimensions is 20x slower on a CPU
            low, high = counted.amin(dim=1).amin(dim=0), counted.amax(dim=1).amax(dim=0)
            # where no counted activation is below 0 (a ReLU) and the firings are the positive ones, every
            # activation that did not fire is 0: the firings alone give mean and m2
            sparse = batch.fires_from_acts and batch.counted_from is not None and bool((low >= 0).all())
            (mean, m2), scale = (_mean_and_m2_of_firings(batch, n) if sparse else _mean_and_m2_by_rows(counted)), 1
        else:  # m2 = variance * n, scaled in the add below
            (m2, mean), scale = torch.var_mean(counted, dim=(0, 1), correction=0), n
            low, high = counted.amin(dim=(0, 1)), counted.amax(dim=(0, 1))
        kept = self.count[slot]
        # Chan et al.: m2 of the union = m2_a + m2_b + (mean_b - mean_a)^2 n_a n_b / (n_a + n_b), in float64
        shift = torch.sub(mean, self.mean[slot])
        self.mean[slot].add_(shift, alpha=n / (kept + n))
        self.m2[slot].add_(m2, alpha=scale).addcmul_(shift, shift, value=kept * n / (kept + n))
        self.count[slot] = kept + n
        torch.minimum(self.minimum[slot], low, out=self.minimum[slot])
        torch.maximum(self.maximum[slot], high, out=self.maximum[slot])

    def _arrays(self, slots: list[int]) -> State:
        count = np.asarray([self.count[s] for s in slots], dtype=np.int64)
        arrays = (self.mean, self.m2, self.minimum, self.maximum)
        mean, m2, low, high = host_arrays(*(torch.stack([array[s] for s in slots]) for array in arrays))
        return {"count": count, "sum": mean * count[:, None], "m2": m2, "min": low, "max": high}

    def take_layer(self, layer: int) -> State:
        return self._arrays([self.geometry.slot(layer)])

    def state(self) -> State:
        return self._arrays(list(range(len(self.geometry.layers))))

    @staticmethod
    def merge(states: list[State]) -> State:
        count, total, m2 = states[0]["count"], states[0]["sum"], states[0]["m2"]
        for state in states[1:]:
            n_a, n_b = count[:, None].astype(np.float64), state["count"][:, None].astype(np.float64)
            both = np.maximum(n_a + n_b, 1.0)
            shift = np.divide(state["sum"], np.maximum(n_b, 1.0)) - np.divide(total, np.maximum(n_a, 1.0))
            m2 = m2 + state["m2"] + shift**2 * (n_a * n_b / both)
            count, total = count + state["count"], total + state["sum"]
        return {
            "count": count,
            "sum": total,
            "m2": m2,
            "min": np.min([s["min"] for s in states], axis=0),
            "max": np.max([s["max"] for s in states], axis=0),
        }

    @classmethod
    def memory(cls, settings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        cells = len(geometry.layers) * geometry.n_neurons
        per_seq = settings.batch_size * geometry.n_neurons * (4 + 4 + 8 + 8)  # one batch's means and variances
        return Memory(device=cells * (8 + 8 + 4 + 4) + per_seq, host=cells * (8 + 8 + 4 + 4))


ROWS = 512  # rows of a batch whose deviations from the mean are squared at a time on a CPU


def _mean_and_m2_of_firings(batch: LayerBatch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and sum of squared deviations over `n` counted activations that are 0 except at the
    batch's firings: deviations of the firings from the mean, and n - firings zeros' (-mean)**2."""
    _, neurons = batch.firing_pairs()
    values = batch.firing_values().double()
    n_neurons = batch.acts.shape[-1]
    mean = torch.zeros(n_neurons, dtype=torch.float64).index_add_(0, neurons, values).div_(n)
    deviation = values.sub_(mean.index_select(0, neurons))
    m2 = torch.zeros_like(mean).index_add_(0, neurons, deviation.square_())
    zeros = n - torch.bincount(neurons, minlength=n_neurons)
    return mean, m2.addcmul_(mean.square(), zeros)


def _mean_and_m2_by_rows(counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and sum of squared deviations over the first two dimensions of [S, P, N] float32, by
    deviations from a float32 sum's mean a block of rows at a time (held in cache): the sum of the deviations
    corrects the mean and m2 for that mean's rounding. 4x faster on a CPU than `var_mean`, whose one-pass
    update costs more than the reads."""
    n = counted.shape[0] * counted.shape[1]
    centre = counted.sum(dim=1).sum(dim=0).div_(n)
    offset = torch.zeros(centre.shape, dtype=torch.float64)
    m2 = torch.zeros_like(offset)
    for sequence in counted:
        for rows in sequence.split(ROWS):
            deviation = rows - centre
            offset += deviation.sum(dim=0)
            m2 += deviation.square_().sum(dim=0)
    return offset.div(n).add_(centre), m2.sub_(offset.square_().div_(n))
