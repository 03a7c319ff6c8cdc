"""Weight statistics of every neuron and its role in vocabulary space (Gurnee et al. 2024, Sec. 4.1, 5.1).

Weights are read `processed` (the default, as the paper reads them through TransformerLens) or `raw`:

- processed: the FFN's input norm is folded into the input weights (w_in * gamma; b_in + w_in . beta) and,
  for LayerNorm models, the reading weights are centred over d_model (the norm's output has mean 0) and the
  writing weights w_out too (every reader of the residual stream removes its mean); the final norm's gain
  is folded into the unembedding, which is centred over d_model (LayerNorm) and over the vocabulary
  (softmax ignores a constant logit shift). None of this changes what the model computes.
- raw: the checkpoint's tensors as they are.

Columns: `w_in_norm`, `w_out_norm`, `b_in`, `in_out_cos` = cos(w_in, w_out), `l2_penalty` =
|w_in|^2 + |w_out|^2, and the mean, variance, skew and (non-excess) kurtosis over the vocabulary of
cos(w_out, W_U[v]) (`vocab_cos_*`; w_out first mapped as the model maps the residual stream into the
unembedding, OPT-350m's project_out; tokens whose unembedding is 0, such as a padding row, are left out).
A neuron whose w_out is 0 has no cosines: null. `null_frac`: the share of |w_out|^2 in the unembedding's
effective null space, its `NULL_SHARE` of right-singular directions with the smallest singular values (and
every direction it maps to 0), which the logits barely read: entropy neurons write there, and act through the final norm's scale.

Roles (`vocab_roles`): prediction neurons have vocab-cosine kurtosis above a threshold (10) and positive
skew, suppression neurons the same kurtosis and negative skew: a few tokens' logits move far more than the
rest. Partition neurons move large parts of the vocabulary both ways: cosine variance above a multiple of
the model's median neuron's (a ratio, since a random direction's variance is about 1/d_model), without the
kurtosis of the other two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from neuron_census.config import schema_defaults

_VOCAB, _ROLES = schema_defaults("analysis/vocab"), schema_defaults("analysis/roles")

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
    from neuron_census.models.adapters import FFNAdapter


PROCESSING = ("processed", "raw")
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
NULL_SHARE = 0.02  # of d_model: the effective null space (GPT-2 small: the bottom 15 of 768 directions)


def _affine(norm: torch.nn.Module, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm's gain and bias (1 and 0 where it has none), read even where its layer waits on disk."""
    from accelerate.utils import align_module_device  # only where weights are read

    with align_module_device(norm):
        weight = getattr(norm, "weight", None)
        bias = getattr(norm, "bias", None)
        gain = torch.ones(d, device=device) if weight is None else weight.detach().to(device=device, dtype=torch.float32)
        shift = torch.zeros(d, device=device) if bias is None else bias.detach().to(device=device, dtype=torch.float32)
    return gain, shift


