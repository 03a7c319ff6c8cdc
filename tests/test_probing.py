"""Sparse probing (Gurnee et al. 2023): every ranking against a direct slow computation, planted neurons
each method finds, the integer program against exhaustive search over supports, the metrics on hand
examples, the sweep table, and bad settings and shapes."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from scipy.optimize import linprog, minimize
from scipy.special import digamma
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, matthews_corrcoef, precision_score, recall_score

from neuron_census.analyses import probing
from neuron_census.analyses.probing import (
    BIG_M_MARGINS,
    L1_C,
    METHODS,
    TABLE_SCHEMA,
    ProbeSettings,
    best_neuron_per_layer,
    complete_ranking,
    default_ks,
    f_statistic_ranking,
    l1_logistic_ranking,
    linear_svm_ranking,
    mean_difference_ranking,
    mutual_information_ranking,
    optimal_support,
    probe_metrics,
    probe_sweep,
    random_ranking,
    rank_neurons,
    scale_neurons,
    split_rows,
)


GRADED = (7, 2, 10, 0, 5, 9)  # _graded's informative neurons, largest class gap first


def _graded(n: int = 240, n_neurons: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and six neurons (GRADED, out of index order) whose class gap shrinks along GRADED, the rest
    noise; scales vary so rankings on raw activations are not the same as on standardised ones."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    x = rng.normal(size=(n, n_neurons))
    for j, gap in zip(GRADED, (2.0, 1.5, 1.1, 0.8, 0.5, 0.3)):
        x[:, j % n_neurons] += gap * y
    x *= rng.uniform(0.5, 3.0, size=n_neurons)
    return x, y


def _consistent(ranking: np.ndarray, scores: np.ndarray, tol: float) -> None:
    """The ranking is a permutation that orders the direct scores (largest first) up to tol, and its first
    neuron has the largest direct score."""
    n = len(scores)
    assert sorted(ranking.tolist()) == list(range(n))
    ordered = scores[ranking]
    assert np.all(ordered[:-1] >= ordered[1:] - tol), ordered
    assert scores[ranking[0]] == pytest.approx(scores.max(), abs=tol)


def _slow_mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = []
    for j in range(x.shape[1]):
        pos = [x[i, j] for i in range(len(y)) if y[i]]
        neg = [x[i, j] for i in range(len(y)) if not y[i]]
        out.append(abs(sum(pos) / len(pos) - sum(neg) / len(neg)))
    return np.array(out)


def _slow_f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-group one-way ANOVA F: between-group mean square over within-group mean square (n - 2 df)."""
    out = []
    for j in range(x.shape[1]):
        column, grand = x[:, j], x[:, j].mean()
        between = within = 0.0
        for group in (y, ~y):
            values = column[group]
            between += len(values) * (values.mean() - grand) ** 2
            within += ((values - values.mean()) ** 2).sum()
        out.append(between / 1 / (within / (len(y) - 2)))
    return np.array(out)


def _slow_mutual_information(x: np.ndarray, y: np.ndarray, neighbours: int = 3) -> np.ndarray:
    """Ross (2014) k-NN estimate per neuron: psi(n) + psi(k) - <psi(n_class)> - <psi(m_i)>, m_i the rows
    (itself included) strictly closer than its k-th same-class neighbour; negative estimates are 0."""
    n = len(y)
    out = []
    for j in range(x.shape[1]):
        column = x[:, j]
        terms = []
        for i in range(n):
            same = np.abs(column[y == y[i]] - column[i])
            radius = np.sort(same)[neighbours]  # place 0 is the row itself
            m = int(np.sum(np.abs(column - column[i]) < radius))
            terms.append(digamma(n) + digamma(neighbours) - digamma(int(np.sum(y == y[i]))) - digamma(m))
        out.append(max(0.0, float(np.mean(terms))))
    return np.array(out)


def _balanced(y: np.ndarray) -> np.ndarray:
    return np.where(y, len(y) / (2 * y.sum()), len(y) / (2 * (~y).sum()))


