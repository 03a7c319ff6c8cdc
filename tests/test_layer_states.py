"""One layer of a store read alone: equal to a capture of that layer, and the statistics equal to all layers at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from neuron_census.accumulators import REGISTRY, default_accumulators, merge_states
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.accumulators.base import State, sorted_range_of
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import designed_tokens, get_recipe, planted_words
from conftest import merge_stores
from neuron_census.analyses.tables import AnalysisSettings, stats_tables, stats_tables_by_layer
from neuron_census.capture.store import (
    StoreReader,
    merge_store_files,
    merged_attrs,
    merged_layer_state,
    read_store,
    write_store,
)


class StateInMemory:
    """`StateArrays` over a state already in memory: what a store's layer reads are checked against."""

    def __init__(self, state: State) -> None:
        self.state = state

    def whole(self, key: str) -> np.ndarray:
        return self.state[key]

    def rows(self, key: str, rows: slice) -> np.ndarray:
        return self.state[key][rows]

    def sorted_range(self, key: str, low: int, high: int) -> slice:
        keys = self.state[key]
        return slice(int(np.searchsorted(keys, low)), int(np.searchsorted(keys, high)))


RECIPE = get_recipe("census")
TOKEN_STRINGS = ["<bos>", "<unk>", *planted_words(RECIPE)]
NGRAM_LAYERS = (0, 2)  # not contiguous, and not every layer: layer 1 has no n-gram counts
EXACT = {"ngram_layers": NGRAM_LAYERS, "ngram_capacity": 1 << 16}
TABLES = {
    "dense": EXACT,
    "sparse": EXACT | {"token_fire_dense_limit": 0},
    # bounded below what the busiest neurons meet, so merges prune
    "bounded": {"ngram_layers": NGRAM_LAYERS, "ngram_capacity": 3, "token_fire_dense_limit": 0, "token_capacity": 4},
}


@pytest.fixture(scope="module")
def census():
    return load_model("census", {"source": "planted", "recipe": "census"}), designed_tokens("census")


def capture(census, rows: slice, **settings) -> tuple[tuple[int, ...], dict]:
    loaded, tokens = census
    return capture_tokens(
        loaded.model, loaded.adapter, tokens[rows], model_name="census", first_seq_id=rows.start,
        has_bos=True, settings=CaptureSettings(batch_size=16, **settings), device=torch.device("cpu"), progress=False,
    )


def store_attrs(layers, shard: int) -> dict:
    return {
        "model": "census", "datasets": ["d"], "sources": [f"d/{shard}"], "layers": list(layers),
        "n_layers_total": RECIPE.n_layers, "n_neurons": RECIPE.n_neurons, "seq_len": 64,
        "vocab_size": RECIPE.vocab_size, "tokenizer_fingerprint": "t", "fire_rule": "preactivation",
        "has_bos": True, "top_k": 16,
    }


def write_shards(census, tmp_path: Path, settings: dict) -> list[Path]:
    paths = []
    for shard, rows in enumerate((slice(0, 40), slice(40, 80))):
        layers, states = capture(census, rows, **settings)
        paths.append(tmp_path / f"shard-{shard}.zarr")
        write_store(paths[-1], store_attrs(layers, shard), states)
    return paths


def assert_states_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        for key in want[name]:
            np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=f"{name}/{key}")


@pytest.mark.parametrize("table", ["dense", "sparse"])
def test_a_stored_layer_is_the_capture_of_that_layer_alone(census, tmp_path: Path, table: str):
    """Exact tables: reading slot s of an all-layer store gives what capturing layer s alone writes."""
    path = write_shards(census, tmp_path, TABLES[table])[0]
    reader = StoreReader(path)
    for slot, layer in enumerate(reader.attrs["layers"]):
        _, alone = capture(census, slice(0, 40), layers=(layer,), **TABLES[table])
        got = {name: reader.layer_state(name, slot) for name in reader.names}
        assert_states_equal(got, alone)
        assert len(got["ngram_fire_count"]["layers"]) == (layer in NGRAM_LAYERS)
        if layer in NGRAM_LAYERS:  # the slice is not empty by accident
            assert len(got["ngram_fire_count"]["order2_group"]) > 0


