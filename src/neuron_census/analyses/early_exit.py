"""Early exit from FFN sub-updates (Geva et al. 2022, Sec. 6): predict, while a prediction is computed, the
layer from which its top-1 token will no longer change (its saturation layer), so the remaining layers can
be skipped.

Inputs, for P predictions and L layers: `top_after` [P, L] the logit-lens top-1 after each layer's FFN (the
model's prediction is the last column), `saturation` [P] the first layer from which every top-1 is the
final one, `cluster_ids` [P, L, k] the concept clusters of each layer's k dominant sub-updates in score
order (place 0 the most dominant; ids are per layer), and the residual stream entering each FFN and the
FFN's output, `residual` and `ffn` [P, L, d].

The rule (the paper's method, its notebook `wikilm-earlyexit-ours.ipynb`). sim(a, b) for two ordered id
lists is the number of places j with a[j] == b[j]. A test prediction walks l = 0 .. L-2 and compares its
ids at layer l with the layer-l ids of the training predictions: S = those saturating at l, T_x = those
saturating at x, for each x > l. It exits at l when, for every non-empty T_x, both the max and the mean of
sim over S are strictly above those over T_x. A layer with no training prediction saturating at it cannot
be exited at (the paper's code fails there). No exit means the last layer (nothing saved).

Baselines (its notebook `wikilm-earlyexit-baselines.ipynb`): per layer l = 0 .. L-2 a logistic-regression
probe on that layer's residual stream, FFN output or both, labelled saturation == l, with C chosen by
stratified cross-validation and a threshold from a validation set (the smallest reaching a set precision);
a prediction exits at the first layer whose probe fires.

Splits: per split a seeded shuffle; the first `test_share` of the predictions are the test rows, the rule
trains on all others, the probes hold out `validation_share` of P for their thresholds and train on the
rest. Metrics per test set: accuracy (the exit layer's top-1 is the final prediction) and layers saved
(L-1 minus the exit layer). The oracle exits at the true saturation layer: accuracy 1, the most that can
be saved.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from neuron_census.config import default_field, schema_defaults

PROBE_FEATURES: tuple[str, ...] = ("residual", "ffn", "both")
METHODS: tuple[str, ...] = ("rule", *PROBE_FEATURES, "oracle")
C_GRID = np.logspace(-3, 3, 7)
_BLOCK_ELEMENTS = 1 << 24  # cap on the [rows, n_b, k] comparison array positional_matches builds at once

TABLE_SCHEMA = {
    "method": pl.Utf8, "split": pl.Int64, "accuracy": pl.Float64, "layers_saved": pl.Float64,
    "n_train": pl.Int64, "n_test": pl.Int64, "n_layers": pl.Int64,
}

_default = partial(default_field, schema_defaults("$defs/subupdate_study/early_exit"))


@dataclass(frozen=True)
class EarlyExitSettings:
    splits: int = _default("splits")  # seeded shuffles, each a test set of its own
    seed: int = _default("seed")
    test_share: float = _default("test_share")  # of P, the test rows of every method (at least 1)
    validation_share: float = _default("validation_share")  # of P, the probes' threshold rows (the rule trains on them)
    folds: int = _default("folds")  # stratified cross-validation folds for the probes' C
    precision: float = _default("precision")  # the validation precision a probe's threshold must reach
    top: int | None = _default("top")  # leading places of cluster_ids the rule compares (cluster_ids[..., :top]); None: all
    max_iter: int = _default("max_iter")  # logistic-regression solver iterations (the paper's: sklearn's default)

    def __post_init__(self) -> None:
        if self.splits < 1:
            raise ValueError(f"early exit needs at least 1 split, got {self.splits}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"early-exit test_share must be in (0, 1), got {self.test_share}")
        if not 0 < self.validation_share < 1:
            raise ValueError(f"early-exit validation_share must be in (0, 1), got {self.validation_share}")
        if self.test_share + self.validation_share >= 1:
            raise ValueError(f"early-exit test_share + validation_share must be below 1, got {self.test_share} + {self.validation_share}")
        if self.folds < 2:
            raise ValueError(f"early-exit folds must be at least 2, got {self.folds}")
        if not 0 < self.precision <= 1:
            raise ValueError(f"early-exit precision must be in (0, 1], got {self.precision}")
        if self.top is not None and self.top < 1:
            raise ValueError(f"early-exit top must be at least 1, got {self.top}")
        if self.max_iter < 1:
            raise ValueError(f"early-exit max_iter must be at least 1, got {self.max_iter}")


def positional_matches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_a, n_b]: for each pair of rows of a [n_a, k] and b [n_b, k], the places where they hold the same
    id (the rule's similarity: order matters, shared ids at different places do not count). Built in
    blocks of a's rows so the broadcast comparison stays small."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"positional_matches needs [n_a, k] and [n_b, k] arrays, got {a.shape} and {b.shape}")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    rows = max(1, _BLOCK_ELEMENTS // max(1, b.shape[0] * a.shape[1]))
    for start in range(0, a.shape[0], rows):
        block = a[start : start + rows]
        out[start : start + len(block)] = (block[:, None, :] == b[None, :, :]).sum(axis=2, dtype=np.int32)
    return out


def rule_exit_layers(train_ids: np.ndarray, train_saturation: np.ndarray, test_ids: np.ndarray) -> np.ndarray:
    """[n_test]: the rule's exit layer for each test prediction (module docstring), from the ids
    [n, L, k] of the training and test predictions and the training saturation layers [n_train]. Means are
    compared as exact fractions (sum_S * |T| > sum_T * |S|), so ties are ties."""
    train_ids, test_ids = np.asarray(train_ids), np.asarray(test_ids)
    train_saturation = np.asarray(train_saturation)
    if train_ids.ndim != 3 or test_ids.ndim != 3 or train_ids.shape[1:] != test_ids.shape[1:]:
        raise ValueError(f"rule_exit_layers needs [n, L, k] ids of one shape, got {train_ids.shape} and {test_ids.shape}")
    if train_saturation.shape != (len(train_ids),):
        raise ValueError(f"rule_exit_layers needs one saturation layer per training row, got {train_saturation.shape} for {len(train_ids)} rows")
    n_layers = train_ids.shape[1]
    if len(train_saturation) and (train_saturation.min() < 0 or train_saturation.max() > n_layers - 1):
        raise ValueError(f"saturation layers must lie in 0..{n_layers - 1}, got {train_saturation.min()}..{train_saturation.max()}")
    order = np.argsort(train_saturation, kind="stable")  # training rows grouped by saturation layer
    ids, saturation = train_ids[order], train_saturation[order]
    bounds = np.searchsorted(saturation, np.arange(n_layers + 1))  # group x is ids[bounds[x]:bounds[x + 1]]
    exits = np.full(len(test_ids), n_layers - 1, dtype=np.int64)
    open_rows = np.arange(len(test_ids))
    for layer in range(n_layers - 1):
        own = slice(bounds[layer], bounds[layer + 1])
        if own.start == own.stop or len(open_rows) == 0:
            continue
        sims = positional_matches(test_ids[open_rows, layer], ids[:, layer]).astype(np.int64)
        own_max, own_sum, own_n = sims[:, own].max(axis=1), sims[:, own].sum(axis=1), own.stop - own.start
        passes = np.ones(len(open_rows), dtype=bool)
        for later in range(layer + 1, n_layers):
            other = slice(bounds[later], bounds[later + 1])
            if other.start == other.stop:
                continue
            other_n = other.stop - other.start
            passes &= own_max > sims[:, other].max(axis=1)
            passes &= own_sum * other_n > sims[:, other].sum(axis=1) * own_n
        exits[open_rows[passes]] = layer
        open_rows = open_rows[~passes]
    return exits


def _probe_fires(train_x: np.ndarray, train_y: np.ndarray, validation_x: np.ndarray, validation_y: np.ndarray,
                 test_x: np.ndarray, settings: EarlyExitSettings) -> np.ndarray:
    """[n_test] bool: one layer's probe on the test rows. Validation and test rows are scaled with the
    training scaler (the paper's notebook refits a scaler on the validation rows, a bug: the classifier
    then scores features on another scale than the one it was fitted on)."""
    positives = int(train_y.sum())
    negatives = len(train_y) - positives
    if positives < 2:  # no (or a single) positive training example: nothing to learn from, never fires
        return np.zeros(len(test_x), dtype=bool)
    if negatives < 2:  # no (or a single) negative training example: every training row exits here, always fires
        return np.ones(len(test_x), dtype=bool)
    if not validation_y.any():  # precision is undefined at every threshold: no threshold reaches the bar
        return np.zeros(len(test_x), dtype=bool)
    folds = min(settings.folds, positives, negatives)  # every fold needs a member of the rarer class
    scaler = StandardScaler().fit(train_x)
    with warnings.catch_warnings():  # large C on a separable layer stops at max_iter, as in the paper's fits
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(  # C chosen by stratified cross-validation, refitted on every training row
            LogisticRegression(l1_ratio=0.0, class_weight="balanced", max_iter=settings.max_iter, random_state=settings.seed),
            {"C": C_GRID}, cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=settings.seed),
        ).fit(scaler.transform(train_x), train_y)
    scores = search.predict_proba(scaler.transform(validation_x))[:, 1]
    precision, _recall, thresholds = precision_recall_curve(validation_y, scores)
    reached = np.flatnonzero(precision[: len(thresholds)] >= settings.precision)
    if len(reached) == 0:  # the validation precision never reaches the bar: never fires
        return np.zeros(len(test_x), dtype=bool)
    return search.predict_proba(scaler.transform(test_x))[:, 1] >= thresholds[reached[0]]


def probe_exit_layers(train_x: np.ndarray, train_saturation: np.ndarray, validation_x: np.ndarray,
                      validation_saturation: np.ndarray, test_x: np.ndarray, settings: EarlyExitSettings) -> np.ndarray:
    """[n_test]: exit layers from per-layer probes on features x [n, L, f]: the probe of layer l (labelled
    saturation == l) gets the smallest validation threshold whose precision reaches `settings.precision`;
    a test row exits at the first layer whose probability is at or above its threshold, else at L-1."""
    train_x, validation_x, test_x = np.asarray(train_x), np.asarray(validation_x), np.asarray(test_x)
    if train_x.ndim != 3 or validation_x.shape[1:] != train_x.shape[1:] or test_x.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"probe_exit_layers needs [n, L, f] features of one shape, got {train_x.shape}, {validation_x.shape}, {test_x.shape}")
    train_saturation, validation_saturation = np.asarray(train_saturation), np.asarray(validation_saturation)
    if train_saturation.shape != (len(train_x),) or validation_saturation.shape != (len(validation_x),):
        raise ValueError("probe_exit_layers needs one saturation layer per training and validation row")
    n_layers = train_x.shape[1]
    exits = np.full(len(test_x), n_layers - 1, dtype=np.int64)
    open_rows = np.ones(len(test_x), dtype=bool)
    for layer in range(n_layers - 1):
        fires = _probe_fires(train_x[:, layer], train_saturation == layer, validation_x[:, layer], validation_saturation == layer, test_x[:, layer], settings)
        exits[open_rows & fires] = layer
        open_rows &= ~fires
    return exits


def exit_metrics(exit_layers: np.ndarray, top_after: np.ndarray) -> tuple[float, float]:
    """(accuracy, layers_saved) of exits [n] for predictions with top_after [n, L]: the share whose top-1 at
    the exit layer is the final prediction, and the mean of L-1 minus the exit layer."""
    exit_layers, top_after = np.asarray(exit_layers), np.asarray(top_after)
    if top_after.ndim != 2 or exit_layers.shape != (len(top_after),) or len(top_after) == 0:
        raise ValueError(f"exit_metrics needs exits [n] and top_after [n, L] with n >= 1, got {exit_layers.shape} and {top_after.shape}")
    n_layers = top_after.shape[1]
    if exit_layers.min() < 0 or exit_layers.max() > n_layers - 1:
        raise ValueError(f"exit layers must lie in 0..{n_layers - 1}, got {exit_layers.min()}..{exit_layers.max()}")
    exited = top_after[np.arange(len(top_after)), exit_layers]
    return float(np.mean(exited == top_after[:, -1])), float(np.mean(n_layers - 1 - exit_layers))


def split_indices(n_predictions: int, settings: EarlyExitSettings, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(test, validation, train) row indices of one split: a shuffle seeded with [seed, split], cut in that
    order (shares rounded, at least 1 test row; a ValueError when a part would be empty). The rule trains on
    validation and train together."""
    n_test = max(1, round(settings.test_share * n_predictions))
    n_validation = round(settings.validation_share * n_predictions)
    n_train = n_predictions - n_test - n_validation
    if n_validation < 1 or n_train < 1:
        raise ValueError(
            f"{n_predictions} predictions are too few for early exit: {n_test} test, {n_validation} validation and "
            f"{n_train} training rows (each needs at least 1)"
        )
    order = np.random.default_rng([settings.seed, split]).permutation(n_predictions)
    return order[:n_test], order[n_test : n_test + n_validation], order[n_test + n_validation :]