def _slow_l1_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|w| minimising ||w||_1 + C sum_i c_i log(1 + exp(-y'_i (w . x_i + b))) with the bias penalised like a
    weight on a constant feature (liblinear's problem), as w = u - v with u, v >= 0."""
    z = np.hstack([x, np.ones((len(x), 1))]) * np.where(y, 1.0, -1.0)[:, None]
    weights, d = _balanced(y) * L1_C, z.shape[1]

    def loss(uv: np.ndarray) -> tuple[float, np.ndarray]:
        w = uv[:d] - uv[d:]
        margin = z @ w
        grad_w = -(z * (weights * np.exp(-np.logaddexp(0, margin)))[:, None]).sum(axis=0)
        return float(uv.sum() + (weights * np.logaddexp(0, -margin)).sum()), np.concatenate([1 + grad_w, 1 - grad_w])

    result = minimize(loss, np.zeros(2 * d), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * d),
                      options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 20000})
    return np.abs(result.x[: d - 1] - result.x[d : 2 * d - 1])


def _slow_linear_svm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|w| minimising ||w||^2 / 2 + sum_i c_i max(0, 1 - y'_i (w . x_i + b))^2 with the bias penalised like a
    weight on a constant feature (liblinear's problem, C = 1)."""
    z = np.hstack([x, np.ones((len(x), 1))]) * np.where(y, 1.0, -1.0)[:, None]
    weights = _balanced(y)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        slack = np.maximum(0.0, 1.0 - z @ w)
        return float(w @ w / 2 + (weights * slack**2).sum()), w - 2 * (z * (weights * slack)[:, None]).sum(axis=0)

    result = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 20000})
    return np.abs(result.x[:-1])


def test_rankings_match_direct_computations() -> None:
    x, y = _graded(n=1500)  # enough rows for the L1 fit (C = 0.1 on the scaled neurons) to keep some neurons
    train, _test = scale_neurons(x, x)
    _consistent(mean_difference_ranking(train, y), _slow_mean_difference(train, y), 1e-12)
    _consistent(f_statistic_ranking(train, y), _slow_f(train, y), 1e-9)
    _consistent(mutual_information_ranking(train, y, seed=3), _slow_mutual_information(train, y), 1e-6)
    l1_direct = _slow_l1_logistic(train, y)
    _consistent(l1_logistic_ranking(train, y), l1_direct, 1e-3)
    _consistent(linear_svm_ranking(train, y), _slow_linear_svm(train, y), 1e-3)
    for ranking in (mean_difference_ranking(train, y), f_statistic_ranking(train, y), linear_svm_ranking(train, y)):
        assert ranking[:4].tolist() == list(GRADED[:4])
    # the L1 fit keeps the strongest neurons by gap, then lists the zeroed ones in neuron order
    kept = int(np.sum(l1_direct > 1e-3))
    assert 2 <= kept < 12
    l1 = l1_logistic_ranking(train, y)
    assert l1[:kept].tolist() == list(GRADED[:kept]) and l1[kept:].tolist() == sorted(l1[kept:].tolist())


@pytest.mark.filterwarnings(  # the direct f_classif call below meets the constant neuron
    "ignore:Features .* are constant:UserWarning", "ignore:invalid value encountered in divide:RuntimeWarning"
)
def test_a_perfect_detector_ranks_first_by_f_and_by_a_raised_l1_penalty() -> None:
    """A neuron constant within each class (f_classif's uncentred sums give it a negative F by cancellation)
    and a row count too small for C = 0.1 (every L1 weight zero) still rank the detector first."""
    rng = np.random.default_rng(0)
    y = np.arange(176) % 2 == 0
    x = (rng.normal(size=(176, 8)) * 0.1).astype(np.float32)
    x[:, 6] = np.where(y | (rng.random(176) < 0.5), 3.7754512, 0.0)  # fires on every positive and half the negatives
    x[:, 1] = np.where(y, 3.7754524, 0.0)  # the detector, a planted model's float32 activation
    x[:, 0] = 1.0  # constant: last
    train, _ = scale_neurons(x, x)
    assert probing.f_classif(train, y)[0][1] < 0  # the cancellation this guards against
    assert f_statistic_ranking(train, y)[0] == 1 and f_statistic_ranking(train, y)[-1] == 0
    plain = probing.LogisticRegression(l1_ratio=1.0, C=L1_C, solver="liblinear", class_weight="balanced").fit(train, y)
    assert not plain.coef_.any()  # what the raised C is for
    assert l1_logistic_ranking(train, y)[0] == 1


def test_rankings_break_ties_by_index_and_nan_last() -> None:
    x, y = _graded()
    weak, strong = x[:, [GRADED[4]]], x[:, [GRADED[0]]]
    tied = np.hstack([weak, strong, weak, np.full((len(y), 1), 2.0), strong])
    assert mean_difference_ranking(tied, y).tolist() == [1, 4, 0, 2, 3]
    assert f_statistic_ranking(tied, y).tolist() == [1, 4, 0, 2, 3]  # the constant neuron's F is NaN


def test_random_ranking_is_a_seeded_permutation() -> None:
    first = random_ranking(50, seed=7)
    assert sorted(first.tolist()) == list(range(50))
    assert np.array_equal(first, random_ranking(50, seed=7))
    assert not np.array_equal(first, random_ranking(50, seed=8))
    x, y = _graded()
    assert np.array_equal(rank_neurons("random", x, y, ProbeSettings(seed=7))[0], random_ranking(12, seed=7))


def test_scale_neurons_uses_training_sigma_with_floor() -> None:
    rng = np.random.default_rng(1)
    train = np.hstack([rng.normal(0, 4.0, size=(100, 2)), np.full((100, 1), 3.0), rng.normal(0, 1e-5, size=(100, 1))])
    test = np.ones((5, 4))
    scaled_train, scaled_test = scale_neurons(train, test)
    np.testing.assert_allclose(scaled_train[:, :2].std(axis=0), 0.1)
    np.testing.assert_allclose(scaled_train[:, 2], 3.0 / (10 * 1e-3))
    expected = 1 / (10 * np.maximum(train.std(axis=0), 1e-3))
    np.testing.assert_allclose(scaled_test[0], expected)
    assert expected[3] == pytest.approx(100.0)


def test_split_rows_stratified_and_seeded() -> None:
    y = np.arange(100) % 4 == 0  # 25 positives
    train, test = split_rows(y, ProbeSettings())
    assert len(train) == 70 and len(test) == 30
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert int(y[test].sum()) in (7, 8) and int(y[train].sum()) == 25 - int(y[test].sum())
    again, _ = split_rows(y, ProbeSettings())
    other, _ = split_rows(y, ProbeSettings(seed=1))
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_default_ks() -> None:
    assert default_ks(100) == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 100)
    assert default_ks(64) == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64)
    assert default_ks(5) == (1, 2, 3, 4, 5)


