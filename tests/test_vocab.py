"""Vocabulary projections of value vectors against direct slow computations, planted models and Fig. 5."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from transformers import OPTConfig, OPTForCausalLM

from neuron_census.models.adapters import FFNAdapter, adapter_for
from neuron_census.plots.vocab import (
    PROJECTION_FRAME_SCHEMA,
    ROW_INCHES,
    TABLE_COLUMNS,
    TITLE_INCHES,
    column_lengths,
    detector_projection_frame,
    format_entries,
    pick_examples,
    plot_detector_projections,
    suppression_summary,
    table_cells,
    table_height,
)
from neuron_census.analyses.vocab import (
    FIRED_SCHEMA,
    TRIGGER_SCHEMA,
    VOCAB_SCHEMA,
    chunk_rows,
    project_layer,
    trigger_columns,
    vocab_tables,
)

VOCAB, HIDDEN, FFN = 40, 16, 24
STYLE = {"figsize": [8.0, 3.0], "dpi": 50}
DETECTOR_SCHEMA = {"layer": pl.Int64, "neuron": pl.Int64, "detected_tokens": pl.List(pl.Int64)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------- models


def tiny_opt(vocab: int = VOCAB, hidden: int = HIDDEN) -> OPTForCausalLM:
    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        ffn_dim=FFN,
        num_hidden_layers=2,
        num_attention_heads=2,
        word_embed_proj_dim=hidden,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return OPTForCausalLM(config).eval()


def random_model(seed: int = 0) -> OPTForCausalLM:
    """Unit-scale random weights and a non-trivial final norm, so both conventions give different scores."""
    model = tiny_opt()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if "norm" in name and name.endswith("weight") else noise)
    return model


def integer_model(seed: int = 0) -> OPTForCausalLM:
    """Small integer embeddings and value vectors: exact scores full of ties (no final norm)."""
    model = tiny_opt()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed = model.model.decoder.embed_tokens.weight
        embed.copy_(torch.randint(-1, 2, embed.shape, generator=generator).float())
        for layer in model.model.decoder.layers:
            layer.fc2.weight.copy_(torch.randint(-1, 2, layer.fc2.weight.shape, generator=generator).float())
        model.model.decoder.layers[0].fc2.weight[:, 3] = 0.0  # every token ties
    return model


def orthonormal_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """n orthonormal rows, each orthogonal to the all-ones vector (LayerNorm then only rescales them)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.cat([torch.ones(dim, 1), torch.randn(dim, n, generator=generator, dtype=torch.float64)], dim=1)
    q, _ = torch.linalg.qr(basis)
    return q[:, 1:].T.float()


# neuron -> (value vector as {token: coefficient}), in layers 0 and 1
PLANTED = {
    (0, 2): {5: 3.0, 7: -2.0},
    (0, 6): {4: -2.5},
    (1, 0): {9: 1.5, 1: -3.0},
    (1, 11): {3: 2.0, 8: -1.0},
}


def planted_model() -> OPTForCausalLM:
    model = tiny_opt(vocab=12, hidden=16)
    embedding = orthonormal_rows(12, 16)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.copy_(embedding)
        model.model.decoder.final_layer_norm.weight.fill_(1.0)
        model.model.decoder.final_layer_norm.bias.fill_(0.0)
        for (layer, neuron), coefficients in PLANTED.items():
            vector = sum(c * embedding[t] for t, c in coefficients.items())
            model.model.decoder.layers[layer].fc2.weight[:, neuron] = vector
    return model


def reference_scores(model: OPTForCausalLM, layer: int, apply_final_norm: bool) -> np.ndarray:
    """[N, vocab] float64 logits of every value vector, straight from the weights."""
    decoder = model.model.decoder
    values = decoder.layers[layer].fc2.weight.detach().T.double()
    if apply_final_norm:
        norm = decoder.final_layer_norm
        values = F.layer_norm(values, norm.normalized_shape, norm.weight.double(), norm.bias.double(), norm.eps)
    return (values @ decoder.embed_tokens.weight.double().T).detach().numpy()


