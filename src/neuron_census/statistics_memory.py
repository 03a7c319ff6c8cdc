"""How much device memory a capture's statistics can hold, before any batch runs (pure functions).

Dense statistics have fixed sizes; bounded sparse tables (`token_capacity`, `ngram_capacity`) are counted
at their bound, every neuron full, with the pending batch pairs `SlotMerges` lets wait (as many as the
table holds, or `merge_pending` shared by the layers if that is more). So the total is an upper bound,
reached only when every neuron meets more distinct tokens and n-grams than its capacity, except for the
pairs of the batch being added, which scale with the batch as the activations do. It tells a user before a
long job whether the statistics fit next to the model: OPT-30b with the presets' capacities can hold
170 GB of statistics under `resident`, and 6.1 GB under `layerwise`, which keeps one layer's tables on the GPU.
"""

from __future__ import annotations

from neuron_census.accumulators import Geometry
from neuron_census.capture import CaptureSettings, resolve_ngram_layers

ENTRY_BYTES = 16  # an int64 key and an int64 count per sparse table entry


def statistics_device_bytes(
    settings: CaptureSettings,
    geometry: Geometry,
    n_layers_total: int,
    *,
    layerwise: bool,
    n_tokens: int | None = None,
) -> dict[str, int]:
    """Upper bound of each accumulator's device memory, in bytes.

    Under layerwise capture, firing and position counts and the sparse tables of a layer leave the device
    once its last batch is counted, so only one layer's count; the other statistics stay for every layer.
    `n_tokens` (the shard's) bounds the tables too: a neuron meets at most that many distinct items.
    """
    n_layers, n_neurons = len(geometry.layers), geometry.n_neurons
    seen = n_tokens if n_tokens is not None else 1 << 62
    on_device = 1 if layerwise else n_layers
    ngram_layers = resolve_ngram_layers(settings.ngram_layers, geometry.layers, n_layers_total)
    bounds: dict[str, int] = {
        "fire_count": on_device * n_neurons * 4 + n_layers * 8,
        "position_fire_count": on_device * geometry.seq_len * n_neurons * 4 + geometry.seq_len * 8,
        "token_count": geometry.vocab_size * 8,
        "token_fire_count": _token_table_bytes(settings, geometry, on_device, seen),
        "ngram_fire_count": len(settings.ngram_orders) * len(ngram_layers) * n_neurons * 8
        + _sparse_bytes(
            min(settings.ngram_capacity, seen) * n_neurons,
            min(on_device, len(ngram_layers)),
            len(ngram_layers),
            settings.merge_pending,
            tables=len(settings.ngram_orders),
        ),
        "ngram_count": len(settings.ngram_orders) * _sparse_bytes(min(settings.ngram_count_capacity, seen), 1, 1, settings.merge_pending),
        "top_k": n_layers * settings.top_k * n_neurons * (4 + 8 + 8),
        "moments": n_layers * n_neurons * (8 + 8 + 4 + 4),
    }
    return {name: bounds[name] for name in settings.accumulators}


def statistics_host_bytes(
    settings: CaptureSettings, geometry: Geometry, n_layers_total: int, *, n_tokens: int | None = None
) -> dict[str, int]:
    """Upper bound of what the statistics take in host memory by the end of a capture, in bytes.

    Firing and position counts are summed into int64 totals in host memory for every layer, whatever the
    strategy; the sparse tables, full, end there too (finished layers under `layerwise`, every layer when
    the state is read) and are held twice for a moment, as captured and joined into the stored arrays
    (plus one layer's re-keyed copy). Top-k and moments are copied once. The model's weights and kept hidden states come on top (see config/README.md).
    """
    n_layers, n_neurons = len(geometry.layers), geometry.n_neurons
    seen = n_tokens if n_tokens is not None else 1 << 62
    ngram_layers = resolve_ngram_layers(settings.ngram_layers, geometry.layers, n_layers_total)
    cells = n_layers * geometry.vocab_size * n_neurons
    if cells <= settings.token_fire_dense_limit:
        token_entries = cells  # the dense table's nonzero cells, at most every one
    else:
        token_entries = n_layers * n_neurons * min(settings.token_capacity or geometry.vocab_size, geometry.vocab_size, seen)
    ngram_entries = len(ngram_layers) * len(settings.ngram_orders) * n_neurons * min(settings.ngram_capacity, seen)
    bounds = {
        "fire_count": n_layers * n_neurons * 8 + n_layers * 8,
        "position_fire_count": n_layers * geometry.seq_len * n_neurons * 8 + geometry.seq_len * 8,
        "token_count": geometry.vocab_size * 8,
        "token_fire_count": 2 * token_entries * ENTRY_BYTES,
        "ngram_fire_count": 2 * ngram_entries * ENTRY_BYTES + len(settings.ngram_orders) * len(ngram_layers) * n_neurons * 8,
        "ngram_count": 2 * len(settings.ngram_orders) * min(settings.ngram_count_capacity, seen) * ENTRY_BYTES,
        "top_k": n_layers * settings.top_k * n_neurons * (4 + 8 + 8),
        "moments": n_layers * n_neurons * (8 + 8 + 4 + 4),
    }
    return {name: bounds[name] for name in settings.accumulators}


def _sparse_bytes(table: int, slots_on_device: int, n_slots: int, merge_pending: int, *, tables: int = 1) -> int:
    """Full tables (`tables` of `table` entries each, e.g. one per n-gram order) for the slots on the
    device, with the pairs that may wait for them: a slot merges once its pending pairs, all its tables'
    together, reach its largest table's size and its share of `merge_pending`.
    """
    pending = max(merge_pending // max(1, n_slots), table)
    return slots_on_device * (tables * table + pending) * ENTRY_BYTES


def _token_table_bytes(settings: CaptureSettings, geometry: Geometry, on_device: int, seen: int) -> int:
    n_layers = len(geometry.layers)
    cells = n_layers * geometry.vocab_size * geometry.n_neurons
    if cells <= settings.token_fire_dense_limit:
        return cells * 4  # one dense int32 table for every layer, whatever the strategy
    # exact (no capacity): at most every token of the vocabulary, or of the shard, per neuron
    per_neuron = min(settings.token_capacity or geometry.vocab_size, geometry.vocab_size, seen)
    return _sparse_bytes(per_neuron * geometry.n_neurons, on_device, n_layers, settings.merge_pending)


def describe_bound(bounds: dict[str, int]) -> str:
    """'up to 12.3 GB (position_fire_count 11.3, ...)', largest first."""
    parts = ", ".join(f"{name} {size / 1e9:.1f}" for name, size in sorted(bounds.items(), key=lambda kv: -kv[1]))
    return f"up to {sum(bounds.values()) / 1e9:.1f} GB ({parts})"
