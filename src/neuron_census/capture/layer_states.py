"""Accumulator states handed over, and read back, one analysed layer at a time.

The statistics of a neuron only need its own layer's counts, so the stats job can hold one layer at a
time: for OPT-66b the per-position firing counts alone are 39 GB for all 64 layers and 0.6 GB for one.
Each accumulator's arrays are of one of three kinds, and its `read_layer` reads each kind its own way:

- layered: the first axis is the analysed-layer slot (firing counts, position counts, moments, top-k);
- shared: not per layer (token occurrences, n-gram occurrences, counted tokens per position, settings);
- keyed: sorted sparse tables whose keys start with the slot (token x neuron and n-gram x neuron counts):
  the slot's entries are one contiguous range, found by binary search on the stored keys.

The result is the state a capture of that one layer would have written (keys renumbered to slot 0), so
every accumulator's `merge` and every statistic applies to it unchanged. The accumulator's `layer_parts`
is the way back: a layer's arrays renumbered to its slot, appended to a store (or joined in memory) layer
after layer by `LayeredStates`, as capture hands each finished layer over and as merges produce them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from neuron_census.accumulators import REGISTRY, State
from neuron_census.accumulators.base import Parts


class PartsTarget(Protocol):
    """Where one accumulator's arrays go: appended to along their axis, or written once (axis None)."""

    def add(self, parts: Parts) -> None: ...


class JoinedParts:
    """A `PartsTarget` in memory: the pieces of each array, joined into a state when asked."""

    def __init__(self) -> None:
        self.pieces: dict[str, tuple[list[np.ndarray], int | None]] = {}

    def add(self, parts: Parts) -> None:
        for key, (data, axis) in parts.items():
            pieces, _ = self.pieces.setdefault(key, ([], axis))
            if axis is not None or not pieces:
                pieces.append(data)

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
    writes, `JoinedParts` (the default) for a state in memory."""

    def __init__(self, target_for: Callable[[str], PartsTarget] = lambda _name: JoinedParts()) -> None:
        self.target_for = target_for
        self.targets: dict[str, PartsTarget] = {}
        self.next_slot: dict[str, int] = {}
        self.counted_before: dict[str, int] = {}  # n-gram counts: layers with counts added so far

    def target(self, name: str) -> PartsTarget:
        if name not in self.targets:
            self.targets[name] = self.target_for(name)
        return self.targets[name]

    def add_layers(self, slot: int, states: Mapping[str, State]) -> None:
        """Slot `slot`'s states by accumulator, keys of slot 0, as `read_layer` reads them back."""
        for name, state in states.items():
            expected = self.next_slot.get(name, 0)
            if slot != expected:
                raise ValueError(f"{name}: layer slot {slot} handed over before slot {expected}")
            counted = self.counted_before.get(name, 0)
            self.target(name).add(REGISTRY[name].layer_parts(state, slot, counted))
            self.next_slot[name] = slot + 1
            self.counted_before[name] = counted + len(state.get("layers", ()))

    def add_whole(self, name: str, state: State) -> None:
        self.target(name).add({key: (array, None) for key, array in state.items()})


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

    def close(self) -> None:
        """Stop the writer thread once its write is done."""
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
    finally:
        behind.close()
    behind.wait()  # after a failure elsewhere the write's outcome is dropped: the first error is the one to report

