"""The device-memory bound of the statistics: its arithmetic, and that a capture stays within it."""

from __future__ import annotations

import numpy as np
import torch

from neuron_census import accumulators
from neuron_census.accumulators import Geometry
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.models.loading import load_model
from neuron_census.statistics_memory import describe_bound, statistics_device_bytes, statistics_host_bytes

OPT_30B = Geometry(layers=tuple(range(48)), n_neurons=28672, seq_len=2048, vocab_size=50272)
PRESET = CaptureSettings(ngram_capacity=2048, token_capacity=2048, top_k=32)


def test_opt_30b_with_the_presets_capacities():
    resident = statistics_device_bytes(PRESET, OPT_30B, 48, layerwise=False)
    layerwise = statistics_device_bytes(PRESET, OPT_30B, 48, layerwise=True)
    table = 28672 * 2048  # entries of one layer's full table: 2048 per neuron
    assert resident["position_fire_count"] == 48 * 2048 * 28672 * 4 + 2048 * 8
    assert layerwise["position_fire_count"] == 2048 * 28672 * 4 + 2048 * 8
    # a full table and as many pending pairs, 16 bytes each: every layer, or the one being run; and the
    # temporaries of re-keying one layer's table token-major when it is handed over (40 bytes an entry)
    assert resident["token_fire_count"] == 48 * 2 * table * 16 + table * 40
    assert layerwise["token_fire_count"] == 2 * table * 16 + table * 40
    # n-grams of the first half of the layers, two orders sharing one pending budget, one layer's split
    # keys when it is handed over (24 bytes an entry), and the denominators
    assert resident["ngram_fire_count"] == 24 * 3 * table * 16 + table * 24 + 2 * 24 * 28672 * 8
    assert layerwise["ngram_fire_count"] == 3 * table * 16 + table * 24 + 2 * 24 * 28672 * 8
    assert resident["top_k"] == layerwise["top_k"] == 48 * 32 * 28672 * 20  # top-k stays for every layer
    assert describe_bound(resident).startswith("up to 174.1 GB (token_fire_count 92.5, ngram_fire_count 69.1")


def test_dense_exact_and_short_shards():
    small = Geometry(layers=(0, 1), n_neurons=16, seq_len=8, vocab_size=48)
    dense = statistics_device_bytes(CaptureSettings(), small, 2, layerwise=True)
    assert dense["token_fire_count"] == 48 * 16 * 4 + 48 * 16 * 12  # one layer's table, and its hand-over
    dense = statistics_device_bytes(CaptureSettings(), small, 2, layerwise=False)
    assert dense["token_fire_count"] == 2 * 48 * 16 * 4 + 48 * 16 * 12  # every layer's table
    exact = statistics_device_bytes(CaptureSettings(), OPT_30B, 48, layerwise=False)
    assert exact["token_fire_count"] == 48 * 2 * 50272 * 28672 * 16 + 50272 * 28672 * 8  # the vocabulary
    # a shard of 1000 tokens: no neuron meets more than 1000 distinct tokens or n-grams
    short = statistics_device_bytes(PRESET, OPT_30B, 48, layerwise=False, n_tokens=1000)
    assert short["token_fire_count"] == 48 * 2 * 1000 * 28672 * 16 + 1000 * 28672 * 40
    assert short["ngram_fire_count"] == 24 * 3 * 1000 * 28672 * 16 + 1000 * 28672 * 24 + 2 * 24 * 28672 * 8
    assert short["ngram_count"] == 2 * (1000 + max(1 << 18, 1000)) * 16
    assert short["position_fire_count"] == statistics_device_bytes(PRESET, OPT_30B, 48, layerwise=False)["position_fire_count"]
    subset = statistics_device_bytes(CaptureSettings(accumulators=("fire_count",)), small, 2, layerwise=False)
    assert subset == {"fire_count": 2 * 16 * 4 + 2 * 8}