def test_planted_neuron_found_by_every_informed_method() -> None:
    rng = np.random.default_rng(2)
    n, n_neurons, planted = 300, 16, 11
    y = rng.random(n) < 0.3
    x = rng.normal(size=(n, n_neurons)) * rng.uniform(0.5, 2.0, size=n_neurons)
    x[:, planted] = y + 0.05 * rng.normal(size=n)
    train, test = split_rows(y, ProbeSettings())
    scaled, _ = scale_neurons(x[train], x[test])
    settings = ProbeSettings(time_limit=20.0)
    for method in METHODS:
        ranking, status = rank_neurons(method, scaled, y[train], settings)
        assert (ranking[0] == planted) == (method != "random"), method
        assert (status == "optimal") == (method == "optimal")
    table = probe_sweep(x[train], y[train], x[test], y[test], ProbeSettings(ks=(1,), time_limit=20.0))
    singles = table.filter(pl.col("k") == 1).select("method", "f1", neuron=pl.col("neurons").list.first())
    assert singles["method"].to_list() == list(METHODS)
    informed = singles.filter(pl.col("method") != "random")
    assert informed["neuron"].to_list() == [planted] * 6
    assert informed["f1"].to_list() == [1.0] * 6
    assert singles.filter(pl.col("method") == "random")["f1"].item() < 1.0


