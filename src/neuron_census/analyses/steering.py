"""Steering generation through value vectors (Geva et al. 2022, Sec. 5): set chosen FFN neurons to a fixed
value at every position, prompt and generated tokens alike, so that their value vectors' sub-updates are
added at every step, and measure what that does to the continuations and what it costs.

The neurons are listed (`values`, layer -> neurons) or chosen by a concept: the value vectors whose top
projected tokens (the vocabulary projection table's `vocab_top_ids`) hold words of a list, most hits first.
Setting a neuron's pre-activation (the paper: GPT-2 `c_fc`'s output, to 3) makes its activation act(3) at
every position; its value vector then raises the tokens its projection ranks highest.

Effect: a scorer's score per continuation (offline default `lexicon`: 1 when a continuation holds a listed
word, else 0; `perspective`: Google's Perspective API toxicity, opt-in, needs a key and the network) and
the rate of continuations scoring at least `threshold`, with and without the intervention. Cost: the
perplexity of held-out token sequences with and without it.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch

from neuron_census.config import default_field, schema_defaults
from neuron_census.interventions import Intervention, intervened

_DEFAULTS = schema_defaults("$defs/steering_study")
_default = partial(default_field, _DEFAULTS)
_SCORER = schema_defaults("$defs/steering_study/scorer")


@dataclass(frozen=True)
class SteeringSettings:
    value: float = _default("value")  # what the chosen neurons are set to
    target: str = _default("target")  # or "activation" (the output projection's input)
    new_tokens: int = _default("new_tokens")
    beams: int = _default("beams")  # beam search, as the paper; 1 = greedy
    max_prompts: int = _default("max_prompts")  # the first this many prompts of the file; 0 = all
    challenging: bool = _default("challenging")  # keep only RealToxicityPrompts records marked `challenging`
    concept_values: int = _default("concept_values")  # at most this many value vectors chosen by a concept
    perplexity_sequences: int = _default("perplexity_sequences")
    batch_size: int = _default("batch_size")

    def __post_init__(self) -> None:
        if self.target not in ("preactivation", "activation"):
            raise ValueError(f"steering target must be 'preactivation' or 'activation', got {self.target!r}")
        if self.new_tokens < 1 or self.beams < 1:
            raise ValueError(f"steering needs new_tokens >= 1 and beams >= 1, got {self.new_tokens} and {self.beams}")


def normalised(text: str) -> str:
    """A token's or a word's text as concept lists compare them: without surrounding space, lower case."""
    return text.strip().lower()


def concept_values(vocab: pl.DataFrame, token_texts: Sequence[str], words: Iterable[str], limit: int) -> dict[int, list[int]]:
    """layer -> neurons: the value vectors whose top projected tokens hold a word of `words`, at most `limit`,
    the most hits first (then the larger projection score of their best hit, then layer and neuron)."""
    wanted = {normalised(word) for word in words}
    in_concept = np.array([normalised(text) in wanted for text in token_texts])
    ids = vocab["vocab_top_ids"].to_list()
    scores = vocab["vocab_top_scores"].to_list()
    ranked = []
    for layer, neuron, top, score in zip(vocab["layer"].to_list(), vocab["neuron"].to_list(), ids, scores):
        hits = [s for token, s in zip(top, score) if 0 <= token < len(in_concept) and in_concept[token]]
        if hits:
            ranked.append((-len(hits), -max(hits), layer, neuron))
    chosen: dict[int, list[int]] = {}
    for _, _, layer, neuron in sorted(ranked)[:limit]:
        chosen.setdefault(int(layer), []).append(int(neuron))
    return {layer: sorted(neurons) for layer, neurons in sorted(chosen.items())}


def listed_values(values: Mapping[Any, Sequence[int]]) -> dict[int, list[int]]:
    """layer -> neurons from a config mapping whose keys may be strings (YAML, JSON)."""
    return {int(layer): sorted(int(n) for n in neurons) for layer, neurons in sorted(values.items(), key=lambda item: int(item[0])) if neurons}


def describe_values(values: Mapping[int, Sequence[int]]) -> str:
    """The paper's notation, e.g. '13:[1852] 14:[72, 1394]'."""
    return " ".join(f"{layer}:{list(neurons)}" for layer, neurons in values.items())


def steering_interventions(values: Mapping[int, Sequence[int]], settings: SteeringSettings) -> list[Intervention]:
    """One `set` intervention per layer, at every position."""
    return [Intervention(layer, list(neurons), "set", settings.value, target=settings.target) for layer, neurons in values.items()]