def test_a_capture_stays_within_the_bound(monkeypatch):
    """Capacities that the neurons of a trained model exceed: at every merge, a layer's table and the pairs
    waiting for it (all but the batch that triggered the merge) stay within that layer's share of the
    bound, and come close to it."""
    loaded = load_model("m", {"source": "local", "path": "resources/models/stories260K"})
    adapter = loaded.adapter
    tokens = np.random.default_rng(0).integers(3, 13, size=(24, 32))  # ten tokens: n-grams recur, as in text
    settings = CaptureSettings(
        batch_size=4, token_fire_dense_limit=0, token_capacity=2, ngram_capacity=2, ngram_layers="all", merge_pending=64
    )
    seen: dict[str, list[int]] = {"token_fire_count": [], "ngram_fire_count": []}

    def waiting(table) -> int:
        return table.held() + sum(table.staged()[:-1])

    def watch(cls, held):
        flush = cls._flush

        def watched(self, slot):
            seen[cls.name].append(held(self, slot) * 16)
            return flush(self, slot)

        monkeypatch.setattr(cls, "_flush", watched)

    # the last staged batch is the one that triggered the merge (the state's final flushes have none)
    watch(accumulators.TokenFireCount, lambda acc, s: waiting(acc._tables[s]))
    watch(accumulators.NgramFireCount, lambda acc, s: sum(waiting(acc._tables[s][n]) for n in acc.orders))
    layers, _ = capture_tokens(
        loaded.model, adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
        settings=settings, device=torch.device("cpu"), progress=False,
    )
    geometry = Geometry(layers=layers, n_neurons=adapter.n_neurons, seq_len=tokens.shape[1], vocab_size=adapter.vocab_size)
    bound = statistics_device_bytes(settings, geometry, adapter.n_layers, layerwise=True)  # one layer's share
    fires = len(settings.ngram_orders) * len(layers) * adapter.n_neurons * 8  # n-gram denominators, not tables
    for name, per_layer in (("token_fire_count", bound["token_fire_count"]), ("ngram_fire_count", bound["ngram_fire_count"] - fires)):
        assert max(seen[name]) <= per_layer, name
        assert max(seen[name]) >= per_layer / 8, name  # the tables did fill: the check is not vacuous


def test_host_memory_of_opt_66b_statistics():
    """Capture jobs hand each layer over to their store: host memory holds one layer's position counts and
    tables (a table at most three times), or two layers' while a writer thread writes one (the default),
    not all 64 layers' (350 GB when they were all held to the end)."""
    geometry = Geometry(layers=tuple(range(64)), n_neurons=36864, seq_len=2048, vocab_size=50272)
    host = statistics_host_bytes(PRESET, geometry, 64, n_tokens=256 * 2048, write_behind=False)
    assert host["position_fire_count"] == 2048 * 36864 * 8 + 2048 * 8  # one layer: 0.6 GB
    assert host["token_fire_count"] == 3 * 36864 * 2048 * 16
    assert host["ngram_fire_count"] == 2 * 36864 * 2048 * (16 + 24) + 2 * 32 * 36864 * 8
    assert sum(host.values()) < 12e9
    behind = statistics_host_bytes(PRESET, geometry, 64, n_tokens=256 * 2048)
    assert behind["position_fire_count"] == 2 * 2048 * 36864 * 8 + 2048 * 8  # two layers
    assert behind["token_fire_count"] == 2 * 3 * 36864 * 2048 * 16
    assert behind["ngram_fire_count"] == 2 * 2 * 36864 * 2048 * (16 + 24) + 2 * 32 * 36864 * 8
    assert behind["top_k"] == host["top_k"] and behind["fire_count"] == host["fire_count"]
    assert 22e9 < sum(behind.values()) < 22.5e9
    # from a GPU through page-locked blocks of up to twice an array's size
    locked = statistics_host_bytes(PRESET, geometry, 64, n_tokens=256 * 2048, page_locked=True)
    assert locked["position_fire_count"] == 2 * 2 * 2048 * 36864 * 8 + 2048 * 8
    assert locked["fire_count"] == 2 * 64 * 36864 * 8 + 64 * 8
    assert locked["token_fire_count"] == behind["token_fire_count"]  # kept on the device, copied out and written
    assert locked["ngram_fire_count"] == 2 * 2 * 36864 * 2048 * 24 + 48 * 36864 * 2048 + 2 * 32 * 36864 * 8
    assert locked["top_k"] == 2 * behind["top_k"] and 2 * locked["ngram_count"] == 3 * behind["ngram_count"]
    assert 23.5e9 < sum(locked.values()) < 24e9
    short = statistics_host_bytes(PRESET, geometry, 64, n_tokens=100, write_behind=False)  # no neuron meets more than 100 items
    assert short["token_fire_count"] == 3 * 36864 * 100 * 16
    # 2**24 sequences: per-position counts of every layer can leave float32 on the device before the end
    huge = statistics_host_bytes(PRESET, geometry, 64, n_tokens=(1 << 24) * 2048)
    assert huge["position_fire_count"] == 64 * 2048 * 36864 * 8 + 2048 * 8
    # a single layer is never held twice, and n-gram tables only for the layers that count n-grams
    one = Geometry(layers=(5,), n_neurons=36864, seq_len=2048, vocab_size=50272)
    assert statistics_host_bytes(PRESET, one, 64, n_tokens=256 * 2048) == statistics_host_bytes(
        PRESET, one, 64, n_tokens=256 * 2048, write_behind=False
    )