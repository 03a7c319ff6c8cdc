"""Samples: activations at labelled spans, against reading them directly off the model."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.accumulators import merge_states
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.capture.store import StoreReader, merge_store_files, write_store
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import designed_tokens

LAYERS = (0, 2)


@pytest.fixture(scope="module")
def census():
    return load_model("census", {"source": "planted", "recipe": "census"}), designed_tokens("census")[:10]


def direct_activations(loaded, tokens: np.ndarray) -> dict[int, np.ndarray]:
    """[n_seq, seq_len, neurons] activations of each layer, by a hook on the full forward pass."""
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    handles = [
        loaded.adapter.neuron_input_module(layer).register_forward_pre_hook(
            lambda _m, args, layer=layer: acts[layer].append(args[0].reshape(*tokens.shape, -1))
        )
        for layer in LAYERS
    ]
    with torch.no_grad():
        loaded.model(input_ids=torch.from_numpy(tokens), use_cache=False)
    for handle in handles:
        handle.remove()
    return {layer: torch.cat(parts).numpy() for layer, parts in acts.items()}


def write_spans(path, rows) -> str:
    seq, start, end, label = zip(*rows)
    pl.DataFrame({"seq": seq, "start": start, "end": end, "label": label}).write_parquet(path)
    return str(path)


def capture(census, spans: str, rows: slice, limit: int = 100) -> dict:
    loaded, tokens = census
    settings = CaptureSettings(batch_size=3, layers=LAYERS, accumulators=("samples",), sample_spans=spans, sample_limit=limit)
    return capture_tokens(
        loaded.model, loaded.adapter, tokens[rows], model_name="census", first_seq_id=rows.start, has_bos=True,
        settings=settings, device=torch.device("cpu"), progress=False,
    )[1]["samples"]


def test_samples_are_span_means_of_the_activations(census, tmp_path):
    loaded, tokens = census
    # unsorted, one-position and long spans, two in one sequence, one in a sequence past the shard
    rows = [(7, 3, 9, 1), (0, 5, 6, 0), (4, 1, 64, 2), (0, 10, 12, 1), (42, 0, 1, 3)]
    state = capture(census, write_spans(tmp_path / "spans.parquet", rows), slice(0, 10))
    direct = direct_activations(loaded, tokens)
    expected_rows = sorted(rows[:4])  # seq 42 is not in the shard
    assert state["seq"].tolist() == [r[0] for r in expected_rows] and state["label"].tolist() == [r[3] for r in expected_rows]
    assert state["values"].shape == (len(LAYERS), 4, loaded.adapter.n_neurons)
    for slot, layer in enumerate(LAYERS):
        for index, (seq, start, end, _) in enumerate(expected_rows):
            np.testing.assert_allclose(state["values"][slot, index], direct[layer][seq, start:end].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_shards_merge_by_concatenation_and_the_limit_keeps_the_first_spans(census, tmp_path):
    rows = [(s, 2, 4, s % 3) for s in range(10)]
    spans = write_spans(tmp_path / "spans.parquet", rows)
    whole = capture(census, spans, slice(0, 10))
    merged = merge_states([{"samples": capture(census, spans, slice(5, 10))}, {"samples": capture(census, spans, slice(0, 5))}])["samples"]
    for key in whole:
        np.testing.assert_array_equal(merged[key], whole[key], err_msg=key)
    limited = capture(census, spans, slice(0, 10), limit=4)
    assert limited["seq"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(limited["values"], whole["values"][:, :4])
    # stored and merged a layer at a time, as shard stores are
    attrs = {"model": "census", "datasets": ["d"], "layers": list(LAYERS), "n_layers_total": 3, "n_neurons": 16, "seq_len": 64,
             "vocab_size": 48, "tokenizer_fingerprint": "t", "fire_rule": "preactivation", "has_bos": True, "top_k": 16}
    write_store(tmp_path / "a.zarr", attrs | {"sources": ["d/0"]}, {"samples": capture(census, spans, slice(0, 5))})
    write_store(tmp_path / "b.zarr", attrs | {"sources": ["d/1"]}, {"samples": capture(census, spans, slice(5, 10))})
    merge_store_files([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "m.zarr")
    reader = StoreReader(tmp_path / "m.zarr")
    for slot in range(len(LAYERS)):
        layer = reader.layer_state("samples", slot)
        np.testing.assert_array_equal(layer["values"][0], whole["values"][slot])
        np.testing.assert_array_equal(layer["seq"], whole["seq"])


def test_bad_spans_are_named(census, tmp_path):
    bad = write_spans(tmp_path / "bad.parquet", [(0, 3, 3, 0)])
    with pytest.raises(ValueError, match=r"sample_spans .*bad.parquet: row 0 \(seq 0, start 3, end 3\)"):
        capture(census, bad, slice(0, 3))
    with pytest.raises(ValueError, match="needs capture.sample_spans"):
        capture(census, None, slice(0, 3))