@pytest.mark.parametrize("table", list(TABLES))
def test_merging_layers_read_alone_equals_slicing_the_merge(census, tmp_path: Path, table: str):
    """Per layer, merging the stores' slices gives the slice of the whole merge (pruning included)."""
    paths = write_shards(census, tmp_path, TABLES[table])
    readers = [StoreReader(path) for path in paths]
    whole = merge_states([{name: reader.state(name) for name in reader.names} for reader in readers])
    for slot, layer in enumerate(readers[0].attrs["layers"]):
        got = {name: merged_layer_state(readers, name, slot) for name in readers[0].names}
        want = {name: REGISTRY[name].read_layer(StateInMemory(whole[name]), slot, layer) for name in whole}
        assert_states_equal(got, want)
    if table == "bounded":  # the capacities did prune
        sizes = np.bincount(whole["token_fire_count"]["keys"] % RECIPE.n_neurons)
        assert sizes.max() == 4


@pytest.mark.parametrize("table", list(TABLES))
def test_statistics_layer_by_layer_equal_all_layers_at_once(census, tmp_path: Path, table: str):
    paths = write_shards(census, tmp_path, TABLES[table])
    readers = [StoreReader(path) for path in paths]
    attrs = merged_attrs(readers)
    whole = merge_states([{name: reader.state(name) for name in reader.names} for reader in readers])
    want = stats_tables("census", attrs, whole, AnalysisSettings(), TOKEN_STRINGS)
    got = stats_tables_by_layer(
        "census",
        attrs,
        lambda slot: {name: merged_layer_state(readers, name, slot) for name in readers[0].names if name != "top_k"},
        AnalysisSettings(),
        TOKEN_STRINGS,
    )
    for got_table, want_table in zip(got, want):
        assert got_table.schema == want_table.schema
        assert got_table.equals(want_table)
    stats = got[0]
    assert stats["token_detector"].sum() > 0 and stats["positional"].sum() > 0
    assert stats.filter(pl.col("layer") == 1)["bigram_coverage"].null_count() == RECIPE.n_neurons


@pytest.mark.parametrize("table", list(TABLES))
def test_the_shard_merge_layer_by_layer_equals_the_merge_in_memory(census, tmp_path: Path, table: str):
    """`merge_store_files` merges top-k, moments and the sparse tables a layer at a time and appends them:
    the store it writes holds what folding the whole states gives."""
    paths = write_shards(census, tmp_path, TABLES[table])
    merge_store_files(paths, tmp_path / "merged.zarr")
    _, got = read_store(tmp_path / "merged.zarr")
    _, want = merge_stores(paths)
    assert_states_equal(got, want)
    assert len(want["ngram_fire_count"]["order3_group"]) > 0 and len(want["token_fire_count"]["keys"]) > 0
    merged = StoreReader(tmp_path / "merged.zarr")
    assert merged.array("ngram_fire_count", "order2_gram").chunks == (1 << 20,)  # appended, in large chunks
    assert merged.array("top_k", "values").chunks == (1, 16, RECIPE.n_neurons)  # a layer a chunk


def test_sorted_range_by_bisection_matches_searchsorted():
    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 100):
        keys = np.sort(rng.integers(0, 20, size))
        for low in range(-1, 22):
            for high in range(low, 23):
                want = slice(int(np.searchsorted(keys, low)), int(np.searchsorted(keys, high)))
                assert sorted_range_of(lambda i: int(keys[i]), len(keys), low, high) == want


def test_every_accumulator_defines_its_whole_interface():
    """Each accumulator is one class: its merge, layer reader and memory bound are its own, and one with
    a layer axis also hands a layer over and appends it."""
    from neuron_census.accumulators import Accumulator

    for cls in REGISTRY.values():
        own = {"merge", "read_layer", "memory", "update", "state"} | ({"take_layer", "layer_parts"} if cls.layered else set())
        for method in own:
            assert getattr(cls, method) is not getattr(Accumulator, method), f"{cls.name}.{method}"