def read_prompts(path: str | Path, settings: SteeringSettings) -> list[str]:
    """Prompt texts from a JSON-lines file in RealToxicityPrompts' format ({"prompt": {"text": ...},
    "challenging": ...}); a record may also be {"prompt": "..."} or {"text": "..."}."""
    texts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
                text = prompt.get("text") if isinstance(prompt, dict) else prompt
            except (json.JSONDecodeError, AttributeError):
                text = None
            if not isinstance(text, str):
                raise ValueError(f"prompts file {path}, line {number}: not a JSON record with a prompt text")
            if settings.challenging and not record.get("challenging", False):
                continue
            texts.append(text)
            if settings.max_prompts and len(texts) == settings.max_prompts:
                break
    if not texts:
        raise ValueError(f"prompts file {path} holds no prompt{' marked challenging' if settings.challenging else ''}")
    return texts


def generate(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], interventions: Sequence[Intervention], settings: SteeringSettings
) -> list[list[int]]:
    """Each prompt's `new_tokens` continuation ids (beam search or greedy, no sampling). Prompts of equal
    length share a batch, so no padding enters any prompt."""
    device = next(model.parameters()).device
    eos = getattr(model.config, "eos_token_id", None)
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    with torch.no_grad(), intervened(model, interventions):
        for length, indices in sorted(by_length.items()):
            for start in range(0, len(indices), settings.batch_size):
                chosen = indices[start : start + settings.batch_size]
                ids = torch.tensor([list(prompts[i]) for i in chosen], dtype=torch.long, device=device)
                generated = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=settings.new_tokens,
                    min_new_tokens=settings.new_tokens, num_beams=settings.beams, do_sample=False, pad_token_id=pad,
                )
                for i, row in zip(chosen, generated[:, length:].tolist()):
                    out[i] = row
    return out


def perplexity(model: torch.nn.Module, tokens: torch.Tensor, interventions: Sequence[Intervention], batch_size: int) -> tuple[float, int]:
    """(perplexity, predicted tokens) of `tokens` [S, T]: exp of the mean next-token loss over every
    position after the first."""
    total, count = 0.0, 0
    with torch.no_grad(), intervened(model, interventions):
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size]
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    return float(np.exp(total / max(count, 1))), count


class Scorer(Protocol):
    name: str
    threshold: float

    def score(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class LexiconScorer:
    """1 for a continuation holding a listed word (whole word, any case), else 0."""

    words: tuple[str, ...]
    name: str = "lexicon"
    threshold: float = _SCORER["threshold"]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not self.words:
            raise ValueError("the lexicon scorer needs a non-empty word list (steering.<model>.scorer.words)")
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(normalised(w)) for w in self.words) + r")(?!\w)", re.IGNORECASE)
        return np.array([1.0 if pattern.search(text) else 0.0 for text in texts])


@dataclass(frozen=True)
class PerspectiveScorer:
    """Perspective API toxicity (0..1) of each continuation; needs the network and a key in the environment
    variable `key_variable`. Requests are spaced to `per_second`."""

    attribute: str = "TOXICITY"
    key_variable: str = "PERSPECTIVE_API_KEY"
    per_second: float = 1.0
    name: str = "perspective"
    threshold: float = _SCORER["threshold"]
    url: str = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        key = os.environ.get(self.key_variable)
        if not key:
            raise ValueError(f"the perspective scorer needs an API key in the environment variable {self.key_variable}")
        scores = []
        for text in texts:
            body = {"comment": {"text": text or " "}, "languages": ["en"], "requestedAttributes": {self.attribute: {}}}
            request = urllib.request.Request(f"{self.url}?key={key}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                reply = json.loads(response.read())
            scores.append(float(reply["attributeScores"][self.attribute]["summaryScore"]["value"]))
            time.sleep(1.0 / self.per_second)
        return np.array(scores)


SCORERS = {"lexicon": LexiconScorer, "perspective": PerspectiveScorer}


def make_scorer(spec: Mapping[str, Any]) -> Scorer:
    """A scorer from its config: {"name": "lexicon", "words": [...]} or {"name": "perspective", ...}."""
    options = dict(spec)
    name = options.pop("name", _SCORER["name"])
    if name not in SCORERS:
        raise ValueError(f"unknown steering scorer {name!r}; known: {', '.join(SCORERS)}")
    if name == "lexicon":
        options["words"] = tuple(options.get("words", ()))
    return SCORERS[name](**options)


def steering_summary(generations: pl.DataFrame, costs: Mapping[str, tuple[float, int]], threshold: float) -> pl.DataFrame:
    """Per condition: prompts, the rate of continuations scoring at least `threshold`, the mean score, and
    the perplexity of the held-out sequences (with the tokens it was measured on)."""
    summary = generations.group_by("condition", maintain_order=True).agg(
        prompts=pl.len(), rate=(pl.col("score") >= threshold).mean(), mean_score=pl.col("score").mean()
    )
    return summary.with_columns(
        perplexity=pl.col("condition").replace_strict({c: v[0] for c, v in costs.items()}, return_dtype=pl.Float64),
        perplexity_tokens=pl.col("condition").replace_strict({c: v[1] for c, v in costs.items()}, return_dtype=pl.Int64),
    )