def slow_rank(row: np.ndarray, top_n: int, descending: bool) -> list[int]:
    sign = -1 if descending else 1
    return sorted(range(row.size), key=lambda u: (sign * row[u], u))[:top_n]


def count_calls(adapter: FFNAdapter) -> list[int]:
    """Wraps project_to_vocab and records the rows of each call."""
    rows: list[int] = []
    original = adapter.project_to_vocab

    def recording(vectors: torch.Tensor, apply_final_norm: bool) -> torch.Tensor:
        rows.append(vectors.shape[0])
        return original(vectors, apply_final_norm)

    adapter.project_to_vocab = recording  # type: ignore[method-assign]
    return rows


# ---------------------------------------------------------------------------------------- projection


def test_chunk_rows_bounds_the_block() -> None:
    assert chunk_rows(50272, 256 * 2**20) == 256 * 2**20 // (4 * 50272)
    assert chunk_rows(50272, 256 * 2**20) * 4 * 50272 <= 256 * 2**20
    assert chunk_rows(100, 10) == 1


@pytest.mark.parametrize("apply_final_norm", [False, True])
def test_project_layer_matches_full_projection(apply_final_norm: bool) -> None:
    model = random_model()
    adapter = adapter_for(model, name="tiny")
    calls = count_calls(adapter)
    top_n = 4
    result = project_layer(adapter, 1, top_n=top_n, apply_final_norm=apply_final_norm, max_chunk_bytes=5 * 4 * VOCAB)
    assert calls == [5, 5, 5, 5, 4]  # 24 neurons in blocks of 5

    scores = reference_scores(model, 1, apply_final_norm)
    full = torch.from_numpy(scores)
    top = torch.topk(full, top_n, dim=1)
    bottom = torch.topk(full, top_n, dim=1, largest=False)
    np.testing.assert_array_equal(result["top_ids"], top.indices.numpy())
    np.testing.assert_array_equal(result["bottom_ids"], bottom.indices.numpy())
    np.testing.assert_allclose(result["top_scores"], top.values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["bottom_scores"], bottom.values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["score_mean"], scores.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["score_std"], scores.std(axis=1), rtol=1e-5)
    assert result["top_ids"].dtype == np.int64 and result["score_std"].dtype == np.float64

    other = reference_scores(model, 1, not apply_final_norm)
    assert not np.allclose(scores, other)  # the convention matters


def test_ties_go_to_the_lower_token_id() -> None:
    model = integer_model()
    adapter = adapter_for(model, name="ints")
    top_n = 6
    result = project_layer(adapter, 0, top_n=top_n, apply_final_norm=False, max_chunk_bytes=7 * 4 * VOCAB)
    scores = reference_scores(model, 0, False)
    assert len(np.unique(scores[0])) < VOCAB  # ties really occur
    expected_top = [slow_rank(row, top_n, descending=True) for row in scores]
    expected_bottom = [slow_rank(row, top_n, descending=False) for row in scores]
    np.testing.assert_array_equal(result["top_ids"], expected_top)
    np.testing.assert_array_equal(result["bottom_ids"], expected_bottom)
    np.testing.assert_array_equal(result["top_scores"], np.take_along_axis(scores, np.array(expected_top), 1))
    np.testing.assert_array_equal(result["top_ids"][3], np.arange(top_n))  # zero vector: all tie
    np.testing.assert_array_equal(result["bottom_ids"][3], np.arange(top_n))
    assert result["score_std"][3] == 0.0


def test_project_layer_refuses_bad_top_n() -> None:
    adapter = adapter_for(integer_model(), name="ints")
    with pytest.raises(ValueError, match="top_n"):
        project_layer(adapter, 0, top_n=VOCAB + 1, apply_final_norm=False)


# ------------------------------------------------------------------------------------------ triggers


def direct_triggers(
    scores: np.ndarray, neurons: list[int], triggers: list[list[int]]
) -> tuple[list[float], list[float]]:
    z, percentile = [], []
    for neuron, tokens in zip(neurons, triggers):
        row = scores[neuron]
        z.append(float(np.mean([(row[t] - row.mean()) / row.std() for t in tokens])))
        percentile.append(float(np.mean([np.sum(row < row[t]) / row.size for t in tokens])))
    return z, percentile


