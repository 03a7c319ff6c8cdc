"""Early exit (Geva et al. 2022, Sec. 6): the rule against a slow reference, planted data whose saturation layer
every method can read off, the probes' no-fit and no-threshold layers, the metrics, splits and summary."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from neuron_census.analyses.early_exit import (
    METHODS,
    EarlyExitSettings,
    early_exit_summary,
    early_exit_table,
    exit_metrics,
    positional_matches,
    probe_exit_layers,
    rule_exit_layers,
    split_indices,
)

FAST = EarlyExitSettings(folds=3, splits=2)


def _slow_rule(train_ids: np.ndarray, train_saturation: np.ndarray, test_ids: np.ndarray) -> list[int]:
    """The rule, one test prediction, layer and training prediction at a time, means as exact fractions."""
    n_layers, k = train_ids.shape[1], train_ids.shape[2]
    exits = []
    for test in test_ids.tolist():
        chosen = n_layers - 1
        for layer in range(n_layers - 1):

            def sims(group: int) -> list[int]:
                return [
                    sum(1 for j in range(k) if test[layer][j] == train[layer][j])
                    for train, saturation in zip(train_ids.tolist(), train_saturation.tolist())
                    if saturation == group
                ]

            own = sims(layer)
            if not own:
                continue
            passes = True
            for later in range(layer + 1, n_layers):
                other = sims(later)
                if other and not (max(own) > max(other) and Fraction(sum(own), len(own)) > Fraction(sum(other), len(other))):
                    passes = False
            if passes:
                chosen = layer
                break
        exits.append(chosen)
    return exits


def _planted(n: int = 200, n_layers: int = 5, d: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions whose saturation layer every input encodes: top_after agrees with the final token exactly
    from the saturation layer on; the first 6 of 10 cluster-id places at every layer hold the saturation
    layer (the other 4 noise ids from a range of their own); at layer l one residual coordinate and one FFN
    coordinate are 5 exactly when the saturation layer is l, on a constant background. The features carry
    no noise: a probe's threshold may admit up to 1 - precision false positives on validation, so any spread
    among the negatives could cross it."""
    rng = np.random.default_rng(seed)
    saturation = rng.permutation(np.arange(n) % n_layers)
    final = 10 + rng.integers(0, 5, size=n)
    layers = np.arange(n_layers)
    top_after = np.where(layers[None, :] >= saturation[:, None], final[:, None], layers[None, :])
    ids = np.empty((n, n_layers, 10), dtype=np.int64)
    ids[:, :, :6] = saturation[:, None, None]
    ids[:, :, 6:] = 100 + rng.integers(0, 3, size=(n, n_layers, 4))
    background = rng.normal(size=(n_layers, d))
    residual = np.broadcast_to(background, (n, n_layers, d)).copy()
    ffn = np.broadcast_to(-background, (n, n_layers, d)).copy()
    own = saturation[:, None] == layers[None, :]  # [n, L]
    residual[:, layers, layers % d] += 5.0 * own
    ffn[:, layers, (layers + 3) % d] += 5.0 * own
    return {"top_after": top_after, "saturation": saturation, "cluster_ids": ids, "residual": residual, "ffn": ffn}


def _probe_data(saturation: np.ndarray, n_layers: int, d: int = 4) -> np.ndarray:
    """[n, L, d] features: coordinate l % d of layer l is 1 exactly when the saturation layer is l."""
    x = np.zeros((len(saturation), n_layers, d))
    layers = np.arange(n_layers)
    x[:, layers, layers % d] = (saturation[:, None] == layers[None, :]).astype(float)
    return x


def test_positional_matches_count_equal_ids_place_by_place():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, size=(7, 5)), rng.integers(0, 3, size=(9, 5))
    expected = [[sum(int(a[i, j] == b[m, j]) for j in range(5)) for m in range(9)] for i in range(7)]
    assert positional_matches(a, b).tolist() == expected
    # order matters: the same ids at other places do not match
    assert positional_matches(np.array([[1, 2, 3]]), np.array([[3, 1, 2], [1, 2, 3], [1, 9, 3]])).tolist() == [[0, 3, 2]]


def test_positional_matches_in_blocks_equal_one_block(monkeypatch):
    import neuron_census.analyses.early_exit as early_exit

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 4, size=(50, 6)), rng.integers(0, 4, size=(30, 6))
    whole = positional_matches(a, b)
    monkeypatch.setattr(early_exit, "_BLOCK_ELEMENTS", 6 * 30 * 7)  # blocks of 7 rows, the last one short
    assert np.array_equal(positional_matches(a, b), whole)


