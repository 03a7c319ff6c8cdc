"""Universal neurons (Gurnee et al. 2024): each neuron's best-correlated neuron in every other model, against
the same maximum after a random rotation of that model's neuron basis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from neuron_census.accumulators.correlation import State, co_key, m2_key, pearson, within_key


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


def best_matches(states: Sequence[State], *, seed: int = 0) -> pl.DataFrame:
    """One row per (reference neuron, other model): its largest correlation over every neuron of the other
    model, the (layer, neuron) attaining it (the first on ties), and the same largest correlation with the
    other model's neurons rotated by a random orthogonal matrix per layer (`baseline`). `states` are the
    merged blocks of layer pairs; together they must pair each reference layer with the same other layers,
    each once."""
    groups: dict[tuple[int, ...], list[State]] = {}
    for state in states:
        groups.setdefault(tuple(int(x) for x in state["layers_a"]), []).append(state)
    covered = None
    frames = []
    for layers_a, blocks in sorted(groups.items()):
        blocks = sorted(blocks, key=lambda s: int(s["layers_b"][0]))
        layers_b = [int(layer) for block in blocks for layer in block["layers_b"]]
        if len(set(layers_b)) != len(layers_b):
            raise ValueError(f"correlation blocks pair reference layers {list(layers_a)} with a layer twice")
        if covered is not None and sorted(layers_b) != covered:
            raise ValueError(f"reference layers {list(layers_a)} are paired with layers {sorted(layers_b)}, others with {covered}")
        covered = sorted(layers_b)
        frames.append(_group_matches(blocks, layers_a, seed))
    return pl.concat(frames)


def _group_matches(blocks: list[State], layers_a: tuple[int, ...], seed: int) -> pl.DataFrame:
    names = [str(name) for name in blocks[0]["models"]]
    reference, others = names[0], names[1:]
    width_a = len(blocks[0][m2_key(reference)]) // len(layers_a)
    frames = []
    for index, other in enumerate(others):
        best = np.full(width_a * len(layers_a), -np.inf)
        at_layer = np.zeros(len(best), dtype=np.int64)
        at_neuron = np.zeros(len(best), dtype=np.int64)
        baseline = np.full(len(best), -np.inf)
        for block in blocks:
            r = pearson(block, other)
            width_b = r.shape[1] // len(block["layers_b"])
            where = r.argmax(axis=1)
            value = r[np.arange(len(r)), where]
            better = value > best
            best[better] = value[better]
            at_layer[better] = block["layers_b"][where[better] // width_b]
            at_neuron[better] = where[better] % width_b
            for slot, layer in enumerate(block["layers_b"]):
                rotated = _rotated_pearson(block, other, slot, rotation_of(seed, index, int(layer), width_b))
                baseline = np.maximum(baseline, rotated.max(axis=1))
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.repeat(np.asarray(layers_a, dtype=np.int64), width_a),
                    "neuron": np.tile(np.arange(width_a, dtype=np.int64), len(layers_a)),
                    "other": [other] * len(best),
                    "max_corr": best,
                    "match_layer": at_layer,
                    "match_neuron": at_neuron,
                    "baseline": baseline,
                }
            )
        )
    return pl.concat(frames)


def universality(matches: pl.DataFrame, *, threshold: float = 0.5) -> pl.DataFrame:
    """Per reference neuron: mean over the other models of the largest correlation and of the baseline,
    `excess` = their difference, and `universal` when the excess is above `threshold`."""
    return (
        matches.group_by("layer", "neuron")
        .agg(pl.col("max_corr").mean().alias("max_corr"), pl.col("baseline").mean().alias("baseline_corr"))
        .with_columns((pl.col("max_corr") - pl.col("baseline_corr")).alias("excess_corr"))
        .with_columns((pl.col("excess_corr") > threshold).alias("universal"))
        .sort("layer", "neuron")
    )
