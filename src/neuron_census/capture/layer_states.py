"""One analysed layer of a stored accumulator state, read without reading the other layers.

The statistics of a neuron only need its own layer's counts, so the stats job can hold one layer at a
time: for OPT-66b the per-position firing counts alone are 39 GB for all 64 layers and 0.6 GB for one.
Each accumulator's arrays are of one of three kinds, and `layer_state` reads each kind its own way:

- layered: the first axis is the analysed-layer slot (firing counts, position counts, moments, top-k);
- shared: not per layer (token occurrences, n-gram occurrences, counted tokens per position, settings);
- keyed: sorted sparse tables whose keys start with the slot (token x neuron and n-gram x neuron counts):
  the slot's entries are one contiguous range, found by binary search on the stored keys.

The result is the state a capture of that one layer would have written (keys renumbered to slot 0), so
every accumulator's `merge` and every statistic applies to it unchanged. `layer_parts` is the way back:
a layer's arrays renumbered to its slot, appended to a store (or joined in memory) layer after layer by
`LayeredStates`, as capture hands each finished layer over and as merges produce them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from neuron_census.accumulators import State


class StateArrays(Protocol):
    """Read access to one accumulator's stored arrays (a zarr group or a state in memory)."""

    def whole(self, key: str) -> np.ndarray: ...

    def rows(self, key: str, rows: slice) -> np.ndarray: ...

    def sorted_range(self, key: str, low: int, high: int) -> slice:
        """The index range of values in [low, high) of the sorted 1-D array `key`."""
        ...


class StateInMemory:
    """`StateArrays` over a state already in memory."""

    def __init__(self, state: State) -> None:
        self.state = state

    def whole(self, key: str) -> np.ndarray:
        return self.state[key]

    def rows(self, key: str, rows: slice) -> np.ndarray:
        return self.state[key][rows]

    def sorted_range(self, key: str, low: int, high: int) -> slice:
        keys = self.state[key]
        return slice(int(np.searchsorted(keys, low)), int(np.searchsorted(keys, high)))


class SortedLookup:
    """A sorted 1-D array read one element at a time, for `bisect` on arrays too large to read whole."""

    def __init__(self, read: Callable[[int], int], length: int) -> None:
        self.read, self.length = read, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return self.read(index)


def sorted_range_of(lookup: SortedLookup, low: int, high: int) -> slice:
    start = bisect.bisect_left(lookup, low)
    return slice(start, bisect.bisect_left(lookup, high, lo=start))


def _layered(arrays: StateArrays, keys: tuple[str, ...], slot: int) -> State:
    return {key: arrays.rows(key, slice(slot, slot + 1)) for key in keys}


def _shared(arrays: StateArrays, keys: tuple[str, ...]) -> State:
    return {key: arrays.whole(key) for key in keys}


def _keyed(arrays: StateArrays, key: str, values: tuple[str, ...], low: int, high: int) -> State:
    """Entries with `key` in [low, high), renumbered from `low`, with their `values` alongside."""
    span = arrays.sorted_range(key, low, high)
    return {key: arrays.rows(key, span) - low} | {value: arrays.rows(value, span) for value in values}


def _token_fire_layer(arrays: StateArrays, slot: int, layer: int) -> State:
    header = _shared(arrays, ("vocab_size", "n_neurons", "capacity"))
    cells = int(header["vocab_size"][0]) * int(header["n_neurons"][0])  # keys: (slot * vocab + token) * neurons + neuron
    return header | _keyed(arrays, "keys", ("counts",), slot * cells, (slot + 1) * cells)


def _ngram_fire_layer(arrays: StateArrays, slot: int, layer: int) -> State:
    """N-grams are counted in a subset of the layers (`layers`); groups are index in it * neurons + neuron."""
    state = _shared(arrays, ("orders", "capacity", "layers", "fires"))
    counted = state["layers"].tolist()
    n_neurons = state["fires"].shape[2]
    if layer in counted:
        index = counted.index(layer)
        low, high = index * n_neurons, (index + 1) * n_neurons
        fires = state["fires"][:, index : index + 1]
    else:  # an empty range: the layer's n-grams were not counted
        low = high = 0
        fires = state["fires"][:, :0]
    state |= {"layers": np.asarray([layer] if layer in counted else [], dtype=np.int64), "fires": fires}
    for order in state["orders"].tolist():
        names = (f"order{order}_gram", f"order{order}_count")
        state |= _keyed(arrays, f"order{order}_group", names, low, high)
    return state


