"""Steering by value vectors (Geva et al. 2022): on the planted sub-update model, setting the promoter's
pre-activation changes every generated token exactly as its value vector's shift of the residual stream
predicts; concept choice, prompt files, scorers and perplexity against direct computations."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.analyses.steering import (
    LexiconScorer,
    PerspectiveScorer,
    SteeringSettings,
    concept_values,
    generate,
    listed_values,
    make_scorer,
    perplexity,
    read_prompts,
    steering_interventions,
    steering_summary,
)
from neuron_census.testing.planted_subupdates import build_subupdate_model


def _next_tokens(plant, shift: float) -> np.ndarray:
    """[V]: the greedy next token after each token alone, with `shift` times the promoter's value vector
    added to the residual stream where the promoter did not write before (attention and positions write
    nothing and the last layer's value vectors are 0, so the shift reaches the head unchanged)."""
    model = plant.model
    decoder = model.model.decoder
    layer, neuron = plant.promoter
    seen = {}
    hooks = [
        decoder.layers[-1].register_forward_hook(lambda _m, _a, out: seen.__setitem__("x", out[0] if isinstance(out, tuple) else out)),
        decoder.layers[layer].fc2.register_forward_pre_hook(lambda _m, args: seen.__setitem__("m", args[0])),
    ]
    tokens = torch.arange(model.config.vocab_size)[:, None]
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
        for hook in hooks:
            hook.remove()
        m = seen["m"].reshape(len(tokens), -1)[:, neuron]
        value_vector = decoder.layers[layer].fc2.weight[:, neuron]
        x = seen["x"].reshape(len(tokens), -1) + (max(shift, 0.0) - m)[:, None] * value_vector
        logits = decoder.final_layer_norm(x) @ model.lm_head.weight.T
    return _without_eos(logits, model)


def _chain(step: np.ndarray, start: int, n: int) -> list[int]:
    out, token = [], start
    for _ in range(n):
        token = int(step[token])
        out.append(token)
    return out


def test_setting_the_promoter_changes_generation_exactly_as_its_value_vectors_shift_predicts():
    plant = build_subupdate_model()
    prompts = [[0, token] for token in range(2, 48)]
    settings = SteeringSettings(new_tokens=3, beams=1, batch_size=7)
    baseline = generate(plant.model, prompts, [], settings)
    unsteered = _next_tokens(plant, 0.0)
    # without an intervention the promoter writes only at the trigger: the chains follow the model's own map
    assert baseline == [_chain(_next_tokens_without_shift(plant), p[-1], 3) for p in prompts]
    rates = []
    for value in (0.5, 1.0, 1.5, 3.0):
        interventions = steering_interventions({plant.promoter[0]: [plant.promoter[1]]}, SteeringSettings(value=value, target="preactivation"))
        steered = generate(plant.model, prompts, interventions, settings)
        predicted = _next_tokens(plant, value)
        assert steered == [_chain(predicted, p[-1], 3) for p in prompts]
        rates.append(np.mean([token == plant.promoted for row in steered for token in row]))
    assert rates == sorted(rates) and rates[0] < rates[-1] == 1.0  # a larger value makes A the prediction more often
    assert len(set(rates)) >= 3  # the values tested tell apart partial effects, not only none / all
    assert (unsteered == plant.promoted).mean() < rates[0] + 1e-9


def _next_tokens_without_shift(plant) -> np.ndarray:
    model = plant.model
    with torch.no_grad():
        return _without_eos(model(input_ids=torch.arange(model.config.vocab_size)[:, None], use_cache=False).logits[:, -1], model)


def _without_eos(logits: torch.Tensor, model) -> np.ndarray:
    """Greedy choices as `generate` makes them with min_new_tokens: never the end-of-sequence token."""
    logits = logits.clone()
    logits[:, model.config.eos_token_id] = -torch.inf
    return logits.argmax(dim=1).numpy()


def test_a_steered_beam_search_keeps_the_prompt_and_returns_new_tokens_only():
    plant = build_subupdate_model()
    prompts = [[0, 5, 6], [0, 7], [0, 8, 9]]
    interventions = steering_interventions({1: [plant.promoter[1]]}, SteeringSettings(value=3.0))
    out = generate(plant.model, prompts, interventions, SteeringSettings(new_tokens=4, beams=3))
    assert [len(row) for row in out] == [4, 4, 4]
    assert all(token == plant.promoted for row in out for token in row)


def test_perplexity_equals_the_models_own_mean_loss():
    plant = build_subupdate_model()
    tokens = torch.randint(2, 48, (5, 12), generator=torch.Generator().manual_seed(0))
    got, count = perplexity(plant.model, tokens, [], batch_size=2)
    with torch.no_grad():
        loss = plant.model(input_ids=tokens, labels=tokens, use_cache=False).loss
    assert count == 5 * 11
    assert got == pytest.approx(float(torch.exp(loss)), rel=1e-5)
    steered, _ = perplexity(plant.model, tokens, steering_interventions({1: [3]}, SteeringSettings(value=3.0)), batch_size=3)
    assert steered > got * 2  # pushing A everywhere costs


def test_concept_values_rank_value_vectors_by_hits_among_their_top_tokens():
    texts = ["<s>", " cat", "dog", " Happy", "sad", " joy ", "x"]
    vocab = pl.DataFrame({
        "layer": [0, 0, 1, 1, 2], "neuron": [4, 9, 0, 2, 1],
        "vocab_top_ids": [[1, 3], [3, 5, 6], [2, 6], [6, 0], [5, 1]],
        "vocab_top_scores": [[2.0, 1.0], [3.0, 2.5, 1.0], [4.0, 0.5], [9.0, 8.0], [0.7, 0.6]],
    })
    # hits: (0,4): happy 1.0; (0,9): happy, joy -> 2 hits; (2,1): joy 0.7; the rest none
    assert concept_values(vocab, texts, ["happy", "JOY"], limit=10) == {0: [4, 9], 2: [1]}
    assert concept_values(vocab, texts, ["happy", "joy"], limit=2) == {0: [4, 9]}
    assert concept_values(vocab, texts, ["joy"], limit=1) == {0: [9]}  # tie on hits: the larger score wins
    assert concept_values(vocab, texts, ["zebra"], limit=5) == {}
    assert listed_values({"14": [1394, 72], "13": [1852], "2": []}) == {13: [1852], 14: [72, 1394]}


def test_prompt_files_in_realtoxicityprompts_format(tmp_path):
    path = tmp_path / "prompts.jsonl"
    records = [{"prompt": {"text": "One"}, "challenging": False}, {"prompt": {"text": "Two"}, "challenging": True},
               {"text": "Three"}, {"prompt": "Four", "challenging": True}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_prompts(path, SteeringSettings()) == ["One", "Two", "Three", "Four"]
    assert read_prompts(path, SteeringSettings(max_prompts=2)) == ["One", "Two"]
    assert read_prompts(path, SteeringSettings(challenging=True)) == ["Two", "Four"]
    path.write_text('{"prompt": {"text": "ok"}}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_prompts(path, SteeringSettings())


def test_scorers_and_summary(monkeypatch):
    lexicon = make_scorer({"name": "lexicon", "words": ["he", "Happy"]})
    assert isinstance(lexicon, LexiconScorer)
    assert lexicon.score(["she said", "He ran", "so happy!", "unhappy", "the end"]).tolist() == [0, 1, 1, 0, 0]
    generations = pl.DataFrame({"condition": ["baseline"] * 2 + ["steered"] * 2, "score": [0.0, 1.0, 1.0, 1.0]})
    summary = steering_summary(generations, {"baseline": (10.0, 50), "steered": (12.5, 50)}, 0.5)
    assert summary.rows() == [("baseline", 2, 0.5, 0.5, 10.0, 50), ("steered", 2, 1.0, 1.0, 12.5, 50)]
    with pytest.raises(ValueError, match="unknown steering scorer"):
        make_scorer({"name": "oracle"})
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="PERSPECTIVE_API_KEY"):
        make_scorer({"name": "perspective"}).score(["x"])
    replies = iter([0.9, 0.1])

    class Reply:
        def __init__(self, request):
            body = json.loads(request.data)
            assert "TOXICITY" in body["requestedAttributes"] and request.full_url.endswith("?key=k")

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def read(self):
            return json.dumps({"attributeScores": {"TOXICITY": {"summaryScore": {"value": next(replies)}}}}).encode()

    monkeypatch.setenv("PERSPECTIVE_API_KEY", "k")
    monkeypatch.setattr("urllib.request.urlopen", lambda request, timeout: Reply(request))
    assert PerspectiveScorer(per_second=1e6).score(["a", "b"]).tolist() == [0.9, 0.1]
