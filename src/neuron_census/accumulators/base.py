"""What every accumulator shares: the batch it sees, its sizes, exact counts, and the way its state is split
by layer for a store and read back one layer at a time.

An accumulator sees the activations of one layer on one batch at a time (`LayerBatch`) and keeps state whose
size does not depend on the number of tokens. States are dictionaries of numpy arrays that merge
associatively, so the statistics of a collection are the merge of those of its shards. Per (layer, batch),
updates issue a few device ops and never wait for the device; work whose output size depends on the data
(sparse tables) waits in bounded device buffers and runs in `flush`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from neuron_census.capture.host_copies import host_arrays, host_tensors
from neuron_census.config import schema_defaults

if TYPE_CHECKING:
    from neuron_census.capture.settings import CaptureSettings

State = dict[str, np.ndarray]
Parts = dict[str, tuple[np.ndarray, int | None]]  # key -> (array, axis it is appended along; None: write once)

CAPTURE_DEFAULTS = schema_defaults("capture")  # what an accumulator built without settings takes

HOST_PATHS = True  # False: a CPU takes the code paths of a GPU (the dispatch-count benchmark measures those)


def host_paths(device: torch.device) -> bool:
    """Whether an accumulator takes its CPU code paths, where a data-dependent shape costs no host wait and
    a full pass over the batch costs more than a sort of the few values that matter."""
    return HOST_PATHS and device.type == "cpu"


@dataclass(frozen=True)
class Geometry:
    """Sizes every accumulator is allocated from."""

    layers: tuple[int, ...]  # model layer numbers that are analysed, ascending
    n_neurons: int
    seq_len: int
    vocab_size: int
    n_layers_total: int = 0  # layers of the model (0: unknown), for settings relative to depth

    def slot(self, layer: int) -> int:
        return self.layers.index(layer)


@dataclass(frozen=True)
class LayerBatch:
    """Activations of one layer on one batch, with what the accumulators need to index them."""

    layer: int  # model layer number
    acts: torch.Tensor  # [B, T, N] neuron activations
    fires: torch.Tensor  # [B, T, N] bool: the neuron fires at this token (already masked)
    mask: torch.Tensor  # [B, T] bool: token is counted (False at BOS)
    tokens: torch.Tensor  # [B, T] int64 token ids
    seq_ids: torch.Tensor  # [B] int64 global sequence ids (shard * sequences_per_shard + row)
    first_seq: int  # seq_ids[0], on the host (the batch's sequences are consecutive)
    counted_from: int | None = None  # when known on the host: `mask` is exactly "position >= counted_from"
    acts_flat: torch.Tensor | None = None  # [B*T, N] float32 activations when the hook gave them so (OPT)
    fires_from_acts: bool = False  # `fires` is exactly "activation > 0" at counted positions
    # derived from the tokens alone, so shared by every layer of the batch (capture passes one dict per batch)
    per_batch: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def fires_2d(self) -> torch.Tensor:
        """[B*T, N] int32 firings: what tables add rows of (`index_add_` takes no booleans)."""
        return self._cached("fires_2d", lambda: self.fires.reshape(-1, self.fires.shape[-1]).to(torch.int32))

    def position_fires(self) -> torch.Tensor:
        """[T, N] float32: firings at each position summed over the batch (exact integers). On a CPU the
        booleans are summed as bytes, up to 255 sequences at a time: a typed sum converts the whole boolean
        batch first, and took 20x longer."""
        def make() -> torch.Tensor:
            if not host_paths(self.fires.device):
                return self.fires.sum(dim=0, dtype=torch.float32)
            total = torch.zeros(self.fires.shape[1:], dtype=torch.float32)
            for fires in self.fires.view(torch.uint8).split(255):
                total += fires.sum(dim=0, dtype=torch.uint8)
            return total

        return self._cached("position_fires", make)

    def firing_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in [B*T], neuron) of every firing, by row then neuron: what CPU paths read instead of a pass
        over every activation (a few percent of them fire)."""
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            pairs = self.fires.reshape(-1, self.fires.shape[-1]).nonzero()
            return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()

        return self._cached("firing_pairs", make)

    def firing_values(self) -> torch.Tensor:
        """float32 activations at `firing_pairs`, in their order."""
        return self._cached("firing_values", lambda: self.acts_2d()[self.firing_pairs()])

    def acts_2d(self) -> torch.Tensor:
        """[B*T, N] float32 activations, every position (masked ones included)."""
        def make() -> torch.Tensor:
            if self.acts_flat is not None:
                return self.acts_flat
            flat = self.acts.reshape(-1, self.acts.shape[-1])
            return flat if flat.dtype == torch.float32 else flat.float()

        return self._cached("acts_2d", make)

    def tokens_flat(self) -> torch.Tensor:
        """[B*T] token ids, shared by every layer of the batch."""
        return self.shared("tokens_flat", lambda: self.tokens.reshape(-1))

    def counted_tokens(self) -> int | torch.Tensor:
        """Counted positions of the batch: a host int when `counted_from` says them (no device op)."""
        if self.counted_from is not None:
            return self.mask.shape[0] * max(0, self.mask.shape[1] - self.counted_from)
        return self.mask.sum()

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """A value derived from the batch's tokens alone, computed once for all its layers."""
        if key not in self.per_batch:
            self.per_batch[key] = make()
        return self.per_batch[key]