def _ngram_occurrences(arrays: StateArrays) -> State:
    state = _shared(arrays, ("orders", "capacity", "total"))
    for order in state["orders"].tolist():
        state |= _shared(arrays, (f"order{order}_gram", f"order{order}_count"))
    return state


LayerReader = Callable[[StateArrays, int, int], State]

LAYER_READERS: dict[str, LayerReader] = {
    "fire_count": lambda arrays, slot, layer: _layered(arrays, ("counts", "tokens"), slot),
    "position_fire_count": lambda arrays, slot, layer: _layered(arrays, ("counts",), slot) | _shared(arrays, ("tokens",)),
    "token_count": lambda arrays, slot, layer: _shared(arrays, ("counts",)),
    "token_fire_count": _token_fire_layer,
    "top_k": lambda arrays, slot, layer: _layered(arrays, ("values", "seq", "pos"), slot),
    "moments": lambda arrays, slot, layer: _layered(arrays, ("sum", "sum_sq", "min", "max"), slot),
    "ngram_fire_count": _ngram_fire_layer,
    "ngram_count": lambda arrays, slot, layer: _ngram_occurrences(arrays),
}


def layer_state(name: str, arrays: StateArrays, slot: int, layer: int) -> State:
    """Accumulator `name`'s state restricted to analysed-layer slot `slot` (model layer `layer`)."""
    return LAYER_READERS[name](arrays, slot, layer)


# ------------------------------------------------------------------------------------------ the way back

Parts = dict[str, tuple[np.ndarray, int | None]]  # key -> (array, axis it is appended along; None: write once)


def _appended(state: State, keys: tuple[str, ...], axis: int = 0) -> Parts:
    return {key: (state[key], axis) for key in keys}


def _once(state: State, keys: tuple[str, ...]) -> Parts:
    return {key: (state[key], None) for key in keys}


def _token_fire_parts(state: State, slot: int, counted_before: int) -> Parts:
    cells = int(state["vocab_size"][0]) * int(state["n_neurons"][0])
    return _once(state, ("vocab_size", "n_neurons", "capacity")) | {
        "keys": (state["keys"] + slot * cells, 0),
        "counts": (state["counts"], 0),
    }


def _ngram_fire_parts(state: State, slot: int, counted_before: int) -> Parts:
    """`counted_before`: layers with n-gram counts already appended, the index of this one if it has them."""
    n_neurons = state["fires"].shape[2]
    parts = _once(state, ("orders", "capacity")) | {"layers": (state["layers"], 0), "fires": (state["fires"], 1)}
    for order in state["orders"].tolist():
        group = f"order{order}_group"
        parts |= {group: (state[group] + counted_before * n_neurons, 0)}
        parts |= _appended(state, (f"order{order}_gram", f"order{order}_count"))
    return parts


LayerParts = Callable[[State, int, int], Parts]

# accumulators with a layer axis: written a layer at a time by capture, and merged a layer at a time
# (except those merged by a sum, which merges sum block by block)
LAYER_PARTS: dict[str, LayerParts] = {
    "fire_count": lambda state, slot, counted_before: _appended(state, ("counts", "tokens")),
    "position_fire_count": lambda state, slot, counted_before: _appended(state, ("counts",)) | _once(state, ("tokens",)),
    "token_fire_count": _token_fire_parts,
    "top_k": lambda state, slot, counted_before: _appended(state, ("values", "seq", "pos")),
    "moments": lambda state, slot, counted_before: _appended(state, ("sum", "sum_sq", "min", "max")),
    "ngram_fire_count": _ngram_fire_parts,
}


def layer_parts(name: str, state: State, slot: int, counted_before: int = 0) -> Parts:
    """One layer's merged state of accumulator `name`, renumbered to slot `slot`, as arrays to append."""
    return LAYER_PARTS[name](state, slot, counted_before)


class PartsTarget(Protocol):
    """Where one accumulator's arrays go: appended to along their axis, or written once (axis None)."""

    def add(self, parts: Parts) -> None: ...


class JoinedParts:
    """A `PartsTarget` in memory: the pieces of each array, joined into a state when asked."""

    def __init__(self) -> None:
        self.pieces: dict[str, tuple[list[np.ndarray], int | None]] = {}

    def add(self, parts: Parts) -> None:
        for key, (data, axis) in parts.items():
            if key not in self.pieces:
                self.pieces[key] = ([], axis)
            if axis is not None or not self.pieces[key][0]:
                self.pieces[key][0].append(data)

    def state(self) -> State:
        """The joined arrays; the pieces are dropped as they are joined, so memory holds one array twice."""
        state: State = {}
        for key in list(self.pieces):
            pieces, axis = self.pieces.pop(key)
            state[key] = pieces[0] if axis is None else np.concatenate(pieces, axis=axis)
        return state


