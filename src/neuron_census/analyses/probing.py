"""Sparse probing of FFN neurons (Gurnee et al. 2023, "Finding Neurons in a Haystack"): how well does a
classifier on only k neurons of a layer read off a binary feature, and which neurons does it use?

Inputs, per (feature, layer): activations `x` [n, N] of the layer's N neurons at n labelled positions (or
spans) and the binary feature `y` [n] (one class against the rest), split by the caller into training and
test rows (`split_rows`: a seeded split, 70/30 with seed 42 as the paper's; stratified by the feature here,
where the reference's `train_test_split` is not, so rare features keep positives in both parts).

Before anything else every neuron is scaled by 1 / (10 * max(sigma, 1e-3)), sigma its training standard
deviation (`scale_neurons`, the paper's normalisation); rankings, the integer program and the probes all
see the scaled activations.

Rankings (each orders all N neurons, best first; equal scores in neuron order; NaN scores last):
- `mean_difference`: |mean(x | y) - mean(x | not y)|;
- `f_statistic`: the one-way ANOVA F of the two groups (sklearn's `f_classif`; a neuron constant within
  each class but not across them gets F = +inf, which f_classif's uncentred sums can turn negative);
- `mutual_information`: sklearn's `mutual_info_classif` (k-NN estimate, continuous neurons, seeded);
- `l1_logistic`: |coef| of an L1 logistic regression (C = 0.1, balanced class weights, as the reference;
  liblinear where the reference uses saga; liblinear penalises the bias too). The loss is summed over
  rows, so with few rows the penalty can zero every weight: C is then raised tenfold, up to four times,
  until a weight is non-zero (after that the ranking falls back to neuron order);
- `linear_svm`: |coef| of a linear SVM (squared hinge, L2, balanced class weights, seeded; the reference
  fits an unweighted hinge-loss LinearSVC);
- `random`: a seeded permutation;
- `optimal`: optimal sparse probing, solved per k (`optimal_support`).

Optimal sparse probing: the `candidates` neurons with the largest mean difference enter an L0-constrained,
class-balanced hinge-loss SVM, solved exactly as a mixed-integer linear program by HiGHS
(`scipy.optimize.milp`); the formulation below is written out by hand. (The reference solves a ridge-
regularised hinge SVM with sum s_j == k by outer approximation in Gurobi; a linear program needs a linear
objective, so here the weights are bounded instead of penalised.) With m candidates, n rows,
y'_i in {-1, +1} and c_i = 1 / (2 n_class(i)) (each class weighs 1/2 in total):

    minimise    sum_i c_i xi_i
    subject to  y'_i (w . x_i + b) >= 1 - xi_i,   xi_i >= 0          (i = 1..n)
                -M_j s_j <= w_j <= M_j s_j,        s_j in {0, 1}      (j = 1..m)
                sum_j s_j <= k,                    b free.

Big-M: M_j = BIG_M_MARGINS / std_j (std_j the candidate's standard deviation over the given rows; 0 for a
constant neuron, which the bias already covers), so a neuron at its bound moves the decision value by 10
margins over one of its standard deviations; on the scaled activations (std 0.1) M_j = 100. The bounds are
part of the problem: without them every separable subset reaches zero loss at some scale; with them a
neuron needs its classes a fifth of a standard deviation apart to do so alone. Activations are centred
first (only the bias changes). Once HiGHS has chosen a support, the weights and the objective come from
the linear program on that support alone (binaries fixed), so the integrality tolerance cannot leak weight
onto unselected neurons. A solve stopped by the time limit keeps its best support, with that status;
when HiGHS has no feasible point at all, the support falls back to the mean-difference top k (objective
NaN, status marked "fallback"). The `optimal` ranking for k is the support in order of |w_j|, then every
other neuron by mean difference.

Probes: for each method and k, an L2 logistic regression (balanced class weights) on the training rows'
top-k neurons of the method's ranking, scored on the test rows: F1, MCC, precision, recall and accuracy of
its predictions (zero_division=0) and PR-AUC as the average precision of its scores (the reference's
average precision is computed from the hard predictions, a bug: that is one operating point, not a curve;
its `pr_auc` is a trapezoidal area under the score curve, which linear interpolation inflates). The k
ladder is 1..8, 10, 12, then powers of two from 16, and N itself (those <= N), as the reference's;
`optimal` runs for k <= max_mip_k (8, as the paper).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl
import sklearn
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import f_classif, mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from neuron_census.config import default_field, schema_defaults

METHODS: tuple[str, ...] = ("mean_difference", "f_statistic", "mutual_information", "l1_logistic", "linear_svm", "random", "optimal")
_DEFAULTS = schema_defaults("$defs/probing_study")
_default = partial(default_field, _DEFAULTS)
SHOWN_NEURONS = 8  # the table's `neurons` column lists at most this many of a probe's neurons
BIG_M_MARGINS = 10.0  # M_j = BIG_M_MARGINS / std_j (module docstring)
MIP_GAP = 1e-7  # HiGHS's relative optimality gap (its default, 1e-4, would stop short of the optimum)
L1_C = 0.1  # inverse regularisation strength of the l1_logistic ranking
L1_RAISES = 4  # times C is raised tenfold while the L1 fit zeroes every weight
SCALE_FLOOR = 1e-3  # sigma floor of scale_neurons

TABLE_SCHEMA = {
    "method": pl.Utf8, "k": pl.Int64, "neurons": pl.List(pl.Int64), "f1": pl.Float64, "mcc": pl.Float64,
    "precision": pl.Float64, "recall": pl.Float64, "accuracy": pl.Float64, "pr_auc": pl.Float64,
    "n_train": pl.Int64, "n_test": pl.Int64, "positives_test": pl.Int64, "solver_status": pl.Utf8, "seconds": pl.Float64,
}
_MILP_STATUS = {0: "optimal", 2: "infeasible", 3: "unbounded", 4: "failed"}


@dataclass(frozen=True)
class ProbeSettings:
    methods: tuple[str, ...] = _default("methods")
    ks: tuple[int, ...] | None = _default("ks")  # None: default_ks(N); values above N are skipped
    max_mip_k: int = _default("max_mip_k")  # `optimal` runs for k up to this
    candidates: int = _default("candidates")  # neurons (largest mean difference) the integer program chooses from
    time_limit: float = _default("time_limit")  # seconds per integer program
    seed: int = _default("seed")
    test_share: float = _default("test_share")  # of the rows, split_rows's test rows
    max_iter: int = _default("max_iter")  # solver iterations of the probes and the l1_logistic and linear_svm rankings

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("probing needs at least one method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown probing methods {unknown}; known: {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"probing methods repeat: {list(self.methods)}")
        if self.ks is not None:
            if not self.ks:
                raise ValueError("probing ks must be None or hold at least one k")
            if any(int(k) != k or k < 1 for k in self.ks):
                raise ValueError(f"probing ks must be positive integers, got {list(self.ks)}")
            if len(set(self.ks)) != len(self.ks):
                raise ValueError(f"probing ks repeat: {list(self.ks)}")
        if self.max_mip_k < 1:
            raise ValueError(f"probing max_mip_k must be at least 1, got {self.max_mip_k}")
        if self.candidates < 1:
            raise ValueError(f"probing candidates must be at least 1, got {self.candidates}")
        if not self.time_limit > 0:
            raise ValueError(f"probing time_limit must be positive, got {self.time_limit}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"probing test_share must be in (0, 1), got {self.test_share}")
        if self.max_iter < 1:
            raise ValueError(f"probing max_iter must be at least 1, got {self.max_iter}")


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    """y as bool [n]; a ValueError for other shapes or values other than 0/1."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} needs labels [n], got shape {y.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name} needs binary labels (bool or 0/1), got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    return y


