"""How much memory a capture's statistics can hold, on the device and in host memory (pure functions).

Dense statistics have fixed sizes; bounded sparse tables (`token_capacity`, `ngram_capacity`) are counted
at their bound, every neuron full (a neuron meets at most as many distinct items as the shard has tokens),
with the pending batch pairs `SlotMerges` lets wait on the device (as many as the table holds, or
`merge_pending` shared by the layers if that is more). So each total is an upper bound, reached only when
every neuron meets more distinct tokens and n-grams than its capacity, except for the pairs of the batch
being added, which scale with the batch as the activations do. It tells a user before a long job whether
the statistics fit next to the model: OPT-30b with the presets' capacities can hold 174 GB of statistics
on the GPU under `resident`, and 9.6 GB under `layerwise`, which keeps one layer's tables there; host
memory holds the tables of one layer, or two while a writer thread writes one, under every strategy, as
the job writes them to its store.
"""

from __future__ import annotations

from dataclasses import dataclass

from neuron_census.accumulators import Geometry
from neuron_census.capture.engine import CaptureSettings, resolve_ngram_layers

ENTRY_BYTES = 16  # an int64 key and an int64 count per sparse table entry
# device temporaries per entry while one layer's table is handed over (`take_layer`): a bounded token
# table is re-keyed token-major (split keys, 32-bit sort keys and order, new keys and counts; an exact one
# only has its keys shifted), an n-gram table has its keys split into neuron and n-gram
REKEY_BYTES, SHIFT_BYTES, SPLIT_BYTES = 40, 8, 24
DENSE_HANDOVER_BYTES = 12  # per cell of a dense token table handed over: its index (int64) and count (int32)


@dataclass(frozen=True)
class _Sizes:
    """What both bounds are computed from."""

    n_layers: int
    n_neurons: int
    ngram_layers: int
    orders: int
    dense_token_cells: int | None  # cells of the dense token x neuron table, None when it is sparse
    tokens_per_neuron: int  # sparse token table entries a neuron can hold
    ngrams_per_neuron: int  # n-gram table entries a neuron can hold, per order
    ngram_occurrences: int  # distinct n-grams the occurrence counts can hold, per order

    @classmethod
    def of(cls, settings: CaptureSettings, geometry: Geometry, n_layers_total: int, n_tokens: int | None) -> _Sizes:
        seen = n_tokens if n_tokens is not None else 1 << 62
        n_layers, vocab = len(geometry.layers), geometry.vocab_size
        cells = n_layers * vocab * geometry.n_neurons
        return cls(
            n_layers=n_layers,
            n_neurons=geometry.n_neurons,
            ngram_layers=len(resolve_ngram_layers(settings.ngram_layers, geometry.layers, n_layers_total)),
            orders=len(settings.ngram_orders),
            dense_token_cells=cells if cells <= settings.token_fire_dense_limit else None,
            # exact (no capacity): at most every token of the vocabulary, or of the shard
            tokens_per_neuron=min(settings.token_capacity or vocab, vocab, seen),
            ngrams_per_neuron=min(settings.ngram_capacity, seen),
            ngram_occurrences=min(settings.ngram_count_capacity, seen),
        )


def _kept_whole(settings: CaptureSettings, geometry: Geometry, sizes: _Sizes) -> dict[str, int]:
    """Statistics of the same size on the device and on the host, for every layer under every strategy."""
    return {
        "token_count": geometry.vocab_size * 8,
        "top_k": sizes.n_layers * settings.top_k * sizes.n_neurons * (4 + 8 + 8),
        "moments": sizes.n_layers * sizes.n_neurons * (8 + 8 + 4 + 4),
    }


def statistics_device_bytes(
    settings: CaptureSettings,
    geometry: Geometry,
    n_layers_total: int,
    *,
    layerwise: bool,
    n_tokens: int | None = None,
) -> dict[str, int]:
    """Upper bound of each accumulator's device memory, in bytes.

    Under layerwise capture, firing and position counts and the token and n-gram tables of a layer leave
    the device once its last batch is counted, so only one layer's count; the other statistics stay for
    every layer.
    Handing a layer's tables over takes temporaries for one layer's tables. `n_tokens` (the shard's)
    bounds the tables too.
    """
    sizes = _Sizes.of(settings, geometry, n_layers_total, n_tokens)
    n_layers, n_neurons = sizes.n_layers, sizes.n_neurons
    on_device = 1 if layerwise else n_layers
    if sizes.dense_token_cells is not None:
        # an int32 table for each layer on the device; handing one over finds its nonzero cells there (an
        # int64 index and an int32 count each, every cell at worst)
        layer_cells = sizes.dense_token_cells // n_layers
        token_table = on_device * layer_cells * 4 + layer_cells * DENSE_HANDOVER_BYTES
    else:
        entries = sizes.tokens_per_neuron * n_neurons
        handover = entries * (REKEY_BYTES if settings.token_capacity else SHIFT_BYTES)
        token_table = _sparse_bytes(entries, on_device, n_layers, settings.merge_pending) + handover
    ngram_tables = (sizes.ngrams_per_neuron * n_neurons * SPLIT_BYTES if sizes.ngram_layers else 0) + _sparse_bytes(
        sizes.ngrams_per_neuron * n_neurons,
        min(on_device, sizes.ngram_layers),
        sizes.ngram_layers,
        settings.merge_pending,
        tables=sizes.orders,
    )
    bounds = _kept_whole(settings, geometry, sizes) | {
        "fire_count": on_device * n_neurons * 4 + n_layers * 8,
        "position_fire_count": on_device * geometry.seq_len * n_neurons * 4 + geometry.seq_len * 8,
        "token_fire_count": token_table,
        "ngram_fire_count": sizes.orders * sizes.ngram_layers * n_neurons * 8 + ngram_tables,
        "ngram_count": sizes.orders * _sparse_bytes(sizes.ngram_occurrences, 1, 1, settings.merge_pending),
    }
    return {name: bounds[name] for name in settings.accumulators}