@pytest.mark.parametrize("table", list(TABLES))
def test_layers_handed_over_join_into_the_whole_state(census, monkeypatch, table: str):
    """Capture hands states over a layer at a time (`take_layer`, as soon as the layer has counted its last
    batch); joined, they are exactly what each accumulator's `state()` of all layers at once gives (a
    capture whose accumulators all say they have no layer axis, so that every state is read at the end)."""
    from neuron_census.accumulators import default_accumulators

    _, joined = capture(census, slice(0, 40), **TABLES[table])
    by_layer = [REGISTRY[name] for name in default_accumulators() if REGISTRY[name].layered]
    with monkeypatch.context() as patched:
        for cls in by_layer:
            patched.setattr(cls, "layered", False)
        _, wholes = capture(census, slice(0, 40), **TABLES[table])
    names = {cls.name for cls in by_layer}
    assert names == set(default_accumulators()) - {"token_count", "ngram_count"}
    assert_states_equal({name: joined[name] for name in names}, {name: wholes[name] for name in names})
    assert len(wholes["ngram_fire_count"]["order2_group"]) > 0 and len(wholes["token_fire_count"]["keys"]) > 0


@pytest.mark.parametrize("write_behind", [True, False])
@pytest.mark.parametrize("strategy", ["resident", "layerwise"])
def test_a_store_written_while_capturing_equals_the_states_in_memory(census, tmp_path: Path, strategy: str, write_behind: bool):
    """The capture job writes each layer into the store as it is handed over (by a writer thread, or not):
    the store holds what a capture into memory returns, with layered arrays chunked a layer at a time."""
    from neuron_census.capture.placement import Placement
    from neuron_census.capture.layer_states import written_behind
    from neuron_census.capture.store import writing_store

    loaded, tokens = census
    settings = CaptureSettings(batch_size=16, **TABLES["bounded"])
    placement = Placement(strategy=strategy)

    def run(sink=None):
        return capture_tokens(
            loaded.model, loaded.adapter, tokens[:40], model_name="census", first_seq_id=0, has_bos=True,
            settings=settings, device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
            sink=sink,
        )

    layers, want = run()
    with writing_store(tmp_path / "s.zarr", store_attrs(layers, 0)) as store, written_behind(store, write_behind) as sink:
        assert run(sink) == (layers, {})
    attrs, got = read_store(tmp_path / "s.zarr")
    assert_states_equal(got, want)
    assert attrs["layers"] == list(layers)
    reader = StoreReader(tmp_path / "s.zarr")
    assert reader.array("position_fire_count", "counts").chunks == (1, 64, RECIPE.n_neurons)
    assert reader.array("token_fire_count", "keys").chunks == (1 << 20,)


def test_a_capture_that_fails_leaves_no_store(census, tmp_path: Path, monkeypatch):
    """Layers already written when capture fails are thrown away with the store's temporary."""
    from neuron_census import accumulators
    from neuron_census.capture.placement import Placement
    from neuron_census.capture.store import writing_store

    loaded, tokens = census
    take = accumulators.REGISTRY["moments"].take_layer

    def fail_at_layer_1(self, layer):
        if layer == 1:
            raise RuntimeError("device lost")
        return take(self, layer)

    monkeypatch.setattr(accumulators.REGISTRY["moments"], "take_layer", fail_at_layer_1)
    with pytest.raises(RuntimeError, match="device lost"):
        with writing_store(tmp_path / "s.zarr", store_attrs((0, 1, 2), 0)) as store:
            capture_tokens(
                loaded.model, loaded.adapter, tokens[:40], model_name="census", first_seq_id=0, has_bos=True,
                settings=CaptureSettings(batch_size=16), device=torch.device("cpu"),
                placement=Placement(strategy="layerwise"), offload_dir=tmp_path / "off", progress=False, sink=store,
            )
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "off") == []


def capture_into_store(census, path: Path, strategy: str = "layerwise", **settings):
    """A capture of 40 sequences written into a store at `path` by a writer thread, as the capture job does."""
    from neuron_census.capture.placement import Placement
    from neuron_census.capture.layer_states import written_behind
    from neuron_census.capture.store import writing_store

    loaded, tokens = census
    with writing_store(path, store_attrs((0, 1, 2), 0)) as store, written_behind(store) as sink:
        capture_tokens(
            loaded.model, loaded.adapter, tokens[:40], model_name="census", first_seq_id=0, has_bos=True,
            settings=CaptureSettings(batch_size=16, **settings), device=torch.device("cpu"),
            placement=Placement(strategy=strategy), offload_dir=path.parent / "off", progress=False, sink=sink,
        )