def _checked(x: np.ndarray, y: np.ndarray, name: str, both_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x as float64 [n, N] and y as bool [n] (of both classes); a ValueError for other shapes, non-binary or
    non-finite values."""
    x, y = np.asarray(x, dtype=np.float64), _labels(y, name)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} needs activations [n, N] with N >= 1, got shape {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"{name} needs one label per row: x {x.shape}, y {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} needs finite activations")
    if both_classes:
        _both_classes(y, name)
    return x, y


def _both_classes(y: np.ndarray, name: str) -> None:
    if y.all() or not y.any():
        raise ValueError(f"{name} needs rows of both classes, got {int(y.sum())} positive of {len(y)}")


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices by score, largest first; equal scores in index order, NaN last."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-scores, kind="stable")


def default_ks(n_neurons: int) -> tuple[int, ...]:
    """The k ladder: 1..8, 10, 12, powers of two from 16, and N itself, those <= N."""
    ladder = {*range(1, 9), 10, 12, n_neurons, *(2**i for i in range(4, n_neurons.bit_length()))}
    return tuple(sorted(k for k in ladder if k <= n_neurons))


def split_rows(y: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a stratified split seeded with settings.seed, test_share of the rows
    tested, so both parts keep the feature's base rate."""
    y = _labels(y, "split_rows")
    positives = int(y.sum())
    if min(positives, len(y) - positives) < 2:
        raise ValueError(f"split_rows needs at least 2 rows of each class, got {positives} positive of {len(y)}")
    train, test = train_test_split(np.arange(len(y)), test_size=settings.test_share, stratify=y, random_state=settings.seed)
    return np.sort(train), np.sort(test)


def scale_neurons(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled per neuron by 1 / (10 * max(sigma, 1e-3)), sigma the training standard deviation
    (ddof 0): the paper's normalisation, so one regularisation strength suits every neuron."""
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1] or len(train_x) == 0:
        raise ValueError(f"scale_neurons needs [n, N] training (n >= 1) and test activations of one N, got {train_x.shape} and {test_x.shape}")
    scale = 1.0 / (10.0 * np.maximum(train_x.std(axis=0), SCALE_FLOOR))
    return train_x * scale, test_x * scale


def mean_difference_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N]: |mean over positives - mean over negatives| per neuron."""
    x, y = _checked(x, y, "mean_difference")
    return np.abs(x[y].mean(axis=0) - x[~y].mean(axis=0))


def mean_difference_ranking(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Neurons by the gap between the class means."""
    return _order(mean_difference_scores(x, y))


