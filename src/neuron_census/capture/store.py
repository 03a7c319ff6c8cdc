"""Accumulator stores: one zarr v3 group per capture job, and their merge.

Layout: group attributes describe what was captured (model, dataset, shards, layers, sizes, fire rule);
one subgroup per accumulator holds its state arrays. Stores are written through `atomic_path`, and a
store is only accepted on reading when its attributes say it is complete and every array it is asked for is
readable. Merges read one store at a time (and the largest, summed arrays a block of rows at a time), so
their memory does not grow with the number of shards.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, reduce
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from neuron_census.accumulators import REGISTRY, State
from neuron_census.accumulators.base import PAIRED, Parts, sorted_range_of
from neuron_census.atomic import atomic_path
from neuron_census.capture.layer_states import LayeredStates, written_behind

STORE_KIND = "accumulators"
FORMAT_VERSION = 2

# Counts and sorted keys are small integers in wide types: byte-shuffled, zstd at level 1 writes a capture
# store 1.3-1.8x faster than zarr's default zstd (level 3), reads it as fast, and is 9% larger
# (benchmarks/store_codecs.py). Readers take any codec a store names.
STORE_COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),)

# Attributes that must agree for two stores to be merged.
MERGE_KEYS = (
    "model", "layers", "n_layers_total", "n_neurons", "seq_len", "vocab_size", "tokenizer_fingerprint", "fire_rule",
    "has_bos", "top_k",
)


@contextmanager
def writing_store(path: str | os.PathLike[str], attrs: Mapping[str, Any]) -> Iterator[LayeredStates]:
    """A store filled while its states are produced (capture hands each finished layer over; merges
    produce one layer at a time), so no process holds every layer's state: a subgroup per accumulator, its
    arrays appended to (`_Appender`). It is marked complete, with `attrs` (JSON-serialisable), and renamed
    into place only when the block ends without an error."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        yield LayeredStates(lambda name: _Appender(group.create_group(name)))
        contents = {name: sorted(key for key, _ in sub.arrays()) for name, sub in group.groups()}
        group.attrs.update(
            {**attrs, "contents": contents, "kind": STORE_KIND, "format_version": FORMAT_VERSION, "complete": True}
        )


def write_store(path: str | os.PathLike[str], attrs: Mapping[str, Any], states: Mapping[str, State]) -> None:
    """Write whole accumulator states atomically; `attrs` must be JSON-serialisable."""
    with writing_store(path, attrs) as out:
        for name, state in states.items():
            out.add_whole(name, state)