class LayeredStates:
    """Accumulator states handed over one layer at a time, in slot order (or whole, for those without a
    layer axis), each accumulator's arrays going to a target of its own: a store's group when capture
    writes, `JoinedParts` for a state in memory."""

    def __init__(self, target_for: Callable[[str], PartsTarget]) -> None:
        self.target_for = target_for
        self.targets: dict[str, PartsTarget] = {}
        self.next_slot: dict[str, int] = {}
        self.counted_before: dict[str, int] = {}  # n-gram counts: layers with counts added so far

    def _target(self, name: str) -> PartsTarget:
        if name not in self.targets:
            self.targets[name] = self.target_for(name)
        return self.targets[name]

    def add_layer(self, name: str, slot: int, state: State) -> None:
        """Slot `slot`'s state of accumulator `name`, keys of slot 0, as `layer_state` reads it back."""
        expected = self.next_slot.get(name, 0)
        if slot != expected:
            raise ValueError(f"{name}: layer slot {slot} handed over before slot {expected}")
        counted = self.counted_before.get(name, 0)
        self._target(name).add(layer_parts(name, state, slot, counted))
        self.next_slot[name] = slot + 1
        self.counted_before[name] = counted + len(state.get("layers", ()))

    def add_layers(self, slot: int, states: Mapping[str, State]) -> None:
        """Slot `slot`'s states of several accumulators (as `add_layer` each)."""
        for name, state in states.items():
            self.add_layer(name, slot, state)

    def add_whole(self, name: str, state: State) -> None:
        self._target(name).add({key: (array, None) for key, array in state.items()})


class LayerSink(Protocol):
    """What capture hands its states to: each finished layer of the accumulators with a layer axis, then
    the others whole (`LayeredStates`, or `WriteBehind` in front of one)."""

    def add_layers(self, slot: int, states: Mapping[str, State]) -> None: ...

    def add_whole(self, name: str, state: State) -> None: ...


class WriteBehind:
    """A `LayerSink` that hands each layer to `states` on a writer thread of its own, so that writing layer
    L to the store overlaps computing layer L+1 (layerwise capture) or taking it off the device (the end of
    a resident one). One handover is written at a time: the next waits for it, so host memory holds at
    most two layers' states, the one being written and the one waiting. Use it through `written_behind`,
    which waits for the last write and re-raises its error."""

    def __init__(self, states: LayeredStates) -> None:
        self.states = states
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._writing: Future[Any] | None = None

    def add_layers(self, slot: int, states: Mapping[str, State]) -> None:
        self._hand(self.states.add_layers, slot, dict(states))

    def add_whole(self, name: str, state: State) -> None:
        self._hand(self.states.add_whole, name, state)

    def _hand(self, write: Callable[..., None], *args: Any) -> None:
        self.wait()
        self._writing = self._writer.submit(write, *args)

    def wait(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def close(self, *, failed: bool) -> None:
        """Stop the writer thread once its write is done; after a failure elsewhere its outcome is dropped
        (the store is thrown away, and the first error is the one to report)."""
        try:
            if failed:
                if self._writing is not None:
                    self._writing.exception()  # waits, and does not raise
                    self._writing = None
            else:
                self.wait()
        finally:
            self._writer.shutdown(wait=True)


@contextmanager
def written_behind(states: LayeredStates, enabled: bool = True) -> Iterator[LayerSink]:
    """`states` behind a `WriteBehind` (or as it is, if not `enabled`); every write has ended when the
    block does, so a store is never renamed into place, or removed, while a layer is still being written."""
    if not enabled:
        yield states
        return
    behind = WriteBehind(states)
    try:
        yield behind
    except BaseException:
        behind.close(failed=True)
        raise
    behind.close(failed=False)


def joined_states() -> tuple[LayeredStates, dict[str, JoinedParts]]:
    """`LayeredStates` kept in memory, and its targets by accumulator (`.state()` of each is the state)."""
    targets: dict[str, JoinedParts] = {}

    def target_for(name: str) -> JoinedParts:
        targets[name] = JoinedParts()
        return targets[name]

    return LayeredStates(target_for), targets