def test_planted_combination_needs_three_neurons() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(900, 15))
    total = x[:, 2] + x[:, 6] + x[:, 9]
    keep = np.abs(total) > 0.6  # a gap around the threshold: the three neurons separate the classes
    x, y = x[keep][:400], total[keep][:400] > 0
    train, test = split_rows(y, ProbeSettings())
    scaled, _ = scale_neurons(x[train], x[test])
    support, status, objective = optimal_support(scaled, y[train], 3)
    assert sorted(support.tolist()) == [2, 6, 9] and status == "optimal" and objective == pytest.approx(0.0, abs=1e-9)
    _one, _status, one_objective = optimal_support(scaled, y[train], 1)
    assert one_objective > 0.1
    table = probe_sweep(x[train], y[train], x[test], y[test], ProbeSettings(methods=("optimal",), ks=(1, 3), time_limit=20.0))
    three = table.filter(pl.col("k") == 3).row(0, named=True)
    assert (three["f1"], three["precision"], three["recall"]) == (1.0, 1.0, 1.0)
    assert sorted(three["neurons"]) == [2, 6, 9]
    assert table.filter(pl.col("k") == 1)["f1"].item() < 0.9


def _exhaustive(x: np.ndarray, y: np.ndarray, k: int) -> list[tuple[float, tuple[int, ...]]]:
    """(objective, subset) of every k-subset: the class-balanced hinge-loss LP with |w_j| <= 10 / std_j, by
    linprog on the raw (uncentred) activations; best first."""
    signs = np.where(y, 1.0, -1.0)
    cost = np.where(y, 1 / (2 * y.sum()), 1 / (2 * (~y).sum()))
    n = len(y)
    results = []
    for subset in itertools.combinations(range(x.shape[1]), k):
        xs = x[:, subset]
        bound = BIG_M_MARGINS / xs.std(axis=0)
        a = np.hstack([-signs[:, None] * xs, -signs[:, None], -np.eye(n)])
        result = linprog(np.concatenate([np.zeros(k + 1), cost]), A_ub=a, b_ub=-np.ones(n),
                         bounds=[(-m, m) for m in bound] + [(None, None)] + [(0, None)] * n, method="highs")
        assert result.status == 0
        results.append((float(result.fun), subset))
    return sorted(results)


