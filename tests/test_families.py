"""Neuron families: token and context features, the streaming per-feature sums against a direct
computation, and exact recovery of neurons planted as functions of one feature."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.accumulators.feature_moments import FeatureMoments, variance_reduction
from neuron_census.analyses.families import family_columns
from neuron_census.analyses.features import feature_matrices, feature_table, frequent_forms, token_classes, word_form
from neuron_census.capture.sources import PairedActivations, TokenBatch

TEXTS = ["<bos>", "\n", " the", "The", "the", " cat", " Cat", " sat", " baking", " 42", ",", " NASA", "un", " undone", " dogs", "b"]
SPECIAL = {0}
NEWLINE = 1
N_SEQ, SEQ_LEN, WIDTH, LAYERS = 16, 12, 8, (0, 2)


def test_word_forms_and_classes():
    assert word_form(" The") == word_form("the") == "the"
    assert token_classes(" baking") == ["space-prefixed", "suffix -ing"]
    assert token_classes(" NASA") == ["space-prefixed", "all caps"]
    assert token_classes("The") == ["capitalised"]
    assert token_classes(" 42") == ["space-prefixed", "number"]
    assert token_classes(",") == ["punctuation"]
    assert token_classes(" undone") == ["space-prefixed", "prefix un-"]
    assert token_classes("un") == []  # too short for the prefix
    assert token_classes(" dogs") == ["space-prefixed", "suffix -s"]


def test_feature_table_groups_variants_and_orders_kinds():
    tokens = [np.asarray([2, 3, 4, 4, 5, 6, 0, 0, 0, 7])]
    forms = frequent_forms(tokens, TEXTS, SPECIAL, 2)
    assert forms == ["the", "cat"]  # 4 occurrences of "the" variants, 2 of "cat"; BOS left out
    table = feature_table(TEXTS, forms, SPECIAL, 12)
    row = table.filter(pl.col("feature") == "token: the").row(0, named=True)
    assert row["tokens"] == [2, 3, 4] and row["kind"] == "token"
    assert table.filter(pl.col("feature") == "prev_token: the")["tokens"].to_list() == [[2, 3, 4]]
    assert table.filter(pl.col("feature") == "alphabet: b")["tokens"].to_list() == [[8, 15]]
    assert table.filter(pl.col("kind") == "position")["below"].to_list() == [2, 4, 8]
    matrices = feature_matrices(table, len(TEXTS), 12)
    assert matrices.width == table.height
    kinds = table["kind"].to_list()
    assert kinds.index("prev_token") > max(i for i, k in enumerate(kinds) if not k.startswith("prev_") and k != "position")
    assert matrices.position[:, 0].tolist() == [1, 1] + [0] * 10
    with_context = feature_table(TEXTS, forms, SPECIAL, 12, sources=["code", "wiki"])
    assert with_context.tail(2).select("feature", "kind", "source").rows() == [("context: code", "context", "code"), ("context: wiki", "context", "wiki")]
    context_matrices = feature_matrices(with_context, len(TEXTS), 12)
    assert context_matrices.sources == ("code", "wiki") and context_matrices.width == with_context.height
    lookup = context_matrices.context_columns(np.array([[-1, 0, 1, 2]], dtype=np.int16), ("wiki", "lit", "code"))
    assert lookup.tolist() == [[-1, 1, -1, 0]]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, len(TEXTS), size=(N_SEQ, SEQ_LEN))
    tokens[:, 0] = 0
    table = feature_table(TEXTS, ["the", "cat", "sat"], SPECIAL, SEQ_LEN, sources=("code", "wiki"))
    matrices = feature_matrices(table, len(TEXTS), SEQ_LEN)
    # each sequence: a document of one shard source, then one of another from a random cut; some unlabelled
    shard_names = ("wiki", "math", "code")  # the shard's own codes; `math` has no feature in the table
    codes = np.empty((N_SEQ, SEQ_LEN), dtype=np.int16)
    for row in range(N_SEQ):
        cut = rng.integers(2, SEQ_LEN)
        codes[row, :cut], codes[row, cut:] = rng.choice(3, size=2, replace=False)
    codes[:, 0] = -1
    codes[3, 5:] = -1
    contexts = matrices.context_columns(codes, shard_names)
    assert contexts[0, 0] == -1 and set(np.unique(contexts)) == {-1, 0, 1}
    acts = rng.normal(size=(len(LAYERS), N_SEQ, SEQ_LEN, WIDTH)).astype(np.float32)
    names = table["feature"].to_list()
    current = matrices.current[tokens]  # [S, T, F_cur]
    previous = np.concatenate([np.zeros((N_SEQ, 1, matrices.previous.shape[1])), matrices.previous[tokens[:, :-1]]], axis=1)
    position = np.broadcast_to(matrices.position[None], (N_SEQ, SEQ_LEN, matrices.position.shape[1]))
    context = np.stack([codes == shard_names.index(name) for name in ("code", "wiki")], axis=2)  # the table's order
    indicator = np.concatenate([current, previous, position, context], axis=2)  # [S, T, F]
    planted = {  # (slot, neuron) -> the feature its activation is a function of, plus little noise
        (0, 1): "token: the",
        (0, 5): "prev_alphabet: b",
        (1, 2): "position < 4",
        (1, 3): "class: number",
        (1, 6): "prev_class: space-prefixed",
        (1, 7): "context: wiki",
    }
    for (slot, neuron), name in planted.items():
        on = indicator[:, :, names.index(name)]
        acts[slot, :, :, neuron] = 3.0 * on + 0.2 * rng.normal(size=on.shape) + 100.0  # a large mean: no cancellation
    acts[1, :, :, 0] = 5.0  # constant
    return {"tokens": tokens, "table": table, "matrices": matrices, "acts": acts, "indicator": indicator, "planted": planted, "contexts": contexts}


def feed(accumulator: FeatureMoments, setup, sequences: slice, batch_size: int, scale: float = 1.0) -> None:
    rows = np.arange(N_SEQ)[sequences]
    for index, start in enumerate(range(0, len(rows), batch_size)):
        chosen = rows[start : start + batch_size]
        mask = torch.ones(len(chosen), SEQ_LEN, dtype=torch.bool)
        mask[:, 0] = False
        batch = TokenBatch(index, torch.from_numpy(setup["tokens"][chosen]), torch.from_numpy(chosen), mask, int(chosen[0]), 1, False)
        for slot, layer in enumerate(LAYERS):
            acts = torch.from_numpy(setup["acts"][slot][chosen])
            accumulator.update(PairedActivations(batch, layer, {"m": acts}, {"m": None}))


def moments(setup) -> FeatureMoments:
    return FeatureMoments("m", LAYERS, WIDTH, setup["matrices"], torch.device("cpu"), dropped_tokens=[NEWLINE], contexts=setup["contexts"])


def direct_reduction(setup) -> np.ndarray:
    keep = (setup["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)
    x = np.zeros((len(LAYERS), setup["indicator"].shape[2], WIDTH))
    for slot in range(len(LAYERS)):
        a = setup["acts"][slot][keep].astype(np.float64)  # [n, N]
        total = a.var(axis=0) * len(a)
        for f in range(setup["indicator"].shape[2]):
            on = setup["indicator"][:, :, f][keep] > 0
            if on.all() or not on.any():
                continue
            within = a[on].var(axis=0) * on.sum() + a[~on].var(axis=0) * (~on).sum()
            x[slot, f] = np.where(total > 0, 1 - within / np.where(total > 0, total, 1), 0.0)
    return x


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_variance_reduction_equals_direct_computation_in_one_pass_and_merged(setup, batch_size):
    one = moments(setup)
    feed(one, setup, slice(None), batch_size)
    parts = [moments(setup), moments(setup)]
    feed(parts[0], setup, slice(0, 5), 2)
    feed(parts[1], setup, slice(5, None), 3)  # another shift: the merge moves it
    merged = FeatureMoments.merge([parts[0].state(), parts[1].state()])
    expected = direct_reduction(setup)
    for state in (one.state(), merged):
        np.testing.assert_allclose(variance_reduction(state), expected, atol=1e-6)  # float32 products per batch
    assert expected[1, :, 0].max() == 0.0  # the constant neuron


def test_planted_families_are_recovered_exactly(setup):
    """Precision = recall = 1: the neurons planted as functions of one feature (token group, previous
    token's alphabet and class, position, token class, the document's source) and no other have a family,
    each its own."""
    accumulator = moments(setup)
    feed(accumulator, setup, slice(None), 4)
    table = family_columns([accumulator.state()], setup["table"], threshold=0.5)
    found = {(row["layer"], row["neuron"]): row["family"] for row in table.drop_nulls("family").iter_rows(named=True)}
    assert found == {(LAYERS[slot], neuron): name for (slot, neuron), name in setup["planted"].items()}
    assert table.filter(pl.col("layer") == 2, pl.col("neuron") == 0)["best_feature"].to_list() == [None]
    keep = (setup["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)
    names = setup["table"]["feature"].to_list()
    for (slot, neuron), name in setup["planted"].items():
        row = table.filter(pl.col("layer") == LAYERS[slot], pl.col("neuron") == neuron).row(0, named=True)
        on = setup["indicator"][:, :, names.index(name)][keep] > 0
        values = setup["acts"][slot][keep][:, neuron].astype(np.float64)
        assert row["best_mean_on"] == pytest.approx(values[on].mean()) and row["best_mean_off"] == pytest.approx(values[~on].mean())
    kinds = dict(zip(setup["table"]["feature"], setup["table"]["kind"]))
    assert all(row["family_kind"] == kinds[row["family"]] for row in table.drop_nulls("family").iter_rows(named=True))


def test_sums_moved_to_another_shift_equal_sums_about_it(setup):
    """`shifted` rewrites every sum exactly as if the deviations had been taken from the new shift."""
    from neuron_census.accumulators.feature_moments import shifted

    accumulator = moments(setup)
    feed(accumulator, setup, slice(None), 16)
    new = np.random.default_rng(5).normal(size=(len(LAYERS), WIDTH)) * 10
    moved = shifted(accumulator.state(), new)
    keep = (setup["tokens"] != NEWLINE) & (np.arange(SEQ_LEN) > 0)
    on = setup["indicator"][keep]  # [n, F]
    for slot in range(len(LAYERS)):
        deviation = setup["acts"][slot][keep].astype(np.float64) - new[slot]
        np.testing.assert_allclose(moved["sum"][slot], on.T @ deviation, rtol=1e-5)
        np.testing.assert_allclose(moved["square"][slot], on.T @ deviation**2, rtol=1e-5)
        np.testing.assert_allclose(moved["total_sum"][slot], deviation.sum(axis=0), rtol=1e-5)
        np.testing.assert_allclose(moved["total_square"][slot], (deviation**2).sum(axis=0), rtol=1e-5)


def test_features_explaining_the_same_variance_tie_to_the_first_in_table_order(monkeypatch):
    """A feature and its complement explain the same variance in exact arithmetic; rounding (which differs
    between machines and thread counts) must not choose between them: VRs within `TIE` go to the first."""
    from neuron_census.analyses import families

    features = pl.DataFrame({"feature": ["context: opening", "context: body", "token: cat"], "kind": ["context", "context", "token"]})
    state = {
        "layers": np.array([0]), "count": np.array([10]), "feature_count": np.array([4, 6, 2]), "shift": np.zeros((1, 3)),
        "sum": np.ones((1, 3, 3)), "total_sum": np.full((1, 3), 2.0),
    }
    reduction = np.array([[[0.6, 0.6, 0.2], [0.6 + 1e-9, 0.6 + 1e-9, 0.9], [0.3, 0.6 - 1e-9, 0.2]]])  # [L, F, N]
    monkeypatch.setattr(families, "variance_reduction", lambda s: reduction)
    table = family_columns([state], features, threshold=0.5)
    assert table["best_feature"].to_list() == ["context: opening", "context: opening", "context: body"]
    assert table["family"].to_list() == ["context: opening", "context: opening", "context: body"]
