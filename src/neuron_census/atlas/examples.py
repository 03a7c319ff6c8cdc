"""Top activating examples in their context: the `top_k` accumulator keeps each neuron's k largest
activations with their (sequence, position); the tokens around them are read back from the token shards."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from neuron_census.config import schema_defaults

EXAMPLE_SCHEMA = {
    "layer": pl.Int64, "neuron": pl.Int64, "rank": pl.Int64, "activation": pl.Float64, "dataset": pl.Utf8,
    "seq": pl.Int64, "position": pl.Int64, "context": pl.List(pl.Utf8), "focus": pl.Int64,
}


def top_examples(values: np.ndarray, seq: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per neuron, the k largest of several datasets' top-k lists ([D, k, N] each; seq -1 marks an empty
    slot), ties to the earlier dataset, sequence and position. Returns (dataset, value, seq, pos), each
    [k, N], dataset -1 where fewer than k examples exist."""
    values, seq, pos = (np.asarray(a) for a in (values, seq, pos))
    if values.ndim != 3 or values.shape != seq.shape or values.shape != pos.shape:
        raise ValueError(f"top examples need values, seq and pos of one shape [datasets, k, neurons], got {values.shape}, {seq.shape}, {pos.shape}")
    n_data, kept, n_neurons = values.shape
    dataset = np.broadcast_to(np.arange(n_data)[:, None, None], values.shape)
    flat = [a.reshape(n_data * kept, n_neurons) for a in (values.astype(np.float64), seq, pos, dataset)]
    empty = flat[1] < 0
    order = np.lexsort((flat[2], flat[1], flat[3], -np.where(empty, -np.inf, flat[0]), empty), axis=0)[:k]
    picked = [np.take_along_axis(a, order, axis=0) for a in flat]
    missing = np.take_along_axis(empty, order, axis=0)
    value, seq_out, pos_out, data_out = picked
    return np.where(missing, -1, data_out), np.where(missing, np.nan, value), np.where(missing, -1, seq_out), np.where(missing, -1, pos_out)


def examples_table(
    layer: int,
    neurons: Sequence[int],
    picked: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    datasets: Sequence[str],
    read_sequence: Callable[[int, int], np.ndarray],
    token_texts: Sequence[str],
    before: int = schema_defaults("atlas")["before"],
    after: int = schema_defaults("atlas")["after"],
) -> pl.DataFrame:
    """One row per (neuron, rank) of `neurons` in one layer: the activation, where it was, and the context
    tokens `before` ahead of it to `after` behind it (`focus`: the activating token's index in `context`).
    `read_sequence(dataset index, seq)` gives a sequence's token ids."""
    data, value, seq, pos = picked
    rows = []
    for neuron in neurons:
        for rank in range(data.shape[0]):
            d, s, p = int(data[rank, neuron]), int(seq[rank, neuron]), int(pos[rank, neuron])
            if d < 0:
                break
            ids = read_sequence(d, s)
            start = max(0, p - before)
            context = [token_texts[int(i)] for i in ids[start : p + after + 1]]
            rows.append((layer, int(neuron), rank, float(value[rank, neuron]), datasets[d], s, p, context, p - start))
    return pl.DataFrame(rows, schema=EXAMPLE_SCHEMA, orient="row")
