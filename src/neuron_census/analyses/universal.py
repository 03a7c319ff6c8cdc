"""Universal neurons (Gurnee et al. 2024): each neuron's best-correlated neuron in every other model, against
the same maximum after a random rotation of that model's neuron basis."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from neuron_census.accumulators.correlation import State, co_key, m2_key, pearson, within_key
from neuron_census.accumulators.preactivation_moments import property_columns
from neuron_census.config import schema_defaults

_STUDY = schema_defaults("$defs/universal_study")


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix: QR of a Gaussian one, columns signed by R's diagonal (Mezzadri
    2007), one LAPACK call where `scipy.stats.ortho_group` loops in Python over the dimension."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def rotation_of(seed: int, model_index: int, layer: int, dim: int) -> np.ndarray:
    """The rotation of one layer of one other model: the same in every block that covers it."""
    return random_rotation(dim, np.random.default_rng([seed, model_index, layer]))


def _rotated_pearson(state: State, other: str, slot: int, rotation: np.ndarray) -> np.ndarray:
    """Correlations of the reference's neurons with the rotated neurons y R of `other`'s layer `slot`,
    from the co-moments alone: cov(x, yR) = C R, var(yR) = diag(R^T W R)."""
    reference = str(state["models"][0])
    width = rotation.shape[0]
    co = state[co_key(other)][:, slot * width : (slot + 1) * width] @ rotation
    spread_b = np.einsum("ij,ij->j", state[within_key(other)][slot] @ rotation, rotation)
    spread = np.sqrt(np.outer(state[m2_key(reference)], np.maximum(spread_b, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.where(spread > 0, co / spread, 0.0), -1.0, 1.0)


def best_matches(states: Iterable[State], *, seed: int = _STUDY["rotation_seed"]) -> pl.DataFrame:
    """One row per (reference neuron, other model): its largest correlation over every neuron of the other
    model, the (layer, neuron) attaining it (the lowest on ties), and the same largest correlation with the
    other model's neurons rotated by a random orthogonal matrix per layer (`baseline`). `states` are the
    merged blocks of layer pairs, in any order and read one at a time (a block of GPT-2 medium holds tens of
    GB); together they must pair each reference layer with the same other layers, each once."""
    groups: dict[tuple[int, ...], _Matches] = {}
    for state in states:
        layers_a = tuple(int(x) for x in state["layers_a"])
        groups.setdefault(layers_a, _Matches(state, layers_a)).add(state, seed)
    covered = None
    for layers_a, group in sorted(groups.items()):
        if covered is not None and sorted(group.layers_b) != covered:
            raise ValueError(f"reference layers {list(layers_a)} are paired with layers {sorted(group.layers_b)}, others with {covered}")
        covered = sorted(group.layers_b)
    return pl.concat([group.frame() for _, group in sorted(groups.items())])


class _Matches:
    """Running maxima of one group of reference layers over the blocks that pair it with other layers."""

    def __init__(self, first: State, layers_a: tuple[int, ...]) -> None:
        names = [str(name) for name in first["models"]]
        self.others = names[1:]
        self.layers_a = layers_a
        self.width_a = len(first[m2_key(names[0])]) // len(layers_a)
        n = self.width_a * len(layers_a)
        self.best = {other: np.full(n, -np.inf) for other in self.others}
        self.at = {other: np.zeros(n, dtype=np.int64) for other in self.others}  # layer * width_b + neuron
        self.baseline = {other: np.full(n, -np.inf) for other in self.others}
        self.layers_b: list[int] = []
        self.width_b = 1

    def add(self, block: State, seed: int) -> None:
        layers_b = [int(layer) for layer in block["layers_b"]]
        if set(layers_b) & set(self.layers_b):
            raise ValueError(f"correlation blocks pair reference layers {list(self.layers_a)} with a layer twice")
        self.layers_b += layers_b
        for index, other in enumerate(self.others):
            r = pearson(block, other)
            self.width_b = r.shape[1] // len(layers_b)
            where = r.argmax(axis=1)  # the first (lowest neuron) of the block's maxima
            value = r[np.arange(len(r)), where]
            at = np.asarray(layers_b)[where // self.width_b] * self.width_b + where % self.width_b
            best, kept = self.best[other], self.at[other]
            better = (value > best) | ((value == best) & (at < kept))
            best[better], kept[better] = value[better], at[better]
            for slot, layer in enumerate(layers_b):
                rotated = _rotated_pearson(block, other, slot, rotation_of(seed, index, layer, self.width_b))
                np.maximum(self.baseline[other], rotated.max(axis=1), out=self.baseline[other])

    def frame(self) -> pl.DataFrame:
        n = self.width_a * len(self.layers_a)
        return pl.concat(
            pl.DataFrame(
                {
                    "layer": np.repeat(np.asarray(self.layers_a, dtype=np.int64), self.width_a),
                    "neuron": np.tile(np.arange(self.width_a, dtype=np.int64), len(self.layers_a)),
                    "other": [other] * n,
                    "max_corr": self.best[other],
                    "match_layer": self.at[other] // self.width_b,
                    "match_neuron": self.at[other] % self.width_b,
                    "baseline": self.baseline[other],
                }
            )
            for other in self.others
        )


def universality(matches: pl.DataFrame, *, threshold: float = _STUDY["threshold"]) -> pl.DataFrame:
    """Per reference neuron: mean over the other models of the largest correlation and of the baseline,
    `excess` = their difference, and `universal` when the excess is above `threshold`."""
    return (
        matches.group_by("layer", "neuron")
        .agg(pl.col("max_corr").mean().alias("max_corr"), pl.col("baseline").mean().alias("baseline_corr"))
        .with_columns((pl.col("max_corr") - pl.col("baseline_corr")).alias("excess_corr"))
        .with_columns((pl.col("excess_corr") > threshold).alias("universal"))
        .sort("layer", "neuron")
    )


def activation_properties(moments: Iterable[State]) -> pl.DataFrame:
    """Per reference neuron, over the tokens its correlations count: activation frequency and moments of the
    pre-activation (`accumulators.preactivation_moments.property_columns`), from the blocks' layer groups."""
    frames = []
    for state in moments:
        layers = np.asarray(state["layers"], dtype=np.int64)
        width = state["mean"].shape[1]
        frames.append(
            pl.DataFrame(
                {"layer": np.repeat(layers, width), "neuron": np.tile(np.arange(width, dtype=np.int64), len(layers))}
                | property_columns(state)
            )
        )
    if not frames:
        raise ValueError("no correlation block holds the reference's pre-activation moments (blocks 'i-0')")
    return pl.concat(frames).unique(["layer", "neuron"], keep="first").sort("layer", "neuron")