def every_pair(adapter: FFNAdapter):
    """(neuron, token) pairs of every layer, sorted by neuron: as if each neuron fired on each token."""
    n_neurons, vocab = adapter.n_neurons, adapter.vocab_size
    return lambda layer: (np.repeat(np.arange(n_neurons), vocab), np.tile(np.arange(vocab), n_neurons))


def vocab_table(adapter, token_strings, detectors, *, layers, **settings) -> pl.DataFrame:
    """The projection table joined with the trigger columns of `detectors`, as neurons.parquet joins them."""
    table, fired = vocab_tables(adapter, token_strings, every_pair(adapter), layers=layers, **settings)
    assert dict(fired.schema) == FIRED_SCHEMA
    assert fired.height == len(layers) * adapter.n_neurons * adapter.vocab_size
    triggers = trigger_columns(detectors, fired)
    assert dict(triggers.select(pl.exclude("layer", "neuron")).schema) == TRIGGER_SCHEMA
    return table.join(triggers, on=["layer", "neuron"], how="left", maintain_order="left")


@pytest.mark.parametrize("apply_final_norm", [False, True])
def test_fired_token_scores_match_direct_computation(apply_final_norm: bool) -> None:
    """Each fired pair's z-score and strictly-below fraction, in blocks of three neurons, with ties."""
    model = random_model(seed=3)
    with torch.no_grad():  # ties: tokens 4 and 5 score alike for every neuron
        model.lm_head.weight[5] = model.lm_head.weight[4]
    adapter = adapter_for(model, name="tiny")
    neurons, tokens = np.array([0, 0, 5, 5, 5, 5, 7, 23, 23]), np.array([0, 4, 1, 5, 4, 3, 30, 39, 2])
    result = project_layer(
        adapter, 0, top_n=2, apply_final_norm=apply_final_norm, max_chunk_bytes=3 * 4 * VOCAB, fired=(neurons, tokens)
    )
    scores = reference_scores(model, 0, apply_final_norm)
    z = [(scores[n, t] - scores[n].mean()) / scores[n].std() for n, t in zip(neurons, tokens)]
    below = [np.sum(scores[n] < scores[n, t]) / VOCAB for n, t in zip(neurons, tokens)]
    np.testing.assert_allclose(result["token_z"], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result["token_percentile"], below)
    assert result["token_percentile"][3] == result["token_percentile"][4]  # a tie: neither is below the other


def test_trigger_columns_average_the_detected_tokens_scores() -> None:
    fired = pl.DataFrame(
        {"layer": [0, 0, 0, 1, 1], "neuron": [1, 1, 2, 1, 3], "token": [4, 6, 4, 4, 0],
         "token_z": [1.0, -3.0, 0.5, float("nan"), 2.0], "token_percentile": [0.5, 0.25, 0.75, 0.0, 1.0]},
        schema=FIRED_SCHEMA,
    )
    detectors = pl.DataFrame(
        {"layer": [0, 0, 1, 1], "neuron": [1, 2, 1, 3], "detected_tokens": [[4, 6], [], [4], [0]]}, schema=DETECTOR_SCHEMA
    )
    got = trigger_columns(detectors, fired)
    assert got["trigger_z"].to_list() == [-1.0, None, None, 2.0]  # no triggers, no spread (NaN): null
    assert got["trigger_percentile"].to_list() == [0.375, None, 0.0, 1.0]
    assert got["suppresses_trigger"].to_list() == [True, None, None, False]
    unscored = detectors.with_columns(detected_tokens=pl.Series([[4, 5], [], [4], [0]], dtype=pl.List(pl.Int64)))
    with pytest.raises(ValueError, match="trigger token 5 of neuron 1 in layer 0 was not scored"):
        trigger_columns(unscored, fired)


# ---------------------------------------------------------------------------------------- the table


TOKENS = ["Ġthe", "the", "<s>", "\n", "ĠThe", "Ġa", "\t", "x\r", "dog", "Ġcat", "$5", "end"]
SHOWN = {3: "\\n", 6: "\\t", 7: "x\\r"}  # as the table shows them