@pytest.mark.parametrize("seed", range(6))
def test_rule_equals_the_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n_layers, k = 5, 4
    groups = [0, 1, 2, 3, 4] if seed % 2 else [0, 2, 4] if seed % 3 else [1, 3, 4]  # some with empty layers
    train_saturation = rng.choice(groups, size=40)
    test_saturation = rng.integers(0, n_layers, size=25)

    def ids(saturation: np.ndarray) -> np.ndarray:
        random = rng.integers(0, 3, size=(len(saturation), n_layers, k))
        return np.where(rng.random(random.shape) < 0.5, saturation[:, None, None], random)

    train_ids, test_ids = ids(train_saturation), ids(test_saturation)
    got = rule_exit_layers(train_ids, train_saturation, test_ids)
    expected = _slow_rule(train_ids, train_saturation, test_ids)
    assert got.tolist() == expected
    assert len(set(expected)) >= 2  # the data exercise exits before the last layer


def test_rule_cannot_exit_at_a_layer_without_training_predictions_saturating_there():
    # every test id matches the layer-1 group perfectly, but no training prediction saturates at layer 0
    train_ids = np.array([[[5, 5], [5, 5], [0, 0]], [[1, 1], [1, 1], [1, 1]]])
    train_saturation = np.array([1, 2])
    test_ids = np.array([[[5, 5], [5, 5], [5, 5]]])
    assert rule_exit_layers(train_ids, train_saturation, test_ids).tolist() == [1]
    assert rule_exit_layers(train_ids, np.array([2, 2]), test_ids).tolist() == [2]  # no group before the last


@pytest.mark.parametrize(
    ("own", "other", "exits"),
    [
        ([[1, 1], [9, 9]], [[1, 9], [9, 1]], False),  # max above, means equal (1 and 1)
        ([[1, 1], [1, 1]], [[1, 1], [9, 9]], False),  # mean above, maxima equal (2 and 2)
        ([[1, 1], [1, 9]], [[1, 9], [9, 9]], True),  # both strictly above
    ],
)
def test_rule_needs_both_max_and_mean_strictly_above(own, other, exits):
    train_ids = np.array(own + other)[:, None, :].repeat(2, axis=1)  # [4, L=2, k=2]
    train_saturation = np.array([0, 0, 1, 1])
    test_ids = np.array([[[1, 1], [1, 1]]])
    assert rule_exit_layers(train_ids, train_saturation, test_ids).tolist() == [0 if exits else 1]


def test_planted_clusters_let_the_rule_exit_at_the_saturation_layer():
    data = _planted()
    test, rest = np.arange(20), np.arange(20, 200)
    ids, saturation = data["cluster_ids"], data["saturation"]
    exits = rule_exit_layers(ids[rest], saturation[rest], ids[test])
    assert exits.tolist() == saturation[test].tolist()
    accuracy, saved = exit_metrics(exits, data["top_after"][test])
    assert accuracy == 1.0
    assert saved == pytest.approx(np.mean(4 - saturation[test]))
    # the noise places alone do not tell the saturation layer
    assert rule_exit_layers(ids[rest][..., 6:], saturation[rest], ids[test][..., 6:]).tolist() != saturation[test].tolist()


def test_planted_features_let_every_probe_exit_at_the_saturation_layer():
    data = _planted()
    saturation = data["saturation"]
    test, validation, train = np.arange(20), np.arange(20, 40), np.arange(40, 200)
    for x in (data["residual"], data["ffn"]):
        exits = probe_exit_layers(x[train], saturation[train], x[validation], saturation[validation], x[test], FAST)
        assert exits.tolist() == saturation[test].tolist()


@pytest.mark.parametrize("settings", [FAST, EarlyExitSettings(splits=1)], ids=["three_folds", "default_folds"])
def test_planted_table_matches_the_oracle_for_every_method(settings):
    data = _planted(n_layers=4)
    table = early_exit_table(**data, settings=settings)
    assert table["method"].to_list() == list(METHODS) * settings.splits
    oracle = table.filter(pl.col("method") == "oracle").sort("split")
    assert oracle["accuracy"].to_list() == [1.0] * settings.splits
    for method in METHODS:
        rows = table.filter(pl.col("method") == method).sort("split")
        assert rows["accuracy"].to_list() == [1.0] * settings.splits, method
        assert rows["layers_saved"].to_list() == oracle["layers_saved"].to_list(), method
    assert oracle["layers_saved"].min() > 0


def test_a_layer_without_training_positives_never_fires():
    n_layers = 4
    train_saturation = np.tile([0, 2, 3], 30)
    validation_saturation = np.tile([0, 1, 2, 3], 6)
    test_saturation = np.array([0, 1, 2, 3, 1])
    args = (_probe_data(validation_saturation, n_layers), validation_saturation, _probe_data(test_saturation, n_layers), FAST)
    exits = probe_exit_layers(_probe_data(train_saturation, n_layers), train_saturation, *args)
    assert exits.tolist() == [0, 3, 2, 3, 3]
    # with layer-1 positives in training (3, fewer than the folds asked for), layer 1 fires
    with_ones = np.concatenate([train_saturation, [1, 1, 1]])
    settings = EarlyExitSettings(folds=8)
    exits = probe_exit_layers(_probe_data(with_ones, n_layers), with_ones, *args[:3], settings)
    assert exits.tolist() == [0, 1, 2, 3, 1]


