"""FFN sub-updates (Geva et al. 2022): the logit lens, ranks, saturation layers and dominant sub-updates of one
pass over cut sequences against each prefix run on its own, and the promotion / elimination labels."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.analyses.subupdates import (
    SubupdateSettings,
    cut_positions,
    label_subupdates,
    layer_shares,
    lens_pass,
    ranks,
    saturation_layers,
)
from neuron_census.models.adapters import adapter_for


def test_ranks_count_the_tokens_scoring_higher():
    logits = torch.tensor([[0.1, 3.0, 2.0, 5.0], [1.0, 1.0, 0.0, -1.0]])
    assert ranks(logits, torch.tensor([2, 0])).tolist() == [2, 0]
    assert ranks(logits, torch.tensor([3, 3])).tolist() == [0, 3]


def test_saturation_layer_is_the_first_from_which_every_layer_agrees_with_the_last():
    top_after = np.array([[5, 7, 7, 7], [7, 7, 5, 7], [7, 7, 7, 7], [1, 2, 3, 4]])
    assert saturation_layers(top_after).tolist() == [1, 3, 0, 3]


def _models() -> list[torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    return [
        GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_inner=48, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)).eval(),
        OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=32, ffn_dim=48, num_hidden_layers=3, num_attention_heads=4, word_embed_proj_dim=32)).eval(),
        GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4)).eval(),
    ]


def _direct(model: torch.nn.Module, prefix: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The prefix alone, through the model: per layer the residual entering the FFN's sum (the FFN norm's
    input, or for parallel attention the layer input plus the attention output), the layer output, and the
    FFN activations, at the last position."""
    adapter = adapter_for(model, name="m")
    got: dict[str, list[torch.Tensor]] = {"before": [], "after": [], "acts": []}
    hooks = []
    parallel = getattr(model.config, "use_parallel_residual", False)
    for layer in range(adapter.n_layers):
        block = adapter.decoder_layers()[layer]
        if parallel:
            hooks.append(block.register_forward_pre_hook(lambda _m, args: got["before"].append(args[0][0, -1].clone())))
            hooks.append(block.attention.register_forward_hook(lambda _m, _a, out: got["before"].__setitem__(-1, got["before"][-1] + out[0][0, -1])))
        else:
            hooks.append(adapter.ffn_norm(layer).register_forward_pre_hook(lambda _m, args: got["before"].append(args[0].reshape(-1, 32)[-1].clone())))
        hooks.append(block.register_forward_hook(lambda _m, _a, out: got["after"].append((out[0] if isinstance(out, tuple) else out)[0, -1])))
        hooks.append(adapter.neuron_input_module(layer).register_forward_pre_hook(lambda _m, args: got["acts"].append(args[0].reshape(-1, 48)[-1])))
    with torch.no_grad():
        model(input_ids=prefix[None], use_cache=False)
    for hook in hooks:
        hook.remove()
    return got