@pytest.mark.parametrize("apply_final_norm", [False, True])
def test_planted_value_vectors_give_planted_tokens(apply_final_norm: bool) -> None:
    adapter = adapter_for(planted_model(), name="planted")
    detectors = pl.DataFrame(
        {"layer": [0, 0, 1, 1], "neuron": [2, 6, 0, 11], "detected_tokens": [[5], [4, 4], [1], [3, 8]]},
        schema=DETECTOR_SCHEMA,
    )
    table = vocab_table(adapter, TOKENS, detectors, layers=[0, 1], top_n=2, apply_final_norm=apply_final_norm)
    rows = {(r["layer"], r["neuron"]): r for r in table.iter_rows(named=True)}
    for (layer, neuron), coefficients in PLANTED.items():
        row = rows[(layer, neuron)]
        promoted = max(coefficients, key=coefficients.get)
        suppressed = min(coefficients, key=coefficients.get)
        if coefficients[suppressed] < 0:
            assert row["vocab_bottom_ids"][0] == suppressed
            assert row["vocab_bottom_tokens"][0] == SHOWN.get(suppressed, TOKENS[suppressed])
        if coefficients[promoted] > 0:
            assert row["vocab_top_ids"][0] == promoted
        if not apply_final_norm:
            assert row["vocab_top_scores"][0] == pytest.approx(max(max(coefficients.values()), 0.0), abs=1e-5)
    assert rows[(0, 2)]["vocab_bottom_tokens"][0] == "x\\r"
    # (1, 11) has triggers scoring +2 and -1: their mean z is positive, so it does not suppress them
    expected = {(0, 2): False, (0, 6): True, (1, 0): True, (1, 11): False}
    for key, suppresses in expected.items():
        assert rows[key]["suppresses_trigger"] is suppresses
    assert rows[(0, 2)]["trigger_percentile"] == pytest.approx(11 / 12)
    assert rows[(0, 6)]["trigger_percentile"] == 0.0
    assert table["vocab_final_norm"].to_list() == [apply_final_norm] * table.height


def test_vocab_table_dtypes_and_null_rules() -> None:
    model = random_model(seed=5)
    adapter = adapter_for(model, name="tiny")
    detectors = pl.DataFrame(
        {"layer": [1, 1, 1], "neuron": [3, 9, 20], "detected_tokens": [[2, 7], [], [35]]},
        schema=DETECTOR_SCHEMA,
    )
    short_tokens = [f"tok{i}\n" for i in range(VOCAB - 2)]  # padded vocabulary: the last two ids have no string
    table = vocab_table(adapter, short_tokens, detectors, layers=[1], top_n=VOCAB, apply_final_norm=True)
    assert dict(table.schema) == VOCAB_SCHEMA | TRIGGER_SCHEMA
    assert table.height == FFN and table["neuron"].to_list() == list(range(FFN))
    with_trigger = table.filter(pl.col("trigger_z").is_not_null())["neuron"].to_list()
    assert with_trigger == [3, 20]  # an empty trigger list and non-detectors stay null
    for column in ("trigger_percentile", "suppresses_trigger"):
        assert table.filter(pl.col(column).is_not_null())["neuron"].to_list() == [3, 20]
    tokens = table["vocab_top_tokens"][0].to_list()
    assert set(tokens) == {f"tok{i}\\n" for i in range(VOCAB - 2)} | {f"<id:{VOCAB - 2}>", f"<id:{VOCAB - 1}>"}
    z, percentile = direct_triggers(reference_scores(model, 1, True), [3, 20], [[2, 7], [35]])
    np.testing.assert_allclose(table.filter(pl.col("trigger_z").is_not_null())["trigger_z"], z, rtol=1e-5)
    np.testing.assert_allclose(table["trigger_percentile"].drop_nulls(), percentile)
    scores = reference_scores(model, 1, True)
    np.testing.assert_allclose(table["vocab_score_mean"], scores.mean(axis=1), rtol=1e-5, atol=1e-6)

    none = vocab_table(adapter, short_tokens, pl.DataFrame(schema=DETECTOR_SCHEMA), layers=[0], top_n=3)
    assert none["trigger_z"].null_count() == none.height == FFN
    assert none["suppresses_trigger"].null_count() == FFN
    empty, fired = vocab_tables(adapter, short_tokens, every_pair(adapter), layers=[])
    assert empty.is_empty() and dict(empty.schema) == VOCAB_SCHEMA and fired.is_empty()