class StoreError(ValueError):
    """A store cannot be read as asked; the message names the store."""


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any failure to read `path` into a StoreError that names it (a torn chunk raises codec errors)."""
    if not path.exists():
        raise FileNotFoundError(f"accumulator store {path} does not exist")
    try:
        with warnings.catch_warnings():
            # Snakemake marks directory outputs with a .snakemake_timestamp file, which zarr lists as a stray member.
            warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp", category=UserWarning)
            yield
    except (FileNotFoundError, StoreError):
        raise
    except KeyError as error:
        raise StoreError(f"accumulator store {path} has no {error.args[0]!r}") from None
    except ValueError as error:
        raise StoreError(f"accumulator store {path} is unreadable: {error}") from None
    except Exception as error:  # zarr/codec errors on truncated or corrupted chunks
        raise StoreError(f"accumulator store {path} is corrupted: {type(error).__name__}: {error}") from None


class StoreReader:
    """One accumulator store, opened and checked once; states and array blocks are read on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Accept only a complete store of this format that holds every array it lists."""
        self.path = Path(path)
        with _reading(self.path):  # the ValueErrors below become StoreErrors naming the store
            self.group = zarr.open_group(self.path, mode="r")
            self.attrs = dict(self.group.attrs)
            if self.attrs.get("kind") != STORE_KIND or not self.attrs.get("complete"):
                raise ValueError("not a complete accumulator store")
            if self.attrs.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {self.attrs.get('format_version')} != {FORMAT_VERSION}")
            present = {name: {key for key, _ in sub.arrays()} for name, sub in self.group.groups()}
            for name in present:
                if name not in REGISTRY and name not in PAIRED:
                    raise ValueError(f"unknown accumulator '{name}'")
            contents = self.attrs.get("contents", {})
            lost = [f"{name}/{key}" for name, keys in contents.items() for key in keys if key not in present.get(name, ())]
            if lost:
                more = " and more" if len(lost) > 3 else ""
                raise ValueError(f"{', '.join(lost[:3])}{more} missing (written, since removed)")
            self.names = sorted(present)
        self._whole: dict[tuple[str, str], np.ndarray] = {}

    def require(self, names: Sequence[str], user: str) -> None:
        """Refuse, naming the store, if it lacks an accumulator that `user` needs."""
        missing = [name for name in names if name not in self.names]
        if missing:
            raise StoreError(f"accumulator store {self.path} has no {', '.join(missing)}, which {user} needs")

    def state(self, name: str) -> State:
        """Every array of accumulator `name`, in memory."""
        with _reading(self.path):
            return {key: np.asarray(array[...]) for key, array in sorted(self.group[name].arrays())}

    def array(self, name: str, key: str) -> zarr.Array:
        with _reading(self.path):
            return self.group[name][key]

    def block(self, name: str, key: str, rows: slice) -> np.ndarray:
        """Rows `rows` (along the first axis) of one array: only the chunks they lie in are read."""
        with _reading(self.path):
            return np.asarray(self.group[name][key][rows])

    def whole(self, name: str, key: str) -> np.ndarray:
        """One array, read once and kept: for arrays without a layer axis (settings, occurrences, n-gram
        denominators), small next to the tables and asked for once per layer."""
        if (name, key) not in self._whole:
            self._whole[(name, key)] = self.block(name, key, slice(None))
        return self._whole[(name, key)]

    def layer_state(self, name: str, slot: int) -> State:
        """Accumulator `name` for analysed-layer slot `slot` only (`neuron_census.capture.layer_states`)."""
        with _reading(self.path):
            return REGISTRY[name].read_layer(_StoredArrays(self, name), slot, int(self.attrs["layers"][slot]))


@dataclass
class _StoredArrays:
    """`accumulators.base.StateArrays` over one accumulator of a store: only what is asked for is read."""

    reader: StoreReader
    name: str

    def whole(self, key: str) -> np.ndarray:
        return self.reader.whole(self.name, key)

    def rows(self, key: str, rows: slice) -> np.ndarray:
        return self.reader.block(self.name, key, rows)

    def sorted_range(self, key: str, low: int, high: int) -> slice:
        """Binary search on the stored array, decoding each chunk it visits once (a chunk at a time)."""
        array = self.reader.array(self.name, key)
        size = array.chunks[0]

        @lru_cache(maxsize=1)
        def chunk(start: int) -> np.ndarray:
            return np.asarray(array[start : start + size])

        def read(index: int) -> int:
            return int(chunk(index - index % size)[index % size])

        return sorted_range_of(read, array.shape[0], low, high)


def read_store(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, State]]:
    """Read a store written by `write_store`; a missing, torn or foreign store raises ValueError naming it."""
    reader = StoreReader(path)
    return reader.attrs, {name: reader.state(name) for name in reader.names}


def merged_attrs(readers: Sequence[StoreReader]) -> dict[str, Any]:
    """Attributes of the merge of `readers`' stores, after checking they can be merged (attributes only)."""
    if not readers:
        raise ValueError("no accumulator stores to merge")
    first = readers[0]
    for other in readers[1:]:
        for key in MERGE_KEYS:
            if other.attrs.get(key) != first.attrs.get(key):
                raise ValueError(
                    f"cannot merge {other.path} with {first.path}: '{key}' differs "
                    f"({other.attrs.get(key)!r} vs {first.attrs.get(key)!r})"
                )
        if other.names != first.names:
            raise ValueError(f"cannot merge {other.path} with {first.path}: accumulators {other.names} vs {first.names}")
    versions: dict[str, Any] = {}
    for reader in readers:
        for dataset, version in reader.attrs.get("text_versions", {}).items():
            if versions.setdefault(dataset, version) != version:
                raise ValueError(
                    f"cannot merge {reader.path}: its shard of dataset '{dataset}' was read from another version of "
                    "the dataset's text than the other shards (the text changed between them); remake its token shards"
                )
    merged = {key: first.attrs[key] for key in (*MERGE_KEYS, "activation") if key in first.attrs}
    merged["text_versions"] = versions
    merged["datasets"] = sorted({d for reader in readers for d in reader.attrs["datasets"]})
    merged["sources"] = sorted({s for reader in readers for s in reader.attrs["sources"]})
    if len(merged["sources"]) != sum(len(reader.attrs["sources"]) for reader in readers):
        paths = ", ".join(str(reader.path) for reader in readers)
        raise ValueError(f"stores to merge overlap: a shard would be counted twice ({paths})")
    return merged


def fold(name: str, states: Iterator[State]) -> State:
    """Merge states of accumulator `name` read one at a time, folding each into the merge so far: memory holds
    two states, whatever the number of stores (a merge tree would re-merge less but hold log2(stores))."""
    merge = REGISTRY[name].merge
    return reduce(lambda state, other: merge([state, other]), states)


def merged_layer_state(readers: Sequence[StoreReader], name: str, slot: int) -> State:
    """Accumulator `name` of analysed-layer slot `slot`, merged over the stores: two states of one layer in memory."""
    return fold(name, (reader.layer_state(name, slot) for reader in readers))


MERGE_BLOCK_BYTES = 1 << 26  # summed arrays are merged this many bytes (of one store's array) at a time