def layer_weights(adapter: FFNAdapter, layer: int, *, processed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 (w_in [N, d_model], b_in [N], w_out [N, d_model]) of `layer`, processed or raw (module docstring)."""
    w_in, b_in = adapter.input_weights(layer)
    w_out = adapter.value_vectors(layer).to(w_in.device)
    if processed:
        gain, shift = _affine(adapter.ffn_norm(layer), w_in.shape[1], w_in.device)
        b_in = b_in + w_in @ shift
        w_in = w_in * gain
        if not adapter.rms_norm:
            w_in = w_in - w_in.mean(dim=1, keepdim=True)
            w_out = w_out - w_out.mean(dim=1, keepdim=True)
    return w_in, b_in, w_out


def unembedding_directions(adapter: FFNAdapter, *, processed: bool) -> torch.Tensor:
    """float32 [vocab, d_unembed]: the row of each token, processed or raw (module docstring)."""
    rows = adapter.unembedding().to(torch.float32, copy=True)
    if processed:
        norm = adapter.final_norm()
        if norm is not None and rows.shape[1] == adapter.d_model:
            gain, _ = _affine(norm, rows.shape[1], rows.device)  # its bias adds the same logits to every input
            rows *= gain
            if not adapter.rms_norm:
                rows -= rows.mean(dim=1, keepdim=True)
        rows -= rows.mean(dim=0, keepdim=True)
    return rows


def null_space(unembedding: torch.Tensor) -> torch.Tensor:
    """[d_unembed, k]: the right-singular directions of the unembedding [vocab, d_unembed] with the
    round(NULL_SHARE * d_unembed) smallest singular values, and at least every direction it maps to 0 (a
    vocabulary smaller than d_unembed, or centred rows), at least one."""
    vocab, d = unembedding.shape
    # every right-singular direction; the left ones only as many as needed (a full U of GPT-2's 50,257
    # tokens would be 20 GB of float64)
    _, singular, vh = torch.linalg.svd(unembedding.double(), full_matrices=vocab < d)
    rank = int((singular > singular.max() * d * torch.finfo(torch.float32).eps).sum()) if len(singular) else 0
    k = max(1, round(NULL_SHARE * d), d - rank)
    return vh[-k:].T.to(unembedding.dtype)


def row_moments(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64 mean, variance, skew and non-excess kurtosis of each row (NaN where a row is constant)."""
    x = values.double()
    mean = x.mean(dim=1, keepdim=True)
    deviation = x - mean
    square = deviation.square()
    var = square.mean(dim=1)
    skew = (square * deviation).mean(dim=1) / var.pow(1.5)
    kurtosis = square.square().mean(dim=1) / var.square()
    flat = var == 0
    return {"mean": mean[:, 0], "var": var, "skew": skew.masked_fill(flat, torch.nan), "kurtosis": kurtosis.masked_fill(flat, torch.nan)}


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1; a zero row gives NaN (no direction)."""
    return rows / rows.norm(dim=1, keepdim=True)


def weight_columns(
    adapter: FFNAdapter, layers: Sequence[int], *, processing: str = _VOCAB["weights"], max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
) -> pl.DataFrame:
    """One row per (layer, neuron) of `layers` with the weight statistics of the module docstring. The
    [N, vocab] cosines go through in blocks of about `max_chunk_bytes`."""
    if processing not in PROCESSING:
        raise ValueError(f"weight processing must be one of {PROCESSING}, got '{processing}'")
    processed = processing == "processed"
    frames = []
    with torch.no_grad():
        tokens = unembedding_directions(adapter, processed=processed)
        null = null_space(tokens)
        tokens = _unit_rows(tokens[tokens.norm(dim=1) > 0])  # a padding row of zeros is no token's direction
        rows_per_chunk = max(1, max_chunk_bytes // (8 * 5 * tokens.shape[0]))  # a float32 block, its float64 copies
        for layer in layers:
            w_in, b_in, w_out = layer_weights(adapter, layer, processed=processed)
            in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)
            mapped = adapter.unembedding_space(w_out.to(tokens.device))
            directions = _unit_rows(mapped)
            parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("mean", "var", "skew", "kurtosis")}
            for start in range(0, len(directions), rows_per_chunk):
                for key, value in row_moments(directions[start : start + rows_per_chunk] @ tokens.T).items():
                    parts[key].append(value.cpu())
            columns = {
                "layer": np.full(len(w_in), layer, dtype=np.int64),
                "neuron": np.arange(len(w_in), dtype=np.int64),
                "w_in_norm": in_norm.double().cpu().numpy(),
                "w_out_norm": out_norm.double().cpu().numpy(),
                "b_in": b_in.double().cpu().numpy(),
                "in_out_cos": ((w_in * w_out).sum(dim=1) / (in_norm * out_norm)).double().cpu().numpy(),
                "l2_penalty": (in_norm.square() + out_norm.square()).double().cpu().numpy(),
                "null_frac": ((mapped @ null).square().sum(dim=1) / mapped.square().sum(dim=1)).double().cpu().numpy(),
            }
            columns |= {f"vocab_cos_{key}": torch.cat(values).numpy() for key, values in parts.items()}
            frames.append(pl.DataFrame(columns).fill_nan(None))
    return pl.concat(frames) if frames else pl.DataFrame()


def vocab_roles(
    neurons: pl.DataFrame, *, kurtosis: float = _ROLES["kurtosis"], partition_ratio: float = _ROLES["partition_ratio"]
) -> pl.Series:
    """Each neuron's role in vocabulary space (module docstring): 'prediction', 'suppression', 'partition'
    or null, from `vocab_cos_*` columns; the partition bar is `partition_ratio` times the median variance."""
    median = neurons["vocab_cos_var"].median()
    peaked = pl.col("vocab_cos_kurtosis") > kurtosis
    role = (
        pl.when(peaked & (pl.col("vocab_cos_skew") > 0))
        .then(pl.lit("prediction"))
        .when(peaked & (pl.col("vocab_cos_skew") < 0))
        .then(pl.lit("suppression"))
        .when(~peaked & (pl.col("vocab_cos_var") > partition_ratio * (median if median is not None else np.inf)))
        .then(pl.lit("partition"))
    )
    return neurons.select(role.alias("vocab_role"))["vocab_role"]
