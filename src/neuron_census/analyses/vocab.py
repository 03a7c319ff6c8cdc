"""Vocabulary projections of FFN value vectors (Geva et al. 2022; Voita et al. 2023, Sec. 4.4, Fig. 5).

A neuron's value vector v (its row of the FFN output matrix) is what the neuron adds to the residual stream
per unit of activation. Its vocabulary projection is the logit vector the model's head gives v: optionally
the final norm first (`vocab_final_norm` records the convention), then the LM head. High scores are the
tokens the neuron promotes, low scores the tokens it suppresses. Rankings break ties by the lower token id.

Trigger suppression. For a token-detector neuron with trigger (detected) tokens t_1..t_k and projection
scores s over the whole vocabulary, with mean mu and population standard deviation sigma of s over the
vocabulary:

- `trigger_z` = mean over the triggers of (s[t_j] - mu) / sigma, the triggers' logit change in units of
  the vocabulary spread;
- `trigger_percentile` = mean over the triggers of the fraction of the vocabulary scoring strictly below
  s[t_j] (0: the trigger is among the most suppressed tokens, near 1: among the most promoted);
- `suppresses_trigger` = trigger_z < 0: when the neuron fires, its update lowers the logits of its own
  triggers relative to the average token.

Voita et al. report that over 80% of token detectors suppress their triggers. Both trigger values are
undefined (null in tables) for a neuron without triggers, and `trigger_z` for one whose scores are all equal
(sigma = 0; its `trigger_percentile` is 0).

Which tokens are triggers depends on the detector thresholds, which the model does not: the projection job
scores every token each neuron fired on in the capture (`fired_token_scores`), and `trigger_columns` averages
the detected ones' scores without the model, so a threshold change reruns no projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from neuron_census.config import schema_defaults
from neuron_census.data.tokenization import escape_token

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
    from neuron_census.models.adapters import FFNAdapter

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
_VOCAB = schema_defaults("analysis/vocab")

VOCAB_SCHEMA: dict[str, pl.DataType] = {
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "vocab_final_norm": pl.Boolean(),
    "vocab_top_ids": pl.List(pl.Int64),
    "vocab_top_tokens": pl.List(pl.Utf8),
    "vocab_top_scores": pl.List(pl.Float64),
    "vocab_bottom_ids": pl.List(pl.Int64),
    "vocab_bottom_tokens": pl.List(pl.Utf8),
    "vocab_bottom_scores": pl.List(pl.Float64),
    "vocab_score_mean": pl.Float64(),
    "vocab_score_std": pl.Float64(),
}
FIRED_SCHEMA: dict[str, pl.DataType] = {
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "token": pl.Int64(),
    "token_z": pl.Float64(),
    "token_percentile": pl.Float64(),
}
TRIGGER_SCHEMA: dict[str, pl.DataType] = {
    "trigger_z": pl.Float64(),
    "trigger_percentile": pl.Float64(),
    "suppresses_trigger": pl.Boolean(),
}


# --------------------------------------------------------------------------------------- projection


def chunk_rows(vocab_size: int, max_chunk_bytes: int) -> int:
    """Neurons per chunk so that one [chunk, vocab] float32 score block fits max_chunk_bytes (at least one)."""
    return max(1, int(max_chunk_bytes) // (4 * max(int(vocab_size), 1)))


def _moments(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and population std per row; the float32 shift by the row mean keeps the square sum exact."""
    n = scores.shape[1]
    mean = scores.sum(dim=1, dtype=torch.float64) / n
    centred = scores - mean.to(scores.dtype)[:, None]
    offset = centred.sum(dim=1, dtype=torch.float64) / n
    var = (centred * centred).sum(dim=1, dtype=torch.float64) / n - offset * offset
    return mean, var.clamp_min(0.0).sqrt()