class ExactFloatCounts:
    """Integer counts added as float32 and moved to int64 before float32 could lose a unit.

    float32 holds every integer up to 2**24 exactly; `add` moves a row into the int64 total (on the host)
    whenever its float part could pass that, judged from bounds the caller knows on the host, so no add
    waits for the device. Each row (a layer slot) is allocated at its first `add`, and `take` hands it over
    and frees it: layerwise capture holds one layer's counts on the device.
    """

    LIMIT = float(1 << 24)

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.shape, self.device = shape, device
        self.partial: dict[int, torch.Tensor] = {}  # leading index -> float32 counts not yet in `total`
        self._bound: dict[int, float] = {}  # the most any cell of that row's float part can hold
        self.total: dict[int, torch.Tensor] = {}  # leading index -> int64 host counts, from its first release

    def add(self, row: int, values: torch.Tensor, max_value: float) -> None:
        """Add non-negative integer-valued `values` (each at most `max_value`) at leading index `row`."""
        if self._bound.get(row, 0.0) + max_value >= self.LIMIT:
            self.release(row)
        if row in self.partial:
            self.partial[row] += values
        else:
            self.partial[row] = values.to(torch.float32, copy=True)
        self._bound[row] = self._bound.get(row, 0.0) + max_value

    def release(self, row: int) -> None:
        """Add `row`'s float part to the host total and free it on the device."""
        if row in self.partial:
            released = host_tensors(self.partial.pop(row).to(torch.int64))[0]
            self.total[row] = self.total[row] + released if row in self.total else released
            del self._bound[row]

    def take(self, row: int) -> torch.Tensor:
        """Row `row`'s int64 counts on the host, handed over: nothing of the row is kept."""
        self.release(row)
        taken = self.total.pop(row, None)
        return taken if taken is not None else torch.zeros(self.shape[1:], dtype=torch.int64)

    def result(self) -> torch.Tensor:
        """The int64 counts of every row, on the host."""
        for row in list(self.partial):
            self.release(row)
        empty = torch.zeros(self.shape[1:], dtype=torch.int64)
        return torch.stack([self.total.get(row, empty) for row in range(self.shape[0])])


# ------------------------------------------------------------------------------ reading one stored layer


class StateArrays(Protocol):
    """Read access to one accumulator's stored arrays (a zarr group or a state in memory)."""

    def whole(self, key: str) -> np.ndarray: ...

    def rows(self, key: str, rows: slice) -> np.ndarray: ...

    def sorted_range(self, key: str, low: int, high: int) -> slice:
        """The index range of values in [low, high) of the sorted 1-D array `key`."""
        ...


def sorted_range_of(read: Callable[[int], int], length: int, low: int, high: int) -> slice:
    """The index range of values in [low, high) of a sorted 1-D array of `length` values read one at a time
    (`read(index)`), by bisection: for arrays too large to read whole."""
    start = bisect.bisect_left(range(length), low, key=read)
    return slice(start, bisect.bisect_left(range(length), high, lo=start, key=read))


def shared(arrays: StateArrays, keys: tuple[str, ...]) -> State:
    """Arrays without a layer axis, whole."""
    return {key: arrays.whole(key) for key in keys}


def keyed(arrays: StateArrays, key: str, values: tuple[str, ...], low: int, high: int) -> State:
    """Entries of a sorted key array with keys in [low, high), renumbered from `low`, and their `values`."""
    span = arrays.sorted_range(key, low, high)
    return {key: arrays.rows(key, span) - low} | {value: arrays.rows(value, span) for value in values}


def appended(state: State, keys: tuple[str, ...], axis: int = 0) -> Parts:
    return {key: (state[key], axis) for key in keys}


def once(state: State, keys: tuple[str, ...]) -> Parts:
    return {key: (state[key], None) for key in keys}


# ------------------------------------------------------------------------------------ the accumulator