def writer_threads() -> list[str]:
    import threading

    return [thread.name for thread in threading.enumerate() if thread.name.startswith("store-writer")]


def test_layerwise_capture_computes_the_next_layer_while_a_layer_is_written(census, tmp_path: Path, monkeypatch):
    """The write of layer 0 only finishes once layer 1 has been computed on a batch: that can only happen if
    the write runs on another thread while capture goes on (written in line, it would wait in vain)."""
    import threading

    from neuron_census import accumulators
    from neuron_census.capture.layer_states import LayeredStates

    layer_1_ran = threading.Event()
    seen: dict[int, tuple[str, bool]] = {}
    update, add_layers = accumulators.REGISTRY["moments"].update, LayeredStates.add_layers

    def updating(self, batch):
        if batch.layer == 1:
            layer_1_ran.set()
        return update(self, batch)

    def adding(self, slot, states):
        seen[slot] = (threading.current_thread().name, slot != 0 or layer_1_ran.wait(timeout=60))
        return add_layers(self, slot, states)

    monkeypatch.setattr(accumulators.REGISTRY["moments"], "update", updating)
    monkeypatch.setattr(LayeredStates, "add_layers", adding)
    capture_into_store(census, tmp_path / "s.zarr")
    assert sorted(seen) == [0, 1, 2]
    assert all(name.startswith("store-writer") for name, _ in seen.values())
    assert seen[0][1], "layer 1 never ran while layer 0 was being written"
    assert StoreReader(tmp_path / "s.zarr").names == sorted(default_accumulators())
    assert writer_threads() == []


def test_a_failed_write_fails_the_capture_and_leaves_no_store(census, tmp_path: Path, monkeypatch):
    from neuron_census.capture import store

    add = store._Appender.add

    def full_at_layer_1(self, parts):
        if self.group.basename == "top_k" and "values" in self.arrays:
            raise OSError("No space left on device")
        return add(self, parts)

    monkeypatch.setattr(store._Appender, "add", full_at_layer_1)
    with pytest.raises(OSError, match="No space left"):
        capture_into_store(census, tmp_path / "s.zarr")
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "off") == []
    assert writer_threads() == []


def test_a_capture_failing_during_a_write_reports_its_own_error_and_leaves_no_store(census, tmp_path: Path, monkeypatch):
    """Capture fails while layer 0 is still being written (and that write fails too): the capture's error is
    the one raised, the write has ended before the store's temporary is removed, and nothing is left."""
    import threading
    import time

    from neuron_census import accumulators
    from neuron_census.capture.layer_states import LayeredStates

    writing = threading.Event()
    take = accumulators.REGISTRY["moments"].take_layer

    def slow_failing_write(self, slot, states):
        writing.set()
        time.sleep(0.5)
        raise OSError("write failed")

    def fail_at_layer_1(self, layer):
        if layer == 1:
            writing.wait(timeout=60)
            raise RuntimeError("device lost")
        return take(self, layer)

    monkeypatch.setattr(LayeredStates, "add_layers", slow_failing_write)
    monkeypatch.setattr(accumulators.REGISTRY["moments"], "take_layer", fail_at_layer_1)
    with pytest.raises(RuntimeError, match="device lost"):
        capture_into_store(census, tmp_path / "s.zarr")
    assert sorted(path.name for path in tmp_path.iterdir() if path.name != "off") == []
    assert writer_threads() == []


def test_layers_must_be_handed_over_in_order():
    from neuron_census.capture.layer_states import LayeredStates

    states = LayeredStates()
    moments = {"count": np.zeros(1, np.int64), **{key: np.zeros((1, 2)) for key in ("sum", "m2", "min", "max")}}
    states.add_layers(0, {"moments": moments})
    with pytest.raises(ValueError, match="slot 2 handed over before slot 1"):
        states.add_layers(2, {"moments": {"sum": np.zeros((1, 2))}})