def merge_store_files(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    block_bytes: int = MERGE_BLOCK_BYTES,
    write_behind: bool = True,
) -> None:
    """Merge stores into a new store, with memory bounded by neither the number of stores nor the layers.

    Accumulators whose merge is a sum (firing, position and token counts: the largest arrays, e.g.
    layers x 2048 positions x neurons) are summed a block of rows at a time, read from every store
    and written out before the next block. Top-k, moments and the bounded sparse tables are merged one
    layer at a time, folded in one store at a time, and appended to the output by a writer thread while
    the next layer is read and merged (unless not `write_behind`; OPT-66b's full token tables are 77 GB a
    store over all layers, 1.2 GB for one); the occurrence counts, which have no layer axis, are folded
    whole. The result equals `fold` of the stores' whole states.
    """
    readers = [StoreReader(path) for path in paths]
    summed = [name for name in readers[0].names if REGISTRY[name].sums]
    folded = [name for name in readers[0].names if name not in summed]
    with writing_store(output, merged_attrs(readers)) as out:
        # a writer thread appends each merged layer while the next is read and merged (two layers held)
        with written_behind(out, write_behind) as sink:
            for name in summed:
                for key, _ in sorted(readers[0].group[name].arrays()):
                    _sum_blockwise(readers, name, key, cast(_Appender, out.target(name)).group, block_bytes)
            for name in folded:
                if REGISTRY[name].layered:
                    for slot in range(len(readers[0].attrs["layers"])):
                        sink.add_layers(slot, {name: merged_layer_state(readers, name, slot)})
                else:
                    sink.add_whole(name, fold(name, (reader.state(name) for reader in readers)))


def _sum_blockwise(readers: Sequence[StoreReader], name: str, key: str, out: zarr.Group, block_bytes: int) -> None:
    """Write `out[key]` = the sum over stores of `name/key`, in blocks of whole chunk rows along the first axis."""
    first = readers[0].array(name, key)
    for reader in readers[1:]:
        other = reader.array(name, key)
        if other.shape != first.shape:
            raise ValueError(f"cannot merge {reader.path}: {name}/{key} has shape {other.shape}, not {first.shape}")
    if first.ndim == 0 or first.shape[0] == 0:
        total = np.sum([reader.block(name, key, slice(None)) for reader in readers], axis=0)
        out.create_array(key, data=total, compressors=STORE_COMPRESSORS)
        return
    row_bytes = max(1, first.nbytes // first.shape[0])
    step = first.chunks[0] * max(1, block_bytes // (row_bytes * first.chunks[0]))
    target = out.create_array(key, shape=first.shape, dtype=first.dtype, chunks=first.chunks, compressors=STORE_COMPRESSORS)
    for start in range(0, first.shape[0], step):
        rows = slice(start, min(start + step, first.shape[0]))
        target[rows] = reduce(operator.add, (reader.block(name, key, rows) for reader in readers))


APPEND_CHUNK = 1 << 20  # elements per chunk of the 1-D arrays written a layer at a time
APPEND_CHUNK_BYTES = 1 << 24  # at most this many bytes per chunk of a layer of a larger array


class _Appender:
    """One accumulator's arrays in a store, written a layer at a time (`layer_states.PartsTarget`): created
    empty on first sight, then appended to; arrays without a layer axis written once."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.arrays: dict[str, zarr.Array | None] = {}

    def add(self, parts: Parts) -> None:
        for key, (data, axis) in parts.items():
            data = np.ascontiguousarray(data)
            if key not in self.arrays:
                if axis is None:
                    self.group.create_array(key, data=data, compressors=STORE_COMPRESSORS)
                    self.arrays[key] = None
                    continue
                empty = data.shape[:axis] + (0,) + data.shape[axis + 1 :]
                chunks = _append_chunks(data.shape, axis, data.dtype.itemsize)
                self.arrays[key] = self.group.create_array(
                    key, shape=empty, dtype=data.dtype, chunks=chunks, compressors=STORE_COMPRESSORS
                )
            array = self.arrays[key]
            if array is not None and data.shape[axis]:
                array.append(data, axis=axis)


def _append_chunks(shape: tuple[int, ...], axis: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of `APPEND_CHUNK` entries for 1-D arrays; else one layer along `axis`, the next axis cut so a
    chunk stays within `APPEND_CHUNK_BYTES` (OPT-66b's per-position counts: 604 MB a layer, 16 MB a chunk:
    chunks of one append are compressed in parallel, and a reader of a few positions reads a few chunks)."""
    if len(shape) == 1:
        return (APPEND_CHUNK,)
    chunks = [max(1, n) for n in shape]
    chunks[axis] = 1
    other = 1 if axis == 0 else 0  # the first axis other than the layer axis
    rest = itemsize * int(np.prod([chunks[i] for i in range(len(shape)) if i != other]))
    chunks[other] = max(1, min(chunks[other], APPEND_CHUNK_BYTES // rest))
    return tuple(chunks)