@dataclass(frozen=True)
class Memory:
    """Upper bounds of what an accumulator holds during a capture, in bytes."""

    device: int
    host: int


REGISTRY: dict[str, type[Accumulator]] = {}
PAIRED: dict[str, type] = {}  # accumulators of several models at once (`capture_paired`), by name: `paired`


def paired(cls: type) -> type:
    """Register a paired accumulator (a class with a `name`), so stores of its state read back."""
    PAIRED[cls.name] = cls
    return cls


def kept_rows(tokens: torch.Tensor, mask: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Indices into a batch's flattened positions that paired statistics count: counted by `mask` (not
    BOS) and not a `dropped` token id (pad, newline). One wait for the device, once per batch."""
    keep = mask.reshape(-1) & ~torch.isin(tokens.reshape(-1), dropped)
    return keep.nonzero()[:, 0]


class Accumulator:
    """One statistic: its update, state, merge, layer split and memory bound, in one class.

    A subclass with a `name` registers itself. Accumulators with a layer axis (`layered`) hand each
    layer's state over once its last batch is counted (`take_layer`), as a capture of that layer alone would
    give it; `read_layer` reads one layer back from a store and `layer_parts` renumbers a layer's state
    to its slot for appending. `sums` says the merge adds arrays element by element (shard merges then sum
    any block of rows alone).
    """

    name: ClassVar[str]
    layered: ClassVar[bool] = True
    sums: ClassVar[bool] = False
    default: ClassVar[bool] = True  # runs unless the capture lists its accumulators
    # its own settings and their defaults, set in a config as `capture.accumulator_options.<name>.<key>`
    options: ClassVar[dict[str, Any]] = {}
    # state arrays with the layer slot first, and arrays without one: what the default `read_layer` and
    # `layer_parts` read and split (accumulators with keyed arrays define their own)
    layer_keys: ClassVar[tuple[str, ...]] = ()
    shared_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    @classmethod
    def from_settings(cls, settings: CaptureSettings, geometry: Geometry, device: torch.device) -> Accumulator:
        """An accumulator with `options` takes them (defaults, then what the settings give) as keywords."""
        options = {**cls.options, **settings.accumulator_options.get(cls.name, {})}
        return cls(geometry, device, **options)  # type: ignore[call-arg]

    def update(self, batch: LayerBatch) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Run the data-dependent work waiting in device buffers (called between batches, never inside one)."""

    def take_layer(self, layer: int) -> State:
        raise NotImplementedError

    def state(self) -> State:
        raise NotImplementedError

    @staticmethod
    def merge(states: list[State]) -> State:
        raise NotImplementedError

    @classmethod
    def read_layer(cls, arrays: StateArrays, slot: int, layer: int) -> State:
        return {key: arrays.rows(key, slice(slot, slot + 1)) for key in cls.layer_keys} | shared(arrays, cls.shared_keys)

    @classmethod
    def layer_parts(cls, state: State, slot: int, counted_before: int) -> Parts:
        return appended(state, cls.layer_keys) | once(state, cls.shared_keys)

    @classmethod
    def memory(cls, settings: CaptureSettings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> Memory:
        raise NotImplementedError


def check_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Every accumulator named exists and declares every key given for it (`Accumulator.options`)."""
    for name, given in options.items():
        if name not in REGISTRY:
            raise ValueError(f"unknown accumulator '{name}'; known: {sorted(REGISTRY)}")
        unknown = sorted(set(given) - set(REGISTRY[name].options))
        if unknown:
            raise ValueError(f"{name}: unknown options {unknown}; known: {sorted(REGISTRY[name].options)}")


def settings_of(states: list[State], keys: tuple[str, ...], what: str) -> State:
    """The arrays under `keys`, which every state must share to be merged (the first state's)."""
    first = states[0]
    for other in states[1:]:
        for key in keys:
            if not np.array_equal(other[key], first[key]):
                raise ValueError(f"cannot merge {what} with different {key}: {other[key]} vs {first[key]}")
    return {key: first[key] for key in keys}


def sum_states(states: list[State]) -> State:
    return {key: np.sum([s[key] for s in states], axis=0) for key in states[0]}


class JoinedColumns:
    """int64 host arrays of a known total length, filled one table's columns at a time."""

    def __init__(self, n_columns: int, size: int) -> None:
        self.arrays = [np.empty(size, dtype=np.int64) for _ in range(n_columns)]
        self.filled = 0

    def append(self, *columns: torch.Tensor) -> None:
        end = self.filled + len(columns[0])
        for array, column in zip(self.arrays, host_arrays(*columns)):
            array[self.filled : end] = column
        self.filled = end