def test_a_layer_without_training_negatives_always_fires():
    train_saturation = np.zeros(30, dtype=np.int64)
    validation_saturation = np.array([0, 1, 2])
    test_saturation = np.array([0, 1, 2, 2])
    exits = probe_exit_layers(_probe_data(train_saturation, 3), train_saturation, _probe_data(validation_saturation, 3),
                              validation_saturation, _probe_data(test_saturation, 3), FAST)
    assert exits.tolist() == [0, 0, 0, 0]


def test_a_layer_whose_validation_precision_stays_below_the_bar_never_fires():
    n_layers = 4
    train_saturation = np.tile([0, 1, 2, 3], 30)
    validation_saturation = np.tile([0, 1, 2, 3], 6)
    test_saturation = np.array([0, 1, 2, 3])
    validation_x = _probe_data(validation_saturation, n_layers)
    train_x, test_x = _probe_data(train_saturation, n_layers), _probe_data(test_saturation, n_layers)
    faithful = probe_exit_layers(train_x, train_saturation, validation_x, validation_saturation, test_x, FAST)
    assert faithful.tolist() == [0, 1, 2, 3]
    both = _probe_data(np.array([0]), n_layers) + _probe_data(np.array([1]), n_layers)  # fires at layers 0 and 1
    assert probe_exit_layers(train_x, train_saturation, validation_x, validation_saturation, both, FAST).tolist() == [0]
    validation_x[:, 1, 1] = 1.0 - validation_x[:, 1, 1]  # at layer 1 the signal marks the negatives instead
    exits = probe_exit_layers(train_x, train_saturation, validation_x, validation_saturation, test_x, FAST)
    assert exits.tolist() == [0, 3, 2, 3]


def test_the_threshold_is_the_smallest_reaching_the_precision_and_rows_at_it_fire():
    # one probed layer, one feature; the probe's probability rises with the feature
    train_x = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.5, 2.5])[:, None, None].repeat(2, axis=1)
    train_saturation = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    # validation precision by threshold at the feature values -2, -1, 0, 3, 3.5, 4, 5: 3/7, 3/6, 3/5, 3/4, ...
    validation_x = np.array([-2.0, -1.0, 0.0, 3.5, 3.0, 4.0, 5.0])[:, None, None].repeat(2, axis=1)
    validation_saturation = np.array([1, 1, 1, 1, 0, 0, 0])
    test_x = np.array([2.99, 3.0, 3.01, 4.5])[:, None, None].repeat(2, axis=1)
    exits = probe_exit_layers(train_x, train_saturation, validation_x, validation_saturation, test_x, FAST)
    assert exits.tolist() == [1, 0, 0, 0]
    strict = EarlyExitSettings(folds=3, precision=1.0)  # only thresholds above the negative at 3.5 reach it
    exits = probe_exit_layers(train_x, train_saturation, validation_x, validation_saturation, test_x, strict)
    assert exits.tolist() == [1, 1, 1, 0]


def test_exit_metrics_by_hand():
    top_after = np.array([[1, 2, 3], [4, 4, 4], [5, 6, 6]])
    accuracy, saved = exit_metrics(np.array([0, 0, 1]), top_after)
    assert accuracy == pytest.approx(2 / 3)  # row 0 exits on 1 but ends on 3
    assert saved == pytest.approx(5 / 3)  # (2 + 2 + 1) / 3
    assert exit_metrics(np.array([2, 2, 2]), top_after) == (1.0, 0.0)
    with pytest.raises(ValueError, match="exit layers"):
        exit_metrics(np.array([0, 3, 1]), top_after)