@pytest.mark.parametrize("noise", [0.5, 0.0])
def test_mip_support_matches_exhaustive_search(noise: float) -> None:
    """Noisy labels (loss from overlap) and noiseless ones (separable by neurons 2, 5, 7, but rows lie so
    close to the boundary that their loss comes from the weight bounds, so these must be the documented ones)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 10)) * rng.uniform(0.5, 2.0, size=10)
    score = 0.9 * x[:, 2] / x[:, 2].std() + 0.6 * x[:, 5] / x[:, 5].std() + 0.4 * x[:, 7] / x[:, 7].std()
    y = score + noise * rng.normal(size=120) > 0.2
    scaled, _ = scale_neurons(x, x)
    for k in (1, 2, 3):
        support, status, objective = optimal_support(scaled, y, k, candidates=10)
        ranked = _exhaustive(scaled, y, k)
        assert status == "optimal"
        assert objective == pytest.approx(ranked[0][0], abs=1e-6)
        assert ranked[1][0] - ranked[0][0] > 1e-6  # this problem's optimum is unique
        assert sorted(support.tolist()) == list(ranked[0][1]), k
    if noise == 0.0:
        assert 0 < objective < 0.1  # the bounds bind


def test_mip_candidates_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _graded(n=120)
    scaled, _ = scale_neurons(x, x)
    by_difference = mean_difference_ranking(scaled, y)
    support, _status, _objective = optimal_support(scaled, y, 2, candidates=3)
    assert set(support.tolist()) <= set(by_difference[:3].tolist())
    ranking = complete_ranking(support, scaled, y)
    assert ranking[: len(support)].tolist() == support.tolist() and sorted(ranking.tolist()) == list(range(12))

    class NoSolution:
        x, fun, status, message = None, None, 1, "Time limit reached. (HiGHS Status 13: model_status is Time limit reached)"

    monkeypatch.setattr(probing, "milp", lambda *args, **kwargs: NoSolution())
    support, status, objective = optimal_support(scaled, y, 2)
    assert support.tolist() == by_difference[:2].tolist()
    assert status == "time limit, fallback" and np.isnan(objective)


def test_metrics_on_hand_examples() -> None:
    y = np.array([1, 1, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.4, 0.6, 0.1])
    predicted = scores >= 0.5  # TP 1, FN 1, FP 1, TN 1
    metrics = probe_metrics(y, predicted, scores)
    assert metrics["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1 at recall 1/2, 2/3 at recall 1
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, scores))
    assert average_precision_score(y, predicted) == pytest.approx(0.5)  # from hard predictions: another number
    assert (metrics["f1"], metrics["precision"], metrics["recall"], metrics["accuracy"], metrics["mcc"]) == (0.5, 0.5, 0.5, 0.5, 0.0)
    y = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    predicted = np.array([1, 1, 0, 1, 0, 0], dtype=bool)  # TP 2, FN 1, FP 1, TN 2
    metrics = probe_metrics(y, predicted, predicted.astype(float))
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["mcc"] == pytest.approx(1 / 3)
    nothing = probe_metrics(y, np.zeros(6, dtype=bool), np.zeros(6))
    assert (nothing["f1"], nothing["precision"], nothing["recall"], nothing["mcc"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn_with_ties_and_empty_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 60))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), 1)  # rounded: tied scores
    predicted = scores > (np.inf if seed == 0 else rng.normal())  # seed 0: nothing predicted positive
    metrics = probe_metrics(y, predicted, scores)
    expected = {
        "f1": f1_score(y, predicted, zero_division=0), "mcc": matthews_corrcoef(y, predicted),
        "precision": precision_score(y, predicted, zero_division=0), "recall": recall_score(y, predicted, zero_division=0),
        "accuracy": accuracy_score(y, predicted), "pr_auc": average_precision_score(y, scores),
    }
    assert metrics == pytest.approx(expected, abs=1e-12)


def test_probe_sweep_table() -> None:
    x, y = _graded(n=200, n_neurons=10)
    train, test = split_rows(y, ProbeSettings())
    settings = ProbeSettings(max_mip_k=3, time_limit=20.0)
    table = probe_sweep(x[train], y[train], x[test], y[test], settings)
    assert dict(table.schema) == TABLE_SCHEMA
    ks = [1, 2, 3, 4, 5, 6, 7, 8, 10]
    expected = [(m, k) for m in METHODS for k in ks if m != "optimal" or k <= 3]
    assert list(zip(table["method"].to_list(), table["k"].to_list())) == expected
    assert [len(n) for n in table["neurons"].to_list()] == [min(k, 8) for _m, k in expected]
    assert table["solver_status"].to_list() == ["optimal" if m == "optimal" else None for m, _k in expected]
    assert set(table["n_train"].to_list()) == {len(train)} and set(table["n_test"].to_list()) == {len(test)}
    assert set(table["positives_test"].to_list()) == {int(y[test].sum())}
    assert (table["seconds"] >= 0).all()
    again = probe_sweep(x[train], y[train], x[test], y[test], settings)
    assert table.drop("seconds").equals(again.drop("seconds"))
    # k = N uses every neuron, whatever the ranking
    full = table.filter(pl.col("k") == 10)
    assert full["f1"].n_unique() == 1 and full["pr_auc"].n_unique() == 1
    few = probe_sweep(x[train], y[train], x[test], y[test], ProbeSettings(methods=("mean_difference",), ks=(40, 2, 5)))
    assert few["k"].to_list() == [2, 5]


def test_best_neuron_per_layer() -> None:
    def rows(feature: str, layer: int, f1s: dict[str, float]) -> list[dict[str, object]]:
        return [{"feature": feature, "layer": layer, "method": m, "k": k, "neurons": [i + 10 * k], "f1": f1 + k,
                 "precision": 0.5, "recall": f1} for i, (m, f1) in enumerate(f1s.items()) for k in (1, 2)]

    table = pl.DataFrame(rows("b", 0, {"mean_difference": 0.4, "optimal": 0.9, "random": 0.2})
                         + rows("a", 3, {"random": 0.7, "f_statistic": 0.7, "linear_svm": 0.1}))
    best = best_neuron_per_layer(table)
    assert best.to_dicts() == [
        {"feature": "a", "layer": 3, "method": "f_statistic", "neuron": 11, "f1": 1.7, "precision": 0.5, "recall": 0.7},
        {"feature": "b", "layer": 0, "method": "optimal", "neuron": 11, "f1": 1.9, "precision": 0.5, "recall": 0.9},
    ]
    with pytest.raises(ValueError, match="feature"):
        best_neuron_per_layer(table.drop("feature"))


@pytest.mark.parametrize("kwargs", [
    {"methods": ()}, {"methods": ("mean_difference", "lasso")}, {"methods": ("random", "random")},
    {"ks": ()}, {"ks": (0, 2)}, {"ks": (2, 2)}, {"max_mip_k": 0}, {"candidates": 0}, {"time_limit": 0.0},
    {"test_share": 1.0}, {"test_share": 0.0}, {"max_iter": 0},
])
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as error:
        ProbeSettings(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_bad_shapes() -> None:
    x, y = _graded(n=60, n_neurons=6)
    settings = ProbeSettings(ks=(1,), methods=("mean_difference",))
    calls = [
        lambda: probe_sweep(x[:, 0], y, x, y, settings),
        lambda: probe_sweep(x, y[:-1], x, y, settings),
        lambda: probe_sweep(x, y, x[:, :5], y, settings),
        lambda: probe_sweep(x, np.where(y, 2, 0), x, y, settings),
        lambda: probe_sweep(x, np.zeros(60, dtype=bool), x, y, settings),
        lambda: probe_sweep(x, y, x, np.ones(60, dtype=bool), settings),
        lambda: probe_sweep(np.where(x > 0, np.nan, x), y, x, y, settings),
        lambda: optimal_support(x, y, 0),
        lambda: scale_neurons(x, x[:, :3]),
        lambda: split_rows(np.array([True, False, False, False]), ProbeSettings()),
        lambda: split_rows(np.ones((4, 2), dtype=bool), ProbeSettings()),
        lambda: probe_metrics(y, y[:-1], y),
        lambda: rank_neurons("lasso", x, y, settings),
        lambda: random_ranking(0),
    ]
    for call in calls:
        with pytest.raises(ValueError) as error:
            call()
        assert "\n" not in str(error.value)


def test_probe_weights_rows_exactly_as_balanced_class_weights():
    """The probe gives each row its class's balanced weight itself: the same fit, to the last bit, as
    scikit-learn's `class_weight="balanced"`, on unbalanced classes."""
    from sklearn.linear_model import LogisticRegression

    from neuron_census.analyses.probing import ProbeSettings, _probe

    rng = np.random.default_rng(3)
    x, test_x = rng.standard_normal((300, 5)), rng.standard_normal((100, 5))
    y = rng.random(300) < 0.2
    x[y, 0] += 1.0
    settings = ProbeSettings()
    predicted, scores = _probe(x, y, test_x, settings)
    reference = LogisticRegression(l1_ratio=0.0, class_weight="balanced", max_iter=settings.max_iter, random_state=settings.seed)
    reference.fit(x, y)
    np.testing.assert_array_equal(scores, reference.decision_function(test_x))
    np.testing.assert_array_equal(predicted, reference.predict(test_x))
