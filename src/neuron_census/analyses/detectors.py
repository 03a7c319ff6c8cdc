"""N-gram coverage and n-gram detector neurons from merged accumulator states (pure functions).

Coverage (Voita et al. 2023, Sec. 4.1): the number of distinct n-grams needed to cover at least
`coverage` of a neuron's firings, BOS excluded. Unigram counts (`token_fire_count`) are exact unless a
`token_capacity` bounds them; bigram and trigram counts come from bounded summaries (`ngram_fire_count`).
Bounded counts are reported with a lower bound and an `_exact` flag (see `neuron_census.accumulators.summaries`).

Token detectors (Sec. 4.2), three steps: (1) neurons covered by 1..`max_ngrams` tokens; (2) keep the
tokens on which the neuron fires at least `ngram_fire_rate` of the times the token occurs; (3) the
neuron is a detector if the kept tokens account for at least `detector_coverage` of its firings.
Bigram detectors apply the same three steps to bigrams and exclude token detectors, so a bigram
detector is a neuron whose firings the current token alone does not explain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from neuron_census.accumulators import State
from neuron_census.config import schema_defaults
from neuron_census.accumulators.token_fire_count import decode_token_fire_keys
from neuron_census.accumulators.summaries import coverage_bounds, coverage_target, summary_slack, unpack_ngram

ORDER_NAMES = {1: "unigram", 2: "bigram", 3: "trigram"}


_DEFAULTS = schema_defaults("analysis/detectors")
_COVERAGE = schema_defaults("analysis")["ngram_coverage"]


@dataclass(frozen=True)
class DetectorSettings:
    coverage: float = _COVERAGE  # share of firings the counted n-grams must cover (Fig. 2)
    max_ngrams: int = _DEFAULTS["max_ngrams"]  # step 1: candidates are covered by at most this many n-grams
    ngram_fire_rate: float = _DEFAULTS["fire_rate"]  # step 2: keep n-grams on which the neuron fires this often
    detector_coverage: float = _DEFAULTS["coverage"]  # step 3: kept n-grams must cover this share of firings


@dataclass(frozen=True)
class SparseCounts:
    """Firings per (group = slot * n_neurons + neuron, item) with the firings each group has in total."""

    group: np.ndarray
    item: np.ndarray
    count: np.ndarray
    fires: np.ndarray  # [n_groups]
    capacity: int | None  # None: counts are exact


def unigram_counts(states: Mapping[str, State], attrs: Mapping[str, Any]) -> SparseCounts:
    n_neurons, vocab = int(attrs["n_neurons"]), int(attrs["vocab_size"])
    state = states["token_fire_count"]
    slot, token, neuron = decode_token_fire_keys(state["keys"], vocab, n_neurons)
    return SparseCounts(
        group=slot * n_neurons + neuron,
        item=token,
        count=state["counts"],
        fires=states["fire_count"]["counts"].reshape(-1),
        capacity=int(state["capacity"][0]) or None,
    )


def ngram_counts(states: Mapping[str, State], attrs: Mapping[str, Any], order: int) -> SparseCounts:
    """N-gram firings of one order, with groups renumbered to the analysed-layer slots."""
    state = states["ngram_fire_count"]
    n_neurons = int(attrs["n_neurons"])
    slots = np.asarray([list(attrs["layers"]).index(int(layer)) for layer in state["layers"]], dtype=np.int64)
    index = state["orders"].tolist().index(order)
    fires = np.zeros((len(attrs["layers"]), n_neurons), dtype=np.int64)
    fires[slots] = state["fires"][index]
    group = state[f"order{order}_group"]
    return SparseCounts(
        group=slots[group // n_neurons] * n_neurons + group % n_neurons if len(slots) else group,
        item=state[f"order{order}_gram"],
        count=state[f"order{order}_count"],
        fires=fires.reshape(-1),
        capacity=int(state["capacity"][0]),
    )


def ngram_detectors(
    counts: SparseCounts,
    occurrences: tuple[np.ndarray, np.ndarray],
    settings: DetectorSettings,
    occurrence_slack: float = 0.0,
) -> dict[int, list[int]]:
    """Group -> detected items (most firings first) by the three-step rule on `counts`.

    `occurrences`: sorted items and how often each occurs (items never seen occur 0 times).
    `occurrence_slack`: how far below the truth those occurrences may be (a pruned summary's
    `summary_slack`). Step 2 compares firings (never above the truth) with occurrences plus the slack
    (never below it), so an item kept is one the neuron fires on at least `ngram_fire_rate` of the time.
    """
    _, upper, _ = coverage_bounds(counts.group, counts.count, counts.fires, counts.capacity, settings.coverage)
    candidates = (upper >= 1) & (upper <= settings.max_ngrams)
    entries = candidates[counts.group]
    group, item, count = counts.group[entries], counts.item[entries], counts.count[entries]
    keys, values = occurrences
    index = np.minimum(np.searchsorted(keys, item), max(len(keys) - 1, 0))
    occurs = (np.where(keys[index] == item, values[index], 0) if len(keys) else np.zeros(len(item))) + occurrence_slack
    kept = (occurs > 0) & (count >= settings.ngram_fire_rate * occurs - 1e-9)
    covered = np.bincount(group[kept], weights=count[kept], minlength=len(counts.fires))
    detector = candidates & (covered >= coverage_target(counts.fires, settings.detector_coverage))
    result: dict[int, list[int]] = {}
    order = np.lexsort((item, -count, group))
    for g, i, k in zip(group[order], item[order], kept[order]):
        if k and detector[g]:
            result.setdefault(int(g), []).append(int(i))
    return result


def ngram_columns(
    states: Mapping[str, State],
    attrs: Mapping[str, Any],
    settings: DetectorSettings,
    token_strings: Sequence[str],
) -> dict[str, Any]:
    """Per (slot, neuron) in row-major order: coverage columns for every counted order, then token- and
    bigram-detector columns.

    Unigram coverage is null for dead neurons. Bigram/trigram coverage is null for layers whose n-grams
    were not counted and for neurons with no firing at a complete n-gram.
    """
    by_order = {1: unigram_counts(states, attrs)}
    if "ngram_fire_count" in states:
        by_order |= {order: ngram_counts(states, attrs, order) for order in states["ngram_fire_count"]["orders"].tolist()}
    columns: dict[str, Any] = {}
    for order, counts in by_order.items():
        lower, upper, exact = coverage_bounds(counts.group, counts.count, counts.fires, counts.capacity, settings.coverage)
        null = pl.Series(counts.fires == 0)  # n-grams of an uncounted layer have no firings either
        columns |= {
            f"{ORDER_NAMES[order]}_coverage": pl.Series(upper, dtype=pl.Int64).set(null, None),
            f"{ORDER_NAMES[order]}_coverage_lo": pl.Series(lower, dtype=pl.Int64).set(null, None),
            f"{ORDER_NAMES[order]}_coverage_exact": pl.Series(exact, dtype=pl.Boolean).set(null, None),
        }
    n_rows = len(attrs["layers"]) * int(attrs["n_neurons"])
    vocab = int(attrs["vocab_size"])
    token_occurrences = states["token_count"]["counts"]
    tokens = ngram_detectors(by_order[1], (np.arange(len(token_occurrences)), token_occurrences), settings)
    detected: list[list[int]] = [tokens.get(g, []) for g in range(n_rows)]
    columns |= {
        "token_detector": pl.Series([bool(d) for d in detected], dtype=pl.Boolean),
        "detected_tokens": pl.Series(detected, dtype=pl.List(pl.Int64)),
        "detected_token_strings": pl.Series([[token_strings[t] for t in d] for d in detected], dtype=pl.List(pl.Utf8)),
    }
    if 2 in by_order and "ngram_count" in states:
        occurring = states["ngram_count"]
        occurrences = (occurring["order2_gram"], occurring["order2_count"])
        slack = summary_slack(
            int(occurring["total"][occurring["orders"].tolist().index(2)]),
            int(occurrences[1].sum()),
            int(occurring["capacity"][0]),
        )
        bigrams = ngram_detectors(by_order[2], occurrences, settings, occurrence_slack=slack)
        found = [[] if tokens.get(g) else bigrams.get(g, []) for g in range(n_rows)]
        columns["bigram_detector"] = pl.Series([bool(f) for f in found], dtype=pl.Boolean)
        columns["detected_bigrams"] = pl.Series(
            [[" ".join(token_strings[t] for t in unpack_ngram(b, 2, vocab)) for b in f] for f in found],
            dtype=pl.List(pl.Utf8),
        )
    return columns


def detector_layer_counts(neurons: pl.DataFrame) -> pl.DataFrame:
    """Per (model, layer): detectors and the distinct tokens they detect, new overall and vs the previous layer."""
    bigrams = "bigram_detector" in neurons.columns
    rows = []
    for (model,), frame in neurons.group_by("model", maintain_order=True):
        seen: set[int] = set()
        previous: set[int] = set()
        for (layer,), layer_rows in frame.sort("layer").group_by("layer", maintain_order=True):
            detectors = layer_rows.filter(pl.col("token_detector"))
            tokens = {t for ts in detectors["detected_tokens"].to_list() for t in ts}
            counts = [detectors.height, len(tokens), len(tokens - seen), len(tokens - previous), len(seen | tokens)]
            bigram_count = [int(layer_rows["bigram_detector"].sum())] if bigrams else []
            rows.append([model, layer, *counts, *bigram_count])
            seen, previous = seen | tokens, tokens
    names = ["n_token_detectors", "n_detected_tokens", "n_new_tokens_overall", "n_new_tokens_vs_previous"]
    names += ["n_detected_tokens_cumulative", *(["n_bigram_detectors"] if bigrams else [])]
    return pl.DataFrame(rows, schema={"model": pl.Utf8, "layer": pl.Int64, **dict.fromkeys(names, pl.Int64)}, orient="row")