def statistics_host_bytes(
    settings: CaptureSettings,
    geometry: Geometry,
    n_layers_total: int,
    *,
    n_tokens: int | None = None,
    write_behind: bool = True,
    page_locked: bool = False,
) -> dict[str, int]:
    """Upper bound of what the statistics take in host memory at any time of a capture job, in bytes.

    The job hands the statistics of a layer over to the store being written one layer at a time (each as
    soon as it has counted its last batch), so host memory holds one layer's
    int64 position counts and tables, whatever the strategy: a table is held at most three times while it
    is handed over (as kept, re-keyed for the store, and the copy written). With `write_behind` (the
    default) a writer thread writes a layer while the next one is computed and handed over, so two layers'
    are held. Firing counts of every layer, and position counts of every layer when a shard has 2**24
    sequences or more, are summed into int64 in host memory before that. Top-k and moments are counted
    whole (on the host when the device is the CPU), the occurrence counts twice (kept and written). The
    model's weights and kept hidden states come on top (see config/README.md).

    `page_locked` (capture on a CUDA device): statistics leave the device through page-locked memory
    (`neuron_census.capture.host_copies`), which PyTorch allocates in blocks of a power of two bytes and keeps for
    reuse, so each array copied out can take up to twice its size. A token table still stays within three
    times its size (its kept copy is on the device); an n-gram table's columns pass through page-locked
    copies one table at a time, which PyTorch keeps for the next table: up to 48 bytes an entry of one table
    besides the joined columns, in place of every kept table's 16.
    """
    locked = 2 if page_locked else 1
    sizes = _Sizes.of(settings, geometry, n_layers_total, n_tokens)
    n_layers, n_neurons = sizes.n_layers, sizes.n_neurons
    held = min(n_layers, 2 if write_behind else 1)  # layers handed over and not yet written
    if sizes.dense_token_cells is not None:
        token_entries = sizes.dense_token_cells // n_layers  # one layer of the dense table, every cell nonzero
    else:
        token_entries = n_neurons * sizes.tokens_per_neuron
    ngram_layers_held = min(held, sizes.ngram_layers)
    ngram_entries = sizes.orders * n_neurons * sizes.ngrams_per_neuron
    n_seq = n_tokens // geometry.seq_len if n_tokens is not None else 1 << 62
    position_rows = n_layers if n_seq >= 1 << 24 else held  # rows released early, before their layer is done
    # the store's (group, n-gram, count) columns, and the kept tables on a CPU; from a GPU, the page-locked
    # copies of one table's columns, freed into PyTorch's cache once joined and reused by the next table
    if page_locked:
        ngram_tables = ngram_layers_held * ngram_entries * 24 + (2 * 24 * n_neurons * sizes.ngrams_per_neuron if ngram_layers_held else 0)
    else:
        ngram_tables = ngram_layers_held * ngram_entries * (ENTRY_BYTES + 24)
    kept_whole = {name: size * locked for name, size in _kept_whole(settings, geometry, sizes).items()}
    bounds = kept_whole | {
        "fire_count": locked * n_layers * n_neurons * 8 + n_layers * 8,
        "position_fire_count": locked * position_rows * geometry.seq_len * n_neurons * 8 + geometry.seq_len * 8,
        "token_fire_count": held * 3 * token_entries * ENTRY_BYTES,
        "ngram_fire_count": ngram_tables + sizes.orders * sizes.ngram_layers * n_neurons * 8,
        "ngram_count": (1 + locked) * sizes.orders * sizes.ngram_occurrences * ENTRY_BYTES,
    }
    return {name: bounds[name] for name in settings.accumulators}


def _sparse_bytes(table: int, slots_on_device: int, n_slots: int, merge_pending: int, *, tables: int = 1) -> int:
    """Full tables (`tables` of `table` entries each, e.g. one per n-gram order) for the slots on the
    device, with the pairs that may wait for them: a slot merges once its pending pairs, all its tables'
    together, reach its largest table's size and its share of `merge_pending`.
    """
    pending = max(merge_pending // max(1, n_slots), table)
    return slots_on_device * (tables * table + pending) * ENTRY_BYTES


def describe_bound(bounds: dict[str, int]) -> str:
    """'up to 12.3 GB (position_fire_count 11.3, ...)', largest first."""
    parts = ", ".join(f"{name} {size / 1e9:.1f}" for name, size in sorted(bounds.items(), key=lambda kv: -kv[1]))
    return f"up to {sum(bounds.values()) / 1e9:.1f} GB ({parts})"