def _ranked(scores: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and scores of the top_n highest scores per row, descending, equal scores by lower id first.

    topk alone picks arbitrary members of a tie; here every score above the top_n-th value is kept plus the
    lowest-id members of the tie at that value, then a stable sort orders them.
    """
    threshold = torch.topk(scores, top_n, dim=1, sorted=True).values[:, -1:]
    above = scores > threshold
    tied = scores == threshold
    room = top_n - above.sum(dim=1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, dim=1, dtype=torch.int32) <= room))
    ids = keep.nonzero()[:, 1].reshape(-1, top_n)  # row-major: ascending ids within each row
    values = scores.gather(1, ids)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return ids.gather(1, order), values.gather(1, order)


def _check_top_n(top_n: int, vocab_size: int) -> int:
    if not 1 <= int(top_n) <= vocab_size:
        raise ValueError(f"top_n must be in 1..{vocab_size} (the vocabulary size), got {top_n}")
    return int(top_n)


def project_layer(
    adapter: FFNAdapter,
    layer: int,
    *,
    top_n: int,
    apply_final_norm: bool,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    fired: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Promoted and suppressed tokens of every neuron of `layer`, with each neuron's score mean and spread.

    The [N, vocab] score matrix is never held whole (50k tokens x 36k neurons is 7 GB in float32): neurons
    go through in blocks of at most max_chunk_bytes of float32 scores (working memory is a few blocks).
    Keys: top_ids / top_scores [N, top_n] (descending), bottom_ids / bottom_scores [N, top_n] (ascending,
    most suppressed first), score_mean / score_std [N] (population std over the vocabulary). With `fired`
    (neurons sorted, tokens) pairs also token_z and token_percentile per pair (module docstring).
    """
    top_n = _check_top_n(top_n, adapter.vocab_size)
    parts: dict[str, list[np.ndarray]] = {}
    pair_neurons, pair_tokens = fired if fired is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    chunk = chunk_rows(adapter.vocab_size, max_chunk_bytes)
    with torch.no_grad():
        vectors = adapter.value_vectors(layer)
        # one block of scores at a time; at least one, so a layer without neurons gives typed, empty arrays
        for start in range(0, max(vectors.shape[0], 1), chunk):
            block = slice(start, min(start + chunk, vectors.shape[0]))
            scores = adapter.project_to_vocab(vectors[block], apply_final_norm)
            if torch.isnan(scores).any():
                raise ValueError(f"model '{adapter.name}': vocabulary scores contain NaN (rows {block.start}..)")
            top_ids, top_scores = _ranked(scores, top_n)
            bottom_ids, negated = _ranked(-scores, top_n)
            mean, std = _moments(scores)
            pairs = slice(*np.searchsorted(pair_neurons, [block.start, block.stop]))
            rows = torch.as_tensor(pair_neurons[pairs] - block.start, device=scores.device)
            tokens = torch.as_tensor(pair_tokens[pairs], device=scores.device)
            found = {
                "top_ids": top_ids,
                "top_scores": top_scores.double(),
                "bottom_ids": bottom_ids,
                "bottom_scores": -negated.double(),
                "score_mean": mean,
                "score_std": std,
                "token_z": (scores[rows, tokens].double() - mean[rows]) / std[rows],
                # one sort per row, only for blocks with fired pairs (a projection without them sorts nothing)
                "token_percentile": (_below(scores)[rows, tokens] if len(rows) else rows).double() / scores.shape[1],
            }
            for key, value in found.items():
                parts.setdefault(key, []).append(value.cpu().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def _below(scores: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] int64: how many scores of its row are strictly below each score (one sort per row;
    equal scores get the position of the first of them)."""
    ordered, order = torch.sort(scores, dim=1)
    position = torch.arange(scores.shape[1], device=scores.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = torch.cummax(torch.where(starts, position, 0), dim=1).values
    return torch.empty_like(first).scatter_(1, order, first)


# ------------------------------------------------------------------------------------------- the table


def display_tokens(token_strings: Sequence[str], vocab_size: int) -> np.ndarray:
    """Printable string per token id; ids past the tokenizer's list (padded vocabularies) read `<id:N>`."""
    shown = [escape_token(t) for t in token_strings[:vocab_size]]
    shown += [f"<id:{i}>" for i in range(len(shown), vocab_size)]
    return np.asarray(shown, dtype=object)


def _layer_frame(layer: int, projection: dict[str, np.ndarray], tokens: np.ndarray, apply_final_norm: bool) -> pl.DataFrame:
    n = projection["score_mean"].size
    columns = {
        "layer": np.full(n, layer, dtype=np.int64),
        "neuron": np.arange(n, dtype=np.int64),
        "vocab_final_norm": np.full(n, bool(apply_final_norm)),
    }
    for side in ("top", "bottom"):
        ids, scores = projection[f"{side}_ids"], projection[f"{side}_scores"]
        columns |= {f"vocab_{side}_ids": ids, f"vocab_{side}_tokens": tokens[ids], f"vocab_{side}_scores": scores}
    columns |= {"vocab_score_mean": projection["score_mean"], "vocab_score_std": projection["score_std"]}
    series = [pl.Series(name, v.tolist() if v.ndim == 2 else v, dtype=VOCAB_SCHEMA[name]) for name, v in columns.items()]
    return pl.DataFrame(series)  # the [N, top_n] arrays as list columns


def vocab_tables(
    adapter: FFNAdapter,
    token_strings: list[str],
    fired: Callable[[int], tuple[np.ndarray, np.ndarray]],
    *,
    layers: list[int],
    top_n: int = _VOCAB["top_n"],
    apply_final_norm: bool = _VOCAB["final_norm"],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per (layer, neuron) of `layers`: top/bottom tokens of its value vector (VOCAB_SCHEMA); and one
    per (layer, neuron, token) of `fired(layer)`, the (neurons sorted, tokens) pairs a neuron fired on: that
    token's z-score and percentile in the neuron's projection (FIRED_SCHEMA)."""
    _check_top_n(top_n, adapter.vocab_size)
    tokens = display_tokens(token_strings, adapter.vocab_size)
    frames, scored = [pl.DataFrame(schema=VOCAB_SCHEMA)], [pl.DataFrame(schema=FIRED_SCHEMA)]
    for layer in layers:
        neurons, fired_tokens = fired(layer)
        pairs = (neurons, fired_tokens)
        projection = project_layer(adapter, layer, top_n=top_n, apply_final_norm=apply_final_norm, fired=pairs)
        frames.append(_layer_frame(layer, projection, tokens, apply_final_norm))
        columns = {"layer": np.full(len(neurons), layer, np.int64), "neuron": neurons, "token": fired_tokens}
        columns |= {key: projection[key] for key in ("token_z", "token_percentile")}
        scored.append(pl.DataFrame(columns).cast(FIRED_SCHEMA))
    return pl.concat(frames), pl.concat(scored)


def trigger_columns(detectors: pl.DataFrame, fired: pl.DataFrame) -> pl.DataFrame:
    """(layer, neuron) of `detectors` with trigger_z, trigger_percentile and suppresses_trigger: the mean of
    the fired-token scores over each neuron's `detected_tokens` (null without triggers or spread)."""
    triggers = (
        detectors.select("layer", "neuron", pl.col("detected_tokens").alias("token"))
        .explode("token")
        .drop_nulls("token")
        .join(fired, on=["layer", "neuron", "token"], how="left", maintain_order="left")
    )
    means = triggers.group_by("layer", "neuron", maintain_order=True).agg(
        trigger_z=pl.col("token_z").mean(), trigger_percentile=pl.col("token_percentile").mean()
    )
    missing = triggers.filter(pl.col("token_z").is_null())
    if len(missing):
        layer, neuron, token = missing.row(0)[:3]
        raise ValueError(f"trigger token {token} of neuron {neuron} in layer {layer} was not scored: the vocabulary table is of another capture")
    table = detectors.select("layer", "neuron").join(means, on=["layer", "neuron"], how="left", maintain_order="left")
    table = table.with_columns(pl.col("trigger_z", "trigger_percentile").fill_nan(None))
    return table.with_columns(suppresses_trigger=pl.col("trigger_z") < 0).cast(TRIGGER_SCHEMA)


def fired_pairs(keys: np.ndarray, n_neurons: int) -> tuple[np.ndarray, np.ndarray]:
    """(neurons, tokens) of one layer's token firing keys (token * n_neurons + neuron), sorted by neuron."""
    tokens, neurons = np.divmod(np.asarray(keys, dtype=np.int64), n_neurons)
    order = np.argsort(neurons, kind="stable")
    return neurons[order], tokens[order]


def with_vocab(stats: pl.DataFrame, vocab: pl.DataFrame, fired: pl.DataFrame) -> pl.DataFrame:
    """Per-neuron statistics joined with the projection columns and the trigger columns of their detected
    tokens (neurons.parquet)."""
    triggers = trigger_columns(stats.select("layer", "neuron", "detected_tokens"), fired)
    neurons = stats.join(vocab, on=["layer", "neuron"], how="left", maintain_order="left")
    return pl.concat([neurons, triggers.select(pl.exclude("layer", "neuron"))], how="horizontal")