def _noisy(n: int = 200, n_layers: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = _planted(n, n_layers, seed=seed)
    data["residual"] = data["residual"] + 3 * rng.normal(size=data["residual"].shape)
    data["ffn"] = data["ffn"] + 3 * rng.normal(size=data["ffn"].shape)
    data["cluster_ids"] = np.where(rng.random(data["cluster_ids"].shape) < 0.6, rng.integers(0, 4, size=data["cluster_ids"].shape), data["cluster_ids"])
    return data


def test_table_split_sizes_determinism_and_wiring():
    data = _noisy()
    settings = EarlyExitSettings(folds=3, splits=2)
    table = early_exit_table(**data, settings=settings)
    assert table.columns == ["method", "split", "accuracy", "layers_saved", "n_train", "n_test", "n_layers"]
    sizes = {row["method"]: (row["n_train"], row["n_test"]) for row in table.filter(pl.col("split") == 0).iter_rows(named=True)}
    assert sizes == {"rule": (180, 20), "residual": (160, 20), "ffn": (160, 20), "both": (160, 20), "oracle": (0, 20)}
    assert table["n_layers"].unique().to_list() == [4]
    # deterministic, and a split's rows do not depend on how many splits run
    assert table.filter(pl.col("split") == 0).equals(early_exit_table(**data, settings=EarlyExitSettings(folds=3, splits=1)))
    # the table's rule row is the rule on the split's rows
    test, validation, train = split_indices(200, settings, 1)
    known = np.concatenate([validation, train])
    ids = data["cluster_ids"]
    expected = exit_metrics(rule_exit_layers(ids[known], data["saturation"][known], ids[test]), data["top_after"][test])
    row = table.filter((pl.col("method") == "rule") & (pl.col("split") == 1)).row(0, named=True)
    assert (row["accuracy"], row["layers_saved"]) == expected
    # the rule compares only the leading `top` places
    narrow = early_exit_table(**data, settings=EarlyExitSettings(folds=3, splits=1, top=2))
    test, validation, train = split_indices(200, settings, 0)
    known = np.concatenate([validation, train])
    expected = exit_metrics(rule_exit_layers(ids[known][..., :2], data["saturation"][known], ids[test][..., :2]), data["top_after"][test])
    assert expected != exit_metrics(rule_exit_layers(ids[known], data["saturation"][known], ids[test]), data["top_after"][test])
    row = narrow.filter(pl.col("method") == "rule").row(0, named=True)
    assert (row["accuracy"], row["layers_saved"]) == expected


def test_splits_partition_the_rows_and_differ_by_seed_and_split():
    settings = EarlyExitSettings()
    test, validation, train = split_indices(200, settings, 0)
    assert (len(test), len(validation), len(train)) == (20, 20, 160)
    assert sorted(np.concatenate([test, validation, train]).tolist()) == list(range(200))
    again = split_indices(200, settings, 0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (test, validation, train)))
    assert set(split_indices(200, settings, 1)[0].tolist()) != set(test.tolist())
    assert set(split_indices(200, EarlyExitSettings(seed=1), 0)[0].tolist()) != set(test.tolist())
    assert len(split_indices(7, settings, 0)[0]) == 1  # at least one test row


def test_too_few_predictions_raise():
    data = _planted(n=5, n_layers=3)
    with pytest.raises(ValueError, match="5 predictions are too few.*1 test, 0 validation and 4 training"):
        early_exit_table(**data, settings=FAST)


def test_bad_settings_and_shapes_raise():
    with pytest.raises(ValueError, match="test_share"):
        EarlyExitSettings(test_share=0.0)
    with pytest.raises(ValueError, match="below 1"):
        EarlyExitSettings(test_share=0.5, validation_share=0.5)
    with pytest.raises(ValueError, match="folds"):
        EarlyExitSettings(folds=1)
    data = _planted(n=40, n_layers=3)
    with pytest.raises(ValueError, match="cluster_ids"):
        early_exit_table(**{**data, "cluster_ids": data["cluster_ids"][:, :2]}, settings=FAST)
    with pytest.raises(ValueError, match="saturation layers"):
        early_exit_table(**{**data, "saturation": data["saturation"] + 1}, settings=FAST)


def test_summary_means_and_population_std():
    table = pl.DataFrame(
        {
            "method": ["oracle", "rule", "oracle", "rule", "rule"],
            "split": [0, 0, 1, 1, 2],
            "accuracy": [1.0, 0.5, 1.0, 1.0, 0.75],
            "layers_saved": [3.0, 1.0, 2.0, 2.0, 3.0],
            "n_train": [0, 9, 0, 9, 9],
            "n_test": [1, 1, 1, 1, 1],
            "n_layers": [6] * 5,
        }
    )
    summary = early_exit_summary(table)
    assert summary["method"].to_list() == ["rule", "oracle"]
    rule = summary.row(0, named=True)
    assert rule["accuracy_mean"] == pytest.approx(0.75)
    assert rule["accuracy_std"] == pytest.approx(np.std([0.5, 1.0, 0.75]))
    assert rule["layers_saved_mean"] == pytest.approx(2.0)
    assert rule["layers_saved_std"] == pytest.approx(np.sqrt(2 / 3))
    assert (rule["splits"], rule["n_layers"]) == (3, 6)
    oracle = summary.row(1, named=True)
    assert (oracle["accuracy_std"], oracle["layers_saved_mean"], oracle["layers_saved_std"]) == (0.0, 2.5, 0.5)