@pytest.mark.parametrize("scoring", ["absolute", "signed"])
def test_one_pass_over_cut_sequences_equals_each_prefix_on_its_own(scoring):
    """GPT-2, pre-LN OPT and parallel-attention GPT-NeoX: the lens ranks and top tokens, the saturation
    layer, the dominant sub-updates and the random ones of the one batched pass equal those computed from
    each prefix alone (final norm and head applied by hand)."""
    settings = SubupdateSettings(top=5, random=3, candidates=4, min_position=2, scoring=scoring, seed=1)
    tokens = torch.randint(1, 40, (6, 12), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 0
    positions = cut_positions(len(tokens), tokens.shape[1], settings)
    assert positions.min() >= 2 and positions.max() <= 11 and len(set(positions.tolist())) > 1
    for model in _models():
        adapter = adapter_for(model, name="m")
        found = lens_pass(model, adapter, tokens, positions, settings, batch_size=4)
        lens = found.lens.sort("prediction", "layer")
        head = model.get_output_embeddings().weight
        norm = adapter.final_norm()
        for prediction, position in enumerate(positions):
            direct = _direct(model, tokens[prediction, : position + 1])
            with torch.no_grad():
                logits_after = [norm(x) @ head.T for x in direct["after"]]
                logits_before = [norm(x) @ head.T for x in direct["before"]]
            final = int(logits_after[-1].argmax())
            rows = lens.filter(pl.col("prediction") == prediction).to_dicts()
            top_after = [int(x.argmax()) for x in logits_after]
            for layer, row in enumerate(rows):
                np.testing.assert_allclose(found.residual[prediction, layer], direct["before"][layer].numpy(), rtol=1e-4, atol=1e-5)
                written = direct["after"][layer] - direct["before"][layer]
                np.testing.assert_allclose(found.ffn[prediction, layer], written.numpy(), rtol=1e-4, atol=1e-5)
                assert row["position"] == position and row["final_token"] == final
                assert row["top_before"] == int(logits_before[layer].argmax()) and row["top_after"] == top_after[layer]
                assert row["rank_before"] == int((logits_before[layer] > logits_before[layer][final]).sum())
                assert row["rank_after"] == int((logits_after[layer] > logits_after[layer][final]).sum())
                above = logits_before[layer].argsort(descending=True)[: min(row["rank_before"], 4)].tolist()
                assert row["candidates"] == above
                acts = direct["acts"][layer]
                norms = adapter.value_vectors(layer).norm(dim=1)
                scores = acts * norms if scoring == "signed" else acts.abs() * norms
                subs = found.subupdates.filter(pl.col("prediction") == prediction, pl.col("layer") == layer)
                dominant = subs.filter(pl.col("kind") == "dominant").sort("place")
                assert dominant["neuron"].to_list() == scores.argsort(descending=True)[:5].tolist()
                np.testing.assert_allclose(dominant["activation"].to_numpy(), acts[dominant["neuron"].to_list()].numpy(), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(
                    dominant["score"].to_numpy(), (acts * norms)[dominant["neuron"].to_list()].numpy(), rtol=1e-4, atol=1e-5
                )
                assert subs.filter(pl.col("kind") == "random").height == 3
            expected = next(layer for layer in range(3) if all(t == final for t in top_after[layer:]))
            assert {row["saturation_layer"] for row in rows} == {expected}
        # the random baseline does not depend on the batch size
        again = lens_pass(model, adapter, tokens, positions, settings, batch_size=5)
        def drawn(result):
            return result.subupdates.filter(pl.col("kind") == "random").sort("prediction", "layer", "place").select("prediction", "layer", "neuron")

        assert drawn(again).equals(drawn(found))


def test_labels_read_the_value_vectors_top_or_bottom_tokens_by_the_activations_sign():
    lens = pl.DataFrame({"prediction": [0, 0], "layer": [0, 1], "final_token": [7, 7], "candidates": [[3, 4], []]})
    vocab = pl.DataFrame({"layer": [0, 0, 0, 1], "neuron": [0, 1, 2, 0], "vocab_top_ids": [[7, 1], [3, 9], [5, 6], [7, 3]],
                          "vocab_bottom_ids": [[4, 2], [7, 8], [1, 2], [4, 3]]})
    subs = pl.DataFrame({
        "prediction": [0, 0, 0, 0, 0, 0], "layer": [0, 0, 0, 0, 1, 0], "kind": ["dominant"] * 5 + ["random"], "place": [0, 1, 2, 3, 0, 0],
        "neuron": [0, 1, 0, 2, 0, 1], "activation": [2.0, -1.0, -1.0, 0.0, 1.0, 1.0], "score": [4.0, -1.0, -2.0, 0.0, 1.0, 3.0],
    })
    labelled = label_subupdates(subs, lens, vocab)
    # +neuron 0: raises 7 (the prediction), lowers 4 (a candidate); -neuron 1: raises its bottom (7), lowers 3;
    # -neuron 0: raises 4 and 2, lowers 7 and 1; neuron 2 at 0: nothing; layer 1: no candidates
    assert labelled["promotes"].to_list() == [True, True, False, False, True, False]
    assert labelled["eliminates"].to_list() == [True, True, False, False, False, False]
    shares = layer_shares(labelled).filter(pl.col("layer") == 0)
    assert shares.select("kind", "n", "promotes", "eliminates").rows() == [("dominant", 4, 0.5, 0.5), ("random", 1, 0.0, 0.0)]


def test_figures_draw_saturation_shares_and_promotion_against_random():
    from neuron_census.plots.subupdates import plot_saturation_layers, plot_subupdate_roles

    predictions = pl.DataFrame(
        {"model": ["m"] * 6, "prediction": [0, 0, 1, 1, 2, 2], "layer": [0, 1] * 3, "saturation_layer": [0, 0, 1, 1, 1, 1]}
    )
    fig = plot_saturation_layers({"predictions": predictions}, {})
    (drawn,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(drawn.get_ydata(), [100 / 3, 200 / 3])
    np.testing.assert_allclose(drawn.get_xdata(), [0.0, 1.0])
    shares = pl.DataFrame(
        {"model": ["m"] * 4, "layer": [0, 0, 1, 1], "kind": ["dominant", "random"] * 2, "n": [4] * 4,
         "promotes": [0.5, 0.0, 0.75, 0.25], "eliminates": [0.25, 0.0, 0.5, 0.0]}
    )
    fig = plot_subupdate_roles({"subupdate_layers": shares}, {})
    left, right = fig.axes
    assert [tuple(line.get_ydata()) for line in left.get_lines()] == [(50.0, 75.0), (0.0, 25.0)]
    assert [tuple(line.get_ydata()) for line in right.get_lines()] == [(25.0, 50.0), (0.0, 0.0)]
    assert [line.get_linestyle() for line in left.get_lines()] == ["-", "--"]


def test_planted_subupdates_are_found_exactly():
    """Precision = recall = 1 on the planted model: at every prediction cut at the trigger, layer 1's two
    dominant sub-updates are exactly the promoter (promotes A, eliminates nothing) and the eliminator
    (eliminates B, promotes nothing), the final prediction is A, B is the only candidate, and the
    saturation layer is 1; no other sub-update (dominant or random, any layer) promotes or eliminates, and
    predictions cut elsewhere have no sub-update that writes."""
    from neuron_census.analyses.vocab import vocab_tables
    from neuron_census.testing.planted_subupdates import build_subupdate_model

    plant = build_subupdate_model()
    adapter = adapter_for(plant.model, name="p")
    tokens = torch.randint(2, 48, (10, 16), generator=torch.Generator().manual_seed(4))
    tokens[tokens == plant.trigger] = 2
    tokens[:, 0] = 0
    settings = SubupdateSettings(top=2, random=5, candidates=4, min_position=2, seed=3)
    positions = cut_positions(len(tokens), tokens.shape[1], settings)
    at_trigger = [0, 2, 3, 7]
    tokens[at_trigger, positions[at_trigger]] = plant.trigger
    found = lens_pass(plant.model, adapter, tokens, positions, settings, batch_size=4)
    vocab, _ = vocab_tables(adapter, [f"t{i}" for i in range(48)], lambda _layer: (np.zeros(0, np.int64), np.zeros(0, np.int64)), layers=[0, 1, 2])
    labelled = label_subupdates(found.subupdates, found.lens, vocab)
    lens = found.lens.filter(pl.col("prediction").is_in(at_trigger))
    assert set(lens["final_token"].to_list()) == {plant.promoted} and set(lens["saturation_layer"].to_list()) == {plant.saturation_layer}
    assert lens.filter(pl.col("layer") == 1)["candidates"].to_list() == [[plant.candidate]] * 4
    assert lens.filter(pl.col("layer") == 1)["rank_before"].to_list() == [1] * 4
    writing = labelled.filter(pl.col("score") != 0)
    assert set(writing["prediction"].to_list()) == set(at_trigger)
    roles = {(row["prediction"], row["layer"], row["neuron"], row["kind"]): (row["promotes"], row["eliminates"]) for row in writing.iter_rows(named=True)}
    expected = {}
    for prediction in at_trigger:
        expected[prediction, 1, plant.promoter[1], "dominant"] = (True, False)
        expected[prediction, 1, plant.eliminator[1], "dominant"] = (False, True)
    assert {key: value for key, value in roles.items() if key[3] == "dominant"} == expected
    flagged = labelled.filter(pl.col("promotes") | pl.col("eliminates"))
    assert set(zip(flagged["prediction"], flagged["layer"], flagged["neuron"])) <= {(p, 1, n) for p in at_trigger for n in (3, 7)}


@pytest.mark.parametrize("final_norm", [False, True])
def test_projection_similarity_equals_the_cosine_of_explicit_projections(final_norm):
    """Through the Gram matrix of the head: the cosine of E v_i and E v_j as `project_to_vocab` forms them
    (final norm with a bias, OPT-350m's project_out), and complete-linkage clusters of those distances."""
    from sklearn.cluster import AgglomerativeClustering
    from transformers import OPTConfig, OPTForCausalLM

    from neuron_census.analyses.concepts import cluster_layer, projection_similarity

    torch.manual_seed(5)
    models = [
        _models()[0],
        OPTForCausalLM(OPTConfig(vocab_size=40, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                                 word_embed_proj_dim=16, do_layer_norm_before=False)).eval(),
    ]
    with torch.no_grad():
        models[0].transformer.ln_f.bias.normal_()
        models[0].transformer.ln_f.weight.uniform_(0.5, 1.5)
    for model in models:
        adapter = adapter_for(model, name="m")
        output = adapter.neuron_input_module(1).weight
        with torch.no_grad():  # neuron 5 writes nothing: its projection is the head's constant alone
            if adapter.family == "opt":
                output[:, 5] = 0.0
            else:
                output[5] = 0.0
            projections = adapter.project_to_vocab(adapter.value_vectors(1), apply_final_norm=final_norm).double().numpy()
        norms = np.linalg.norm(projections, axis=1)
        direct = projections @ projections.T / np.outer(norms, norms).clip(min=1e-300)
        direct[norms == 0] = 0.0
        direct[:, norms == 0] = 0.0
        got = projection_similarity(adapter, 1, final_norm)
        np.testing.assert_allclose(got, direct, atol=1e-6)
        labels = cluster_layer(got, 6)
        distance = 1.0 - direct
        np.fill_diagonal(distance, 0.0)
        expected = AgglomerativeClustering(n_clusters=6, metric="precomputed", linkage="complete").fit_predict(distance)
        pairs = lambda x: x[:, None] == x[None, :]  # noqa: E731
        assert (pairs(labels) == pairs(expected)).all() and labels[0] == 0 and len(set(labels)) == 6


def test_planted_concepts_are_clustered_exactly():
    """Value vectors drawn around four directions (a concept each): four clusters, precision = recall = 1,
    each cluster's top token the one its direction's projection raises most."""
    from neuron_census.analyses.concepts import cluster_tables
    from neuron_census.testing.planted_subupdates import build_subupdate_model

    model = build_subupdate_model().model
    adapter = adapter_for(model, name="p")
    rng = np.random.default_rng(0)
    head = model.lm_head.weight.detach().double().numpy()
    concept_tokens = [5, 17, 29, 41]
    groups = rng.integers(0, 4, size=32)
    values = head[[concept_tokens[g] for g in groups]] + 0.05 * rng.standard_normal((32, 64))
    with torch.no_grad():
        model.model.decoder.layers[2].fc2.weight.copy_(torch.from_numpy(values.T).float())
    assigned, clusters = cluster_tables(adapter, [2], [f"t{i}" for i in range(48)], n_clusters=4, final_norm=False, top_n=3)
    labels = assigned["cluster"].to_numpy()
    assert (labels[:, None] == labels[None, :]).tolist() == (groups[:, None] == groups[None, :]).tolist()
    for cluster in clusters.iter_rows(named=True):
        members = groups[labels == cluster["cluster"]]
        assert cluster["size"] == len(members) and cluster["top_ids"][0] == concept_tokens[members[0]]
    assert clusters["top_tokens"][0][0] == f"t{clusters['top_ids'][0][0]}"


def test_concept_figure_draws_the_largest_clusters_of_the_last_layer():
    from neuron_census.plots.subupdates import plot_concept_clusters

    clusters = pl.DataFrame({
        "model": ["m"] * 4, "layer": [0, 1, 1, 1], "cluster": [0, 0, 1, 2], "size": [9, 2, 5, 1],
        "top_tokens": [["x"], ["a", "b"], ["c"], ["d"]],
    })
    fig = plot_concept_clusters({"clusters": clusters}, {})
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["c", "a b", "d"]  # the largest first, at the top
    assert sorted(bar.get_width() for bar in ax.patches) == [1, 2, 5]


def test_dominant_cluster_ids_follow_the_sub_updates_score_order():
    from neuron_census.jobs.subupdates import dominant_cluster_ids

    subupdates = pl.DataFrame({
        "prediction": [1, 0, 0, 1, 0, 0, 1, 1, 0], "layer": [0, 0, 0, 0, 1, 1, 1, 1, 0],
        "kind": ["dominant"] * 8 + ["random"], "place": [1, 1, 0, 0, 0, 1, 1, 0, 0], "neuron": [2, 0, 1, 3, 0, 1, 2, 3, 2],
    })
    clusters = pl.DataFrame({"layer": [0, 0, 0, 0, 1, 1, 1, 1], "neuron": [0, 1, 2, 3, 0, 1, 2, 3], "cluster": [10, 11, 12, 13, 20, 21, 22, 23]})
    ids = dominant_cluster_ids(subupdates, clusters, 2, 2)
    assert ids.tolist() == [[[11, 10], [20, 21]], [[13, 12], [23, 22]]]
    with pytest.raises(ValueError, match="no concept cluster"):
        dominant_cluster_ids(subupdates, clusters.filter(pl.col("neuron") != 3), 2, 2)


def test_example_predictions_pick_those_settled_by_a_promoting_sub_update_first():
    from neuron_census.plots.subupdates import example_predictions, plot_subupdate_examples

    predictions = pl.DataFrame({
        "model": ["m"] * 6, "prediction": [0, 0, 1, 1, 2, 2], "layer": [0, 1] * 3, "saturation_layer": [1, 1, 0, 0, 1, 1],
        "context": ["a b", "a b", "c d", "c d", "e f", "e f"], "final_text": [" x", " x", " y", " y", " z", " z"],
    })
    subupdates = pl.DataFrame({
        "model": ["m"] * 7, "prediction": [0, 0, 1, 1, 2, 2, 2], "layer": [1, 1, 0, 1, 1, 1, 0], "kind": ["dominant"] * 6 + ["random"],
        "place": [0, 1, 0, 0, 1, 0, 0], "neuron": [4, 5, 6, 7, 8, 9, 1], "activation": [1.0, -2.0, 0.5, 3.0, 1.5, 2.5, 9.0],
        "vocab_top_tokens": [["p"], ["q"], ["r"], ["s"], ["t", "u"], ["v"], ["w"]],
        "vocab_bottom_tokens": [["-p"], ["-q"], ["-r"], ["-s"], ["-t"], ["-v"], ["-w"]],
        "promotes": [False, False, False, True, True, False, True], "eliminates": [True, False, False, False, False, False, False],
    })
    # prediction 2 is settled at layer 1 by neuron 8, a promoter; 1's promoter (neuron 7) is at layer 1, not its saturation layer 0
    frame = example_predictions(predictions, subupdates, 2, 1)
    assert frame["prediction"].to_list() == [2, 0]
    assert frame["subupdates"].to_list() == ["1.9 (m=+2.50): v", "1.4 (m=+1.00): p [eliminates]"]
    assert example_predictions(predictions, subupdates, 3, 2)["subupdates"][0] == "1.9 (m=+2.50): v\n1.8 (m=+1.50): t u [promotes]"
    fig = plot_subupdate_examples({"predictions": predictions, "subupdates": subupdates}, {"n_examples": 2, "n_subupdates": 2})
    texts = [cell.get_text().get_text() for cell in fig.axes[0].tables[0].get_celld().values()]
    assert "…e f" in texts and "1.4 (m=+1.00): p [eliminates]\n1.5 (m=-2.00): -q" in texts  # m < 0 raises the bottom tokens


def test_example_contexts_show_control_characters_escaped_and_keep_their_last_40_characters():
    from neuron_census.plots.subupdates import context_tail

    text = "Once upon a time,\nthere was a little girl named Lily."
    assert context_tail(text) == text.replace("\n", " ")[-40:]  # printable text: its last 40 characters
    assert context_tail("a\x00b\x1b\x7f c") == "a\\x00b\\x1b\\x7f c"  # as `repr` writes them, drawable
    assert context_tail("x" * 10 + "\x03" * 12, width=10) == "\\x03\\x03"  # never cut inside an escape


def test_early_exit_and_steering_figures_draw_their_tables():
    from neuron_census.plots.subupdates import plot_early_exit, plot_steering

    table = pl.DataFrame({
        "model": ["m"] * 4, "method": ["rule", "rule", "oracle", "oracle"], "split": [0, 1, 0, 1], "accuracy": [0.9, 0.8, 1.0, 1.0],
        "layers_saved": [1.0, 2.0, 3.0, 3.0], "n_train": [9, 9, 0, 0], "n_test": [2] * 4, "n_layers": [6] * 4,
    })
    fig = plot_early_exit({"early_exit": table}, {})
    (ax,) = fig.axes
    points = [tuple(np.round(line.get_xydata()[0], 6)) for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() in "o*"]
    assert points == [(1.5, 85.0), (3.0, 100.0)]
    rule_bars = ax.containers[0].lines[2]  # (x bar, y bar) of the first method drawn, rule
    assert [np.round(bar.get_segments()[0], 6).tolist() for bar in rule_bars] == [[[1.0, 85.0], [2.0, 85.0]], [[1.5, 80.0], [1.5, 90.0]]]
    near_top = pl.DataFrame({  # accuracy 90 +- 14.1 (std) would pass 100%: the bar ends at the best split
        "model": ["m"] * 3, "method": ["rule"] * 3, "split": [0, 1, 2], "accuracy": [1.0, 0.7, 1.0], "layers_saved": [1.0, 1.0, 1.0],
        "n_train": [9] * 3, "n_test": [2] * 3, "n_layers": [6] * 3,
    })
    (ax,) = plot_early_exit({"early_exit": near_top}, {}).axes
    assert np.round(ax.containers[0].lines[2][1].get_segments()[0], 6).tolist() == [[1.0, 70.0], [1.0, 100.0]]
    summary = pl.DataFrame({"model": ["m", "m"], "condition": ["baseline", "steered"], "rate": [0.25, 0.75], "perplexity": [10.0, 14.0],
                            "values": ["1:[3]"] * 2, "scorer": ["lexicon"] * 2})
    left, right = plot_steering({"steering_summary": summary}, {}).axes
    assert [bar.get_height() for bar in left.patches] == [25.0, 75.0] and [bar.get_height() for bar in right.patches] == [10.0, 14.0]