# -------------------------------------------------------------------------------------- Fig. 5's frame


NEURON_SCHEMA = {
    "model": pl.Utf8,
    "layer": pl.Int64,
    "neuron": pl.Int64,
    "token_detector": pl.Boolean,
    "detected_token_strings": pl.List(pl.Utf8),
    "suppresses_trigger": pl.Boolean,
    "trigger_z": pl.Float64,
    "vocab_top_tokens": pl.List(pl.Utf8),
    "vocab_top_scores": pl.List(pl.Float64),
    "vocab_bottom_tokens": pl.List(pl.Utf8),
    "vocab_bottom_scores": pl.List(pl.Float64),
}


def neurons_table() -> pl.DataFrame:
    rows = [
        ("zeta", 1, 4, True, ["Ġthe", "the"], True, -1.5, ["Ġa", "Ġan", "x"], [3.124, 2.5, 1.0], ["Ġthe", "\n"],
         [-4.0, -3.996]),
        ("zeta", 0, 9, False, [], None, None, ["q"], [1.0], ["r"], [-1.0]),
        ("zeta", 0, 2, True, ["\n"], False, 0.25, ["$x"], [0.5], ["y"], [-0.5]),
        ("alpha", 3, 1, True, ["dog", "Ġdog", "Dog"], None, None, None, None, None, None),
        ("zeta", 1, 0, True, ["cat"], True, -0.1, ["a"], [1.0], ["b"], [-2.0]),
        ("alpha", 0, 7, None, ["x"], True, -1.0, ["a"], [1.0], ["b"], [-2.0]),
    ]
    return pl.DataFrame(rows, schema=NEURON_SCHEMA, orient="row")


def test_format_entries() -> None:
    assert format_entries(["Ġthe", "the", "x"], [3.124, 2.5, 1.0], 2) == "Ġthe (3.12) | the (2.5)"
    assert format_entries(["a\n", "b"], None, 5) == "a\\n | b"
    assert format_entries(["n"], [-0.00512], 5) == "n (-0.00512)"
    assert format_entries(None, None, 3) is None


def test_detector_projection_frame() -> None:
    frame = detector_projection_frame(neurons_table(), n_show=2)
    assert dict(frame.schema) == PROJECTION_FRAME_SCHEMA
    expected = [("zeta", 0, 2), ("zeta", 1, 0), ("zeta", 1, 4), ("alpha", 3, 1)]  # legend order, then layer, neuron
    assert frame.select("model", "layer", "neuron").rows() == expected
    first = frame.row(2, named=True)
    assert first["detected_tokens"] == "Ġthe | the"
    assert first["promoted"] == "Ġa (3.12) | Ġan (2.5)"
    assert first["suppressed"] == "Ġthe (-4) | \\n (-4)"
    assert first["trigger_z"] == -1.5 and first["suppresses_trigger"] is True
    assert frame.row(0, named=True)["detected_tokens"] == "\\n"
    last = frame.row(3, named=True)
    assert last["detected_tokens"] == "dog | Ġdog" and last["promoted"] is None and last["suppresses_trigger"] is None

    bare = neurons_table().select("model", "layer", "neuron", "token_detector", "detected_token_strings")
    assert detector_projection_frame(bare)["promoted"].null_count() == 4
    assert detector_projection_frame(neurons_table().head(0)).is_empty()


def slow_pick(frame: pl.DataFrame, n: int) -> list[tuple[str, int, int]]:
    groups: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for model, layer, neuron in frame.select("model", "layer", "neuron").rows():
        groups.setdefault((model, layer), []).append((model, layer, neuron))
    picked: list[tuple[str, int, int]] = []
    turn = 0
    while len(picked) < n and any(len(g) > turn for g in groups.values()):
        picked += [g[turn] for g in groups.values() if len(g) > turn]
        turn += 1
    chosen = set(picked[:n])
    return [row for row in frame.select("model", "layer", "neuron").rows() if row in chosen]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 10])