def f_statistic_ranking(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Neurons by the two-group ANOVA F; constant neurons (F undefined) last."""
    x, y = _checked(x, y, "f_statistic")
    with warnings.catch_warnings():  # constant neurons: a division by zero, reported as NaN and ranked last
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        f, _p = f_classif(x, y)
    f = np.asarray(f, dtype=np.float64)
    # f_classif sums uncentred squares: a neuron constant within each class (a perfect detector) can come out
    # negative or NaN by cancellation, where its F is +inf
    separated = (~np.isfinite(f) | (f < 0)) & (mean_difference_scores(x, y) > 0)
    return _order(np.where(separated, np.inf, f))


def mutual_information_ranking(x: np.ndarray, y: np.ndarray, seed: int = _DEFAULTS["seed"]) -> np.ndarray:
    """Neurons by the k-NN estimate of their mutual information with the feature (the estimator's jitter
    seeded, so the ranking is reproducible)."""
    x, y = _checked(x, y, "mutual_information")
    return _order(mutual_info_classif(x, y, discrete_features=False, random_state=seed))


def l1_logistic_ranking(
    x: np.ndarray, y: np.ndarray, seed: int = _DEFAULTS["seed"], max_iter: int = _DEFAULTS["max_iter"]
) -> np.ndarray:
    """Neurons by |coef| of an L1 logistic regression (C = 0.1, balanced): the neurons the sparse fit keeps
    first, the ones it zeroes after them in neuron order."""
    x, y = _checked(x, y, "l1_logistic")
    for c in L1_C * 10.0 ** np.arange(L1_RAISES + 1):
        model = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", class_weight="balanced", max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings():  # a ranking needs the order of the weights, not their last digits
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        if np.any(model.coef_[0] != 0):
            break
    return _order(np.abs(model.coef_[0]))


def linear_svm_ranking(
    x: np.ndarray, y: np.ndarray, seed: int = _DEFAULTS["seed"], max_iter: int = _DEFAULTS["max_iter"]
) -> np.ndarray:
    """Neurons by |coef| of a linear SVM (squared hinge, L2, balanced)."""
    x, y = _checked(x, y, "linear_svm")
    model = LinearSVC(class_weight="balanced", dual="auto", max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():  # as l1_logistic_ranking
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return _order(np.abs(model.coef_[0]))


def random_ranking(n_neurons: int, seed: int = _DEFAULTS["seed"]) -> np.ndarray:
    """A seeded permutation of the neurons: the baseline every informed ranking should beat."""
    if n_neurons < 1:
        raise ValueError(f"random_ranking needs at least 1 neuron, got {n_neurons}")
    return np.random.default_rng(seed).permutation(n_neurons)


def weight_bounds(x: np.ndarray) -> np.ndarray:
    """[N]: the big-M bound of each neuron's weight, BIG_M_MARGINS / std (0 for a constant neuron)."""
    std = np.asarray(x, dtype=np.float64).std(axis=0)
    return np.divide(BIG_M_MARGINS, std, out=np.zeros_like(std), where=std > 0)


def _hinge_problem(x: np.ndarray, y: np.ndarray, k: int | None) -> tuple[np.ndarray, LinearConstraint, Bounds, np.ndarray]:
    """(c, constraints, bounds, integrality) of the module docstring's program on centred x [n, m], variables
    [w (m), b, xi (n), s (m)]; k None: every s_j fixed to 1 (the linear program of a fixed support)."""
    n, m = x.shape
    signs = np.where(y, 1.0, -1.0)
    counts = np.array([np.sum(~y), np.sum(y)], dtype=np.float64)
    weights = 1.0 / (2.0 * counts[y.astype(int)])
    bound = weight_bounds(x)
    x = x - x.mean(axis=0)
    objective = np.concatenate([np.zeros(m + 1), weights, np.zeros(m)])
    # margins: -y'_i x_i . w - y'_i b - xi_i <= -1
    margin = sparse.hstack([sparse.csr_matrix(-signs[:, None] * x), sparse.csr_matrix(-signs[:, None]),
                            -sparse.identity(n, format="csr"), sparse.csr_matrix((n, m))])
    eye = sparse.identity(m, format="csr")
    zeros_b, zeros_xi = sparse.csr_matrix((m, 1)), sparse.csr_matrix((m, n))
    upper = sparse.hstack([eye, zeros_b, zeros_xi, -sparse.diags(bound)])  # w_j - M_j s_j <= 0
    lower = sparse.hstack([-eye, zeros_b, zeros_xi, -sparse.diags(bound)])  # -w_j - M_j s_j <= 0
    cardinality = sparse.hstack([sparse.csr_matrix((1, m + 1 + n)), sparse.csr_matrix(np.ones((1, m)))])
    a = sparse.vstack([margin, upper, lower, cardinality], format="csr")
    ub = np.concatenate([-np.ones(n), np.zeros(2 * m), [np.inf if k is None else k]])
    constraints = LinearConstraint(a, -np.inf, ub)
    s_low = np.ones(m) if k is None else np.zeros(m)
    bounds = Bounds(np.concatenate([-bound, [-np.inf], np.zeros(n), s_low]), np.concatenate([bound, [np.inf], np.full(n, np.inf), np.ones(m)]))
    integrality = np.concatenate([np.zeros(m + 1 + n), np.zeros(m) if k is None else np.ones(m)])
    return objective, constraints, bounds, integrality


def support_loss(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(objective, weights [m]) of the class-balanced hinge-loss program with every neuron of x [n, m]
    available (the linear program of a fixed support), weights bounded as in optimal_support."""
    x, y = _checked(x, y, "support_loss")
    objective, constraints, bounds, integrality = _hinge_problem(x, y, None)
    result = milp(objective, integrality=integrality, bounds=bounds, constraints=constraints)
    if result.x is None:
        raise ValueError(f"support_loss: the linear program failed ({result.message})")
    return float(result.fun), result.x[: x.shape[1]]


def optimal_support(x: np.ndarray, y: np.ndarray, k: int, *, candidates: int = _DEFAULTS["candidates"],
                    time_limit: float = _DEFAULTS["time_limit"]) -> tuple[np.ndarray, str, float]:
    """(support, solver status, objective): the at most k neurons of x [n, N] whose bounded, class-balanced
    hinge-loss SVM has the least loss, chosen exactly among the `candidates` neurons with the largest mean
    difference (module docstring); support in order of |w|, neurons whose weight is 0 left out."""
    x, y = _checked(x, y, "optimal_support")
    if k < 1:
        raise ValueError(f"optimal_support needs k >= 1, got {k}")
    if candidates < 1:
        raise ValueError(f"optimal_support needs candidates >= 1, got {candidates}")
    if not time_limit > 0:
        raise ValueError(f"optimal_support needs a positive time_limit, got {time_limit}")
    by_difference = mean_difference_ranking(x, y)
    pool = np.sort(by_difference[:candidates])
    m = len(pool)
    objective, constraints, bounds, integrality = _hinge_problem(x[:, pool], y, min(k, m))
    result = milp(objective, integrality=integrality, bounds=bounds, constraints=constraints,
                  options={"time_limit": float(time_limit), "mip_rel_gap": MIP_GAP, "disp": False})
    status = _MILP_STATUS.get(int(result.status), "failed")
    if result.status == 1:  # a limit reached: which one, from the message
        status = "time limit" if "time" in str(result.message).lower() else "iteration limit"
    if result.x is None:
        return by_difference[:k].copy(), f"{status}, fallback", float("nan")
    chosen = pool[result.x[-m:] > 0.5]
    if len(chosen) == 0:  # no neuron lowers the loss below the bias-only probe's
        return chosen.astype(np.int64), status, float(result.fun)
    loss, w = support_loss(x[:, chosen], y)
    keep = np.abs(w) > 1e-9 * np.maximum(weight_bounds(x[:, chosen]), 1.0)
    order = _order(np.abs(w[keep]))
    return chosen[keep][order], status, loss


def complete_ranking(first: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N]: the neurons `first`, then every other neuron by mean difference: the `optimal` ranking."""
    first = np.asarray(first, dtype=np.int64)
    rest = mean_difference_ranking(x, y)
    return np.concatenate([first, rest[~np.isin(rest, first)]])


def rank_neurons(method: str, x: np.ndarray, y: np.ndarray, settings: ProbeSettings, k: int = 1) -> tuple[np.ndarray, str | None]:
    """(ranking of all N neurons, solver status): the method's ranking on training rows x, y. Only `optimal`
    depends on k (its support size) and has a solver status; the others return None."""
    x, y = _checked(x, y, "rank_neurons", both_classes=False)
    if method == "mean_difference":
        return mean_difference_ranking(x, y), None
    if method == "f_statistic":
        return f_statistic_ranking(x, y), None
    if method == "mutual_information":
        return mutual_information_ranking(x, y, settings.seed), None
    if method == "l1_logistic":
        return l1_logistic_ranking(x, y, settings.seed, settings.max_iter), None
    if method == "linear_svm":
        return linear_svm_ranking(x, y, settings.seed, settings.max_iter), None
    if method == "random":
        _both_classes(y, "random")
        return random_ranking(x.shape[1], settings.seed), None
    if method == "optimal":
        support, status, _objective = optimal_support(x, y, k, candidates=settings.candidates, time_limit=settings.time_limit)
        return complete_ranking(support, x, y), status
    raise ValueError(f"unknown probing method {method!r}; known: {list(METHODS)}")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of scores, sum over thresholds of (R_n - R_{n-1}) P_n, tied scores one threshold:
    sklearn's `average_precision_score`, without its per-call input checks (a sweep calls it thousands of
    times)."""
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], y_true[order]
    last = np.append(np.flatnonzero(np.diff(ranked)), len(ranked) - 1)  # the last row of each tied score
    tp = np.cumsum(labels)[last]
    precision = tp / (last + 1)
    recall = tp / max(int(y_true.sum()), 1)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def probe_metrics(y_true: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """F1, MCC, precision, recall and accuracy of hard predictions (0 where undefined, as sklearn's
    zero_division=0) and PR-AUC, the average precision of the scores (a ranking measure: hard predictions
    give one point, not a curve). From the confusion counts: sklearn's metric functions spend ~3 ms a call on
    input checks, which the sweep's thousands of probes would pay."""
    y_true, predicted, scores = np.asarray(y_true, dtype=bool), np.asarray(predicted, dtype=bool), np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 1 or predicted.shape != y_true.shape or scores.shape != y_true.shape:
        raise ValueError(f"probe_metrics needs labels, predictions and scores of one shape [n], got {y_true.shape}, {predicted.shape}, {scores.shape}")
    _both_classes(y_true, "probe_metrics")
    tp = float(np.sum(y_true & predicted))
    fp = float(np.sum(~y_true & predicted))
    fn = float(np.sum(y_true & ~predicted))
    tn = float(len(y_true)) - tp - fp - fn
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": _ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": (tp + tn) / len(y_true),
        "pr_auc": average_precision(y_true, scores),
    }


