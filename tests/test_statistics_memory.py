"""Each accumulator's memory bound: its arithmetic, and that a capture stays within it."""

from __future__ import annotations

import numpy as np
import torch

from neuron_census.accumulators import REGISTRY, Geometry, describe_bound, statistics_memory
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.models.loading import load_model

OPT_30B = Geometry(layers=tuple(range(48)), n_neurons=28672, seq_len=2048, vocab_size=50272, n_layers_total=48)
PRESET = CaptureSettings(ngram_capacity=2048, token_capacity=2048, top_k=32, token_fire_dense_limit=0)
TOKENS = 256 * 2048


def device_bytes(settings, geometry, layerwise, n_tokens=TOKENS) -> dict[str, int]:
    return {name: m.device for name, m in statistics_memory(settings, geometry, layerwise=layerwise, n_tokens=n_tokens).items()}


def test_opt_30b_with_the_presets_capacities():
    resident, layerwise = device_bytes(PRESET, OPT_30B, False), device_bytes(PRESET, OPT_30B, True)
    table = 28672 * 2048  # entries of one layer's full table: 2048 per neuron
    assert resident["position_fire_count"] == 48 * 2048 * 28672 * 4 + 2048 * 8
    assert layerwise["position_fire_count"] == 2048 * 28672 * 4 + 2048 * 8
    # a full table and its share of the pending bytes per layer on the device, and re-keying one layer
    pending, batch_table = PRESET.pending_bytes // 48, 16 * 2048 * 28672 * 4  # and the batch's own table
    assert resident["token_fire_count"] == 48 * (table * 16 + pending) + batch_table + table * 40
    assert layerwise["token_fire_count"] == table * 16 + pending + batch_table + table * 40
    # n-grams of the first half of the layers, two orders; every pending byte; the denominators
    fires, batch_tables = 2 * 24 * 28672 * 8, 2 * 16 * 2048 * 28672 * 4
    waiting = PRESET.pending_bytes + batch_tables
    assert resident["ngram_fire_count"] == 24 * 2 * table * 16 + waiting + 2 * table * 24 + fires
    assert layerwise["ngram_fire_count"] == 2 * table * 16 + waiting + 2 * table * 24 + fires
    assert resident["top_k"] == layerwise["top_k"] == 48 * 32 * 28672 * 8 + 2 * (1 << 30)  # keys ranked a GiB at a time
    assert describe_bound(resident).startswith("up to 129.1 GB (ngram_fire_count 59.7, token_fire_count 55.5, position_fire_count 11.3")


def test_dense_tokens_and_short_shards():
    small = Geometry(layers=(0, 1), n_neurons=16, seq_len=8, vocab_size=48, n_layers_total=2)
    dense = device_bytes(CaptureSettings(), small, True)
    assert dense["token_fire_count"] == 48 * 16 * 4 + 48 * 16 * 12  # one layer's table, and its hand-over
    assert device_bytes(CaptureSettings(), small, False)["token_fire_count"] == 2 * 48 * 16 * 4 + 48 * 16 * 12
    # a shard of 1000 tokens: no neuron meets more than 1000 distinct tokens or n-grams
    short = device_bytes(PRESET, OPT_30B, False, n_tokens=1000)
    pending, batch_table = PRESET.pending_bytes // 48, 16 * 2048 * 28672 * 4
    assert short["token_fire_count"] == 48 * (1000 * 28672 * 16 + pending) + batch_table + 1000 * 28672 * 40
    assert short["ngram_count"] == 2 * 2 * 1000 * 16
    subset = device_bytes(CaptureSettings(accumulators=("fire_count",)), small, False)
    assert subset == {"fire_count": 2 * 16 * 4 + 2 * 8}


def test_host_memory_of_opt_66b_statistics():
    """Capture jobs hand each layer over to their store: host memory holds two layers' position counts and
    tables (a writer thread writes one while the next is handed over), not all 64 layers'."""
    geometry = Geometry(layers=tuple(range(64)), n_neurons=36864, seq_len=2048, vocab_size=50272, n_layers_total=64)
    host = {name: m.host for name, m in statistics_memory(PRESET, geometry, layerwise=True, n_tokens=TOKENS).items()}
    assert host["position_fire_count"] == 2 * 2048 * 36864 * 8 + 2048 * 8
    assert host["token_fire_count"] == 2 * 3 * 36864 * 2048 * 16
    assert 20e9 < sum(host.values()) < 25e9
    huge = statistics_memory(PRESET, geometry, layerwise=True, n_tokens=(1 << 24) * 2048)
    assert huge["position_fire_count"].host == 64 * 2048 * 36864 * 8 + 2048 * 8  # float32 could lose a unit


def test_a_capture_stays_within_the_bound(monkeypatch):
    """Capacities that the neurons of a trained model exceed: at every flush, a layer's table and the batch
    tables waiting for it stay within that layer's share of the bound, and come close to it."""
    loaded = load_model("m", {"source": "local", "path": "resources/models/stories260K"})
    adapter = loaded.adapter
    tokens = np.random.default_rng(0).integers(3, 13, size=(24, 32))  # ten tokens: n-grams recur, as in text
    settings = CaptureSettings(
        batch_size=4, token_fire_dense_limit=0, token_capacity=2, ngram_capacity=2, ngram_layers="all", pending_bytes=20_000
    )
    seen: dict[bool, list[int]] = {True: [], False: []}  # token tables, n-gram tables
    from neuron_census.accumulators import tables

    flush = tables.PendingCounts.flush

    def watched(self):
        seen[self.table.span == adapter.vocab_size].append(self.table.held() * 16 + self.bytes)
        return flush(self)

    monkeypatch.setattr(tables.PendingCounts, "flush", watched)
    layers, _ = capture_tokens(
        loaded.model, adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
        settings=settings, device=torch.device("cpu"), progress=False,
    )
    geometry = Geometry(layers, adapter.n_neurons, tokens.shape[1], adapter.vocab_size, adapter.n_layers)
    for is_token, name in ((True, "token_fire_count"), (False, "ngram_fire_count")):
        bound = REGISTRY[name].memory(settings, geometry, layerwise=True, n_tokens=tokens.size).device
        assert max(seen[is_token]) <= bound, name
        assert max(seen[is_token]) >= bound / 16, name  # the tables did fill: the check is not vacuous