def test_pick_examples_round_robin(n: int) -> None:
    rng = np.random.default_rng(n)
    rows = [
        (model, layer, int(neuron))
        for model in ("b", "a")
        for layer in range(3)
        for neuron in rng.choice(50, 3 - layer, replace=False)
    ]
    neurons = pl.DataFrame(rows, schema={"model": pl.Utf8, "layer": pl.Int64, "neuron": pl.Int64}, orient="row")
    frame = detector_projection_frame(neurons.with_columns(token_detector=pl.lit(True)))
    assert pick_examples(frame, n).select("model", "layer", "neuron").rows() == slow_pick(frame, n)


def _render(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png")


def test_plot_detector_projections_renders_table() -> None:
    style = {**STYLE, "n_examples": 3, "n_tokens": 1, "title": "Fig 5"}
    fig = plot_detector_projections({"neurons": neurons_table()}, style)
    _render(fig)
    ax = fig.axes[0]
    cells = table_cells(pick_examples(detector_projection_frame(neurons_table(), n_show=1), 3))
    assert len(cells) == 3 and cells[0][:2] == ["zeta", "0:2"]
    assert cells[0][3] == r"\$x (0.5)"  # shown literally, not as math
    drawn = ax.tables[0].get_celld()
    assert drawn[(0, 2)].get_text().get_text() == "detected tokens"
    assert drawn[(1, 4)].get_text().get_text() == "y (-0.5)"
    assert ax.get_title() == "Fig 5\n2 of 3 token detectors suppress their triggers (1 without a projection)"


@pytest.mark.parametrize("n_examples", [1, 3])
def test_detector_table_figure_is_as_tall_as_its_table(n_examples: int) -> None:
    """A table of a few detectors gets a short figure (at most the style's height) that it fills."""
    style = {**STYLE, "figsize": [8.0, 6.0], "n_examples": n_examples, "title": "Fig 5"}
    fig = plot_detector_projections({"neurons": neurons_table()}, style)
    _render(fig)
    width, height = fig.get_size_inches()
    assert width == 8.0 and height == table_height(n_examples, 6.0) < 6.0
    table = fig.axes[0].tables[0].get_window_extent()
    figure = fig.bbox
    assert figure.y0 <= table.y0 < table.y1 <= figure.y1  # drawn inside the figure
    assert figure.height - table.height < (TITLE_INCHES + ROW_INCHES) * fig.dpi  # and fills it, title aside
    assert table_height(40, 6.0) == 6.0  # a long table is capped at the style's height


def test_column_lengths_follow_the_longest_text() -> None:
    cells = [["m", "0:1", "abc", "x" * 40, "y"], ["model-long", "10:2", "d", "e", "f"]]
    lengths = np.array([len("model-long"), len("layer:neuron"), len("detected tokens"), 40, len("top suppressed")]) + 2
    assert column_lengths(cells) == lengths.tolist()
    assert len(TABLE_COLUMNS) == 5


def test_suppression_summary() -> None:
    frame = detector_projection_frame(neurons_table().filter(pl.col("model") == "zeta"))
    assert suppression_summary(frame) == "2 of 3 token detectors suppress their triggers"


@pytest.mark.parametrize(
    "neurons",
    [
        neurons_table().with_columns(token_detector=pl.lit(False)),
        neurons_table().head(0),
        pl.DataFrame({"model": ["a"], "layer": [0], "neuron": [0]}),
    ],
)
def test_plot_detector_projections_without_detectors(neurons: pl.DataFrame) -> None:
    fig = plot_detector_projections({"neurons": neurons}, STYLE)
    _render(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no token detectors"]
    assert not fig.axes[0].tables
    assert fig.get_size_inches()[1] == table_height(0, STYLE["figsize"][1]) < STYLE["figsize"][1]  # no blank page