def early_exit_table(top_after: np.ndarray, saturation: np.ndarray, cluster_ids: np.ndarray, residual: np.ndarray,
                     ffn: np.ndarray, settings: EarlyExitSettings) -> pl.DataFrame:
    """One row per (method, split): accuracy and layers saved on the split's test rows, the training rows
    the method used (0 for the oracle) and the layer count; methods in METHODS order."""
    top_after, saturation = np.asarray(top_after), np.asarray(saturation)
    cluster_ids, residual, ffn = np.asarray(cluster_ids), np.asarray(residual), np.asarray(ffn)
    if top_after.ndim != 2:
        raise ValueError(f"top_after must be [P, L], got {top_after.shape}")
    n_predictions, n_layers = top_after.shape
    if saturation.shape != (n_predictions,):
        raise ValueError(f"saturation must be [P] = [{n_predictions}], got {saturation.shape}")
    if n_predictions and (saturation.min() < 0 or saturation.max() > n_layers - 1):
        raise ValueError(f"saturation layers must lie in 0..{n_layers - 1}, got {saturation.min()}..{saturation.max()}")
    if cluster_ids.ndim != 3 or cluster_ids.shape[:2] != (n_predictions, n_layers):
        raise ValueError(f"cluster_ids must be [P, L, k] = [{n_predictions}, {n_layers}, k], got {cluster_ids.shape}")
    if residual.ndim != 3 or residual.shape[:2] != (n_predictions, n_layers) or ffn.shape != residual.shape:
        raise ValueError(f"residual and ffn must both be [P, L, d] = [{n_predictions}, {n_layers}, d], got {residual.shape} and {ffn.shape}")
    ids = cluster_ids[..., : settings.top]
    features = {"residual": residual, "ffn": ffn, "both": np.concatenate([residual, ffn], axis=2)}
    rows: list[dict[str, object]] = []
    for split in range(settings.splits):
        test, validation, train = split_indices(n_predictions, settings, split)
        known = np.concatenate([validation, train])
        exits = {"rule": rule_exit_layers(ids[known], saturation[known], ids[test])}
        for name in PROBE_FEATURES:
            x = features[name]
            exits[name] = probe_exit_layers(x[train], saturation[train], x[validation], saturation[validation], x[test], settings)
        exits["oracle"] = saturation[test]
        used = {"rule": len(known), **{name: len(train) for name in PROBE_FEATURES}, "oracle": 0}
        for method in METHODS:
            accuracy, saved = exit_metrics(exits[method], top_after[test])
            rows.append({"method": method, "split": split, "accuracy": accuracy, "layers_saved": saved,
                         "n_train": used[method], "n_test": len(test), "n_layers": n_layers})
    return pl.DataFrame(rows, schema=TABLE_SCHEMA)


def early_exit_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per method (METHODS order): accuracy and layers saved, mean and standard deviation over splits
    (ddof=0, as the paper reports them), the split count and the layer count."""
    rank = {method: i for i, method in enumerate(METHODS)}
    return (
        table.group_by("method")
        .agg(
            accuracy_mean=pl.col("accuracy").mean(), accuracy_std=pl.col("accuracy").std(ddof=0),
            layers_saved_mean=pl.col("layers_saved").mean(), layers_saved_std=pl.col("layers_saved").std(ddof=0),
            splits=pl.len(), n_layers=pl.col("n_layers").first(),
        )
        .with_columns(order=pl.col("method").replace_strict(rank, default=len(METHODS), return_dtype=pl.Int64))
        .sort("order", "method")
        .drop("order")
    )
