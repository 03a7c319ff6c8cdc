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
undefined (null in tables) for a neuron whose scores are all equal (sigma = 0) or that has no triggers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import torch

from neuron_census.models.adapters import FFNAdapter
from neuron_census.data.tokenization import escape_token

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20

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
    "trigger_z": pl.Float64(),
    "trigger_percentile": pl.Float64(),
    "suppresses_trigger": pl.Boolean(),
}


# --------------------------------------------------------------------------------------- projection


def chunk_rows(vocab_size: int, max_chunk_bytes: int) -> int:
    """Neurons per chunk so that one [chunk, vocab] float32 score block fits max_chunk_bytes (at least one)."""
    return max(1, int(max_chunk_bytes) // (4 * max(int(vocab_size), 1)))


def _row_slices(n_rows: int, rows: int) -> Iterator[slice]:
    for start in range(0, n_rows, rows):
        yield slice(start, min(start + rows, n_rows))


def _projected_chunks(
    adapter: FFNAdapter, vectors: torch.Tensor, apply_final_norm: bool, max_chunk_bytes: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Scores [chunk, vocab] of consecutive row blocks of `vectors`: only one block is held at a time."""
    rows = chunk_rows(adapter.vocab_size, max_chunk_bytes)
    for block in _row_slices(vectors.shape[0], rows):
        scores = adapter.project_to_vocab(vectors[block], apply_final_norm)
        if torch.isnan(scores).any():
            raise ValueError(f"model '{adapter.name}': vocabulary scores contain NaN (rows {block.start}..)")
        yield block, scores


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
) -> dict[str, np.ndarray]:
    """Promoted and suppressed tokens of every neuron of `layer`, with each neuron's score mean and spread.

    The [N, vocab] score matrix is never held whole (50k tokens x 36k neurons is 7 GB in float32): neurons
    go through in blocks of at most max_chunk_bytes of float32 scores (working memory is a few blocks).
    Keys: top_ids / top_scores [N, top_n] (descending), bottom_ids / bottom_scores [N, top_n] (ascending,
    most suppressed first), score_mean / score_std [N] (population std over the vocabulary).
    """
    top_n = _check_top_n(top_n, adapter.vocab_size)
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("top_ids", "top_scores", "bottom_ids", "bottom_scores", "score_mean", "score_std")
    }
    with torch.no_grad():
        vectors = adapter.value_vectors(layer)
        for _, scores in _projected_chunks(adapter, vectors, apply_final_norm, max_chunk_bytes):
            top_ids, top_scores = _ranked(scores, top_n)
            bottom_ids, negated = _ranked(-scores, top_n)
            mean, std = _moments(scores)
            found = {
                "top_ids": top_ids,
                "top_scores": top_scores.double(),
                "bottom_ids": bottom_ids,
                "bottom_scores": -negated.double(),
                "score_mean": mean,
                "score_std": std,
            }
            for key, value in found.items():
                parts[key].append(value.cpu().numpy())
    if not parts["top_ids"]:
        return _empty_projection(top_n)
    return {key: np.concatenate(values) for key, values in parts.items()}


def _empty_projection(top_n: int) -> dict[str, np.ndarray]:
    ids, scores = np.zeros((0, top_n), dtype=np.int64), np.zeros((0, top_n), dtype=np.float64)
    empty = np.zeros(0, dtype=np.float64)
    return {
        "top_ids": ids,
        "top_scores": scores,
        "bottom_ids": ids.copy(),
        "bottom_scores": scores.copy(),
        "score_mean": empty,
        "score_std": empty.copy(),
    }


# -------------------------------------------------------------------------------------------- triggers


def _padded_triggers(triggers: Sequence[Sequence[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged trigger lists as [k, max_len] ids (padding 0) and a mask of the real entries."""
    width = max((len(t) for t in triggers), default=0)
    ids = np.zeros((len(triggers), max(width, 1)), dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=bool)
    for row, tokens in enumerate(triggers):
        ids[row, : len(tokens)] = np.asarray(tokens, dtype=np.int64)
        mask[row, : len(tokens)] = True
    if ids[mask].size and (ids[mask].min() < 0 or ids[mask].max() >= vocab_size):
        raise ValueError(f"trigger token ids must be in 0..{vocab_size - 1}")
    return ids, mask


def _trigger_block(
    scores: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean trigger z-score and mean strictly-below fraction per row of one score block (NaN: no triggers)."""
    mean, std = _moments(scores)
    trigger = scores.gather(1, ids)
    z = (trigger.double() - mean[:, None]) / std[:, None]
    below = torch.stack([(scores < trigger[:, j : j + 1]).sum(dim=1) for j in range(ids.shape[1])], dim=1)
    fraction = below.double() / scores.shape[1]
    weight = mask.double()
    count = weight.sum(dim=1)
    return (torch.where(mask, z, 0.0)).sum(dim=1) / count, (fraction * weight).sum(dim=1) / count


def trigger_scores(
    adapter: FFNAdapter,
    layer: int,
    neurons: np.ndarray,
    triggers: list[list[int]],
    *,
    apply_final_norm: bool,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> dict[str, np.ndarray]:
    """Where each neuron's own trigger tokens fall in its vocabulary projection (module docstring).

    Keys trigger_z, trigger_percentile (float64, NaN where undefined) and suppresses_trigger (bool, false
    where trigger_z is NaN), one entry per neuron in the given order.
    """
    neurons = np.asarray(neurons, dtype=np.int64).reshape(-1)
    if len(triggers) != neurons.size:
        raise ValueError(f"got {neurons.size} neurons but {len(triggers)} trigger lists")
    ids, mask = _padded_triggers(triggers, adapter.vocab_size)
    z_parts, percentile_parts = [], []
    with torch.no_grad():
        vectors = adapter.value_vectors(layer)[torch.as_tensor(neurons)]
        for block, scores in _projected_chunks(adapter, vectors, apply_final_norm, max_chunk_bytes):
            block_ids = torch.as_tensor(ids[block], device=scores.device)
            block_mask = torch.as_tensor(mask[block], device=scores.device)
            z, percentile = _trigger_block(scores, block_ids, block_mask)
            z_parts.append(z.cpu().numpy())
            percentile_parts.append(percentile.cpu().numpy())
    z = np.concatenate(z_parts) if z_parts else np.zeros(0)
    percentile = np.concatenate(percentile_parts) if percentile_parts else np.zeros(0)
    return {"trigger_z": z, "trigger_percentile": percentile, "suppresses_trigger": z < 0}


# ------------------------------------------------------------------------------------------- the table


def display_tokens(token_strings: Sequence[str], vocab_size: int) -> np.ndarray:
    """Printable string per token id; ids past the tokenizer's list (padded vocabularies) read `<id:N>`."""
    shown = [escape_token(t) for t in token_strings[:vocab_size]]
    shown += [f"<id:{i}>" for i in range(len(shown), vocab_size)]
    return np.asarray(shown, dtype=object)


def _list_series(name: str, values: np.ndarray, dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, values.tolist(), dtype=pl.List(dtype))


def _layer_triggers(detectors: pl.DataFrame, layer: int) -> tuple[np.ndarray, list[list[int]]]:
    """Detector neurons of `layer` that have at least one detected token, and those tokens."""
    rows = detectors.filter((pl.col("layer") == layer) & (pl.col("detected_tokens").list.len() > 0))
    rows = rows.unique("neuron", keep="first", maintain_order=True)
    return rows["neuron"].to_numpy().astype(np.int64), rows["detected_tokens"].to_list()


def _layer_frame(
    layer: int,
    projection: dict[str, np.ndarray],
    trigger: dict[str, np.ndarray],
    neurons: np.ndarray,
    tokens: np.ndarray,
    apply_final_norm: bool,
) -> pl.DataFrame:
    """One layer's rows; trigger values are placed at their neurons and stay null elsewhere."""
    n = projection["score_mean"].size
    z = np.full(n, np.nan)
    percentile = np.full(n, np.nan)
    z[neurons] = trigger["trigger_z"]
    percentile[neurons] = trigger["trigger_percentile"]
    frame = pl.DataFrame(
        [
            pl.Series("layer", np.full(n, layer, dtype=np.int64)),
            pl.Series("neuron", np.arange(n, dtype=np.int64)),
            pl.Series("vocab_final_norm", np.full(n, bool(apply_final_norm))),
            _list_series("vocab_top_ids", projection["top_ids"], pl.Int64),
            _list_series("vocab_top_tokens", tokens[projection["top_ids"]], pl.Utf8),
            _list_series("vocab_top_scores", projection["top_scores"], pl.Float64),
            _list_series("vocab_bottom_ids", projection["bottom_ids"], pl.Int64),
            _list_series("vocab_bottom_tokens", tokens[projection["bottom_ids"]], pl.Utf8),
            _list_series("vocab_bottom_scores", projection["bottom_scores"], pl.Float64),
            pl.Series("vocab_score_mean", projection["score_mean"], dtype=pl.Float64),
            pl.Series("vocab_score_std", projection["score_std"], dtype=pl.Float64),
            pl.Series("trigger_z", z).fill_nan(None),
            pl.Series("trigger_percentile", percentile).fill_nan(None),
        ]
    )
    return frame.with_columns(suppresses_trigger=pl.col("trigger_z") < 0).cast(VOCAB_SCHEMA)


def vocab_table(
    adapter: FFNAdapter,
    token_strings: list[str],
    detectors: pl.DataFrame,
    *,
    layers: list[int],
    top_n: int = 10,
    apply_final_norm: bool = False,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> pl.DataFrame:
    """One row per (layer, neuron) of `layers`: top/bottom tokens of its value vector and trigger suppression.

    `detectors` (layer, neuron, detected_tokens) names the token detectors; trigger columns are null for
    every other neuron, and where undefined (module docstring). Columns and dtypes: VOCAB_SCHEMA.
    """
    _check_top_n(top_n, adapter.vocab_size)
    tokens = display_tokens(token_strings, adapter.vocab_size)
    frames = [pl.DataFrame(schema=VOCAB_SCHEMA)]
    for layer in layers:
        projection = project_layer(
            adapter, layer, top_n=top_n, apply_final_norm=apply_final_norm, max_chunk_bytes=max_chunk_bytes
        )
        neurons, triggers = _layer_triggers(detectors, layer)
        trigger = trigger_scores(
            adapter, layer, neurons, triggers, apply_final_norm=apply_final_norm, max_chunk_bytes=max_chunk_bytes
        )
        frames.append(_layer_frame(layer, projection, trigger, neurons, tokens, apply_final_norm))
    return pl.concat(frames)