def _probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, settings: ProbeSettings) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, scores) on the test rows of an L2 logistic regression (balanced) fitted on the training rows.

    The balanced weights are given per row, as scikit-learn's `class_weight="balanced"` computes them
    (n / (2 n_class)): the same fit, without its per-fit class bookkeeping (a third of a sweep's time)."""
    labels = train_y.astype(np.int64)
    weights = (len(labels) / (2 * np.bincount(labels, minlength=2)))[labels]
    model = LogisticRegression(l1_ratio=0.0, max_iter=settings.max_iter, random_state=settings.seed)
    model.fit(train_x, train_y, sample_weight=weights)
    return model.predict(test_x).astype(bool), model.decision_function(test_x)


def probe_sweep(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                settings: ProbeSettings) -> pl.DataFrame:
    """One row per (method, k), methods in settings order, ks ascending: the test metrics of the probe on
    the method's top-k neurons (activations scaled by scale_neurons first). `seconds` is the probe's fit,
    plus the integer program for `optimal` (solved per k); the other rankings are computed once per method."""
    train_x, train_y = _checked(train_x, train_y, "probe_sweep (training rows)")
    test_x, test_y = _checked(test_x, test_y, "probe_sweep (test rows)")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe_sweep needs one neuron count for training and test rows, got {train_x.shape[1]} and {test_x.shape[1]}")
    n_neurons = train_x.shape[1]
    ks = default_ks(n_neurons) if settings.ks is None else tuple(sorted(k for k in settings.ks if k <= n_neurons))
    train_x, test_x = scale_neurons(train_x, test_x)
    rows: list[dict[str, object]] = []
    fitted: dict[tuple[int, ...], dict[str, float]] = {}
    # the rows were checked above: scikit-learn's per-fit checks of finiteness and parameters are skipped
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for method in settings.methods:
            fixed = None if method == "optimal" else rank_neurons(method, train_x, train_y, settings)[0]
            for k in ks:
                if method == "optimal" and k > settings.max_mip_k:
                    continue
                start = time.perf_counter()
                if fixed is None:
                    ranking, status = rank_neurons(method, train_x, train_y, settings, k)
                else:
                    ranking, status = fixed, None
                used = ranking[:k]
                key = tuple(used.tolist())
                if key not in fitted:  # methods that agree on the top k share one probe
                    predicted, scores = _probe(train_x[:, used], train_y, test_x[:, used], settings)
                    fitted[key] = probe_metrics(test_y, predicted, scores)
                seconds = time.perf_counter() - start
                rows.append({
                    "method": method, "k": k, "neurons": used[:SHOWN_NEURONS].tolist(), **fitted[key],
                    "n_train": len(train_y), "n_test": len(test_y), "positives_test": int(test_y.sum()),
                    "solver_status": status, "seconds": seconds,
                })
    return pl.DataFrame(rows, schema=TABLE_SCHEMA)


def best_neuron_per_layer(tables: pl.DataFrame) -> pl.DataFrame:
    """Per (feature, layer) of concatenated sweep tables (with `feature` and `layer` columns): the best
    single neuron over the methods, the k = 1 probe with the highest test F1 (ties: METHODS order), with its
    method, F1, precision and recall; sorted by feature and layer."""
    missing = {"feature", "layer"} - set(tables.columns)
    if missing:
        raise ValueError(f"best_neuron_per_layer needs `feature` and `layer` columns, missing {sorted(missing)}")
    rank = {method: i for i, method in enumerate(METHODS)}
    return (
        tables.filter(pl.col("k") == 1)
        .with_columns(order=pl.col("method").replace_strict(rank, default=len(METHODS), return_dtype=pl.Int64))
        .sort("feature", "layer", pl.col("f1"), "order", descending=[False, False, True, False])
        .group_by("feature", "layer", maintain_order=True)
        .first()
        .select("feature", "layer", "method", neuron=pl.col("neurons").list.first(), f1="f1", precision="precision", recall="recall")
    )


def probe_neuron_features(tables: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Per neuron that some method's k = 1 probe uses with test F1 >= threshold (sweep tables with `feature`
    and `layer` columns): `probe_features`, those features sorted, and `probe_f1`, the best such F1; the
    columns `neurons.parquet` joins on (layer, neuron)."""
    return (
        tables.filter((pl.col("k") == 1) & (pl.col("f1") >= threshold))
        .select("layer", "feature", "f1", neuron=pl.col("neurons").list.first())
        .group_by("layer", "neuron")
        .agg(probe_features=pl.col("feature").unique().sort(), probe_f1=pl.col("f1").max())
        .sort("layer", "neuron")
        .select(pl.col("layer").cast(pl.Int64), pl.col("neuron").cast(pl.Int64), "probe_features", "probe_f1")
    )
