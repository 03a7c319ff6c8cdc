"""Resident, offload and layerwise capture must give the same accumulators.

Offload is forced by a memory budget smaller than the model, so some decoder layers really are streamed
from disk; layerwise keeps hidden states in memory, in a memory-mapped file or on the capture device.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from neuron_census.accumulators import REGISTRY
from neuron_census.capture.engine import CaptureSettings, capture_tokens
from neuron_census.data.corpus import write_token_shard
from neuron_census.capture.placement import Placement, accelerate_max_memory, dispatch_offloaded, layer_on_device
from neuron_census.jobs.census import capture_job
from neuron_census.jobs.common import ModelJob
from neuron_census.models.loading import load_model
from neuron_census.testing.planted import census_tokens, get_recipe, planted_words
from neuron_census.capture.store import read_store, write_store
from strategy_cases import SETTINGS, SPECS, assert_same_states, model_bytes, sample_tokens


def _capture(spec: dict, tokens: np.ndarray, placement: Placement, folder: Path, budget_share: float = 0.9):
    if placement.strategy == "offload" and not placement.max_memory:
        size = model_bytes(load_model("m", spec).model)
        placement = Placement(strategy="offload", max_memory={"cpu": int(size * budget_share)})
    loaded = load_model("m", spec, placement=placement, offload_dir=folder)
    layers, states = capture_tokens(
        loaded.model,
        loaded.adapter,
        tokens,
        model_name="m",
        first_seq_id=0,
        has_bos=True,
        settings=SETTINGS,
        device=torch.device("cpu"),
        placement=placement,
        offload_dir=folder,
        progress=False,
    )
    return loaded, layers, states


@pytest.fixture(scope="module")
def resident_states() -> dict:
    out = {}
    for name, spec in SPECS.items():
        loaded = load_model("m", spec)
        tokens = sample_tokens(loaded.adapter.vocab_size)
        out[name] = (tokens, capture_tokens(
            loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
            settings=SETTINGS, device=torch.device("cpu"), progress=False,
        ))
    return out


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize(
    "placement",
    [
        Placement(strategy="layerwise"),
        Placement(strategy="layerwise", layerwise_states="disk"),
        Placement(strategy="layerwise", layerwise_states="disk", layerwise_weights="disk"),
        Placement(strategy="layerwise", layerwise_states="device"),
        Placement(strategy="offload"),
    ],
    ids=["layerwise-cpu", "layerwise-disk", "layerwise-disk-weights-and-states", "layerwise-device", "offload-disk"],
)
def test_strategies_give_identical_accumulators(name, placement, resident_states, tmp_path):
    tokens, (layers, expected) = resident_states[name]
    loaded, got_layers, got = _capture(SPECS[name], tokens, placement, tmp_path)
    assert got_layers == layers
    assert_same_states(expected, got)
    if placement.strategy == "offload":
        assert "disk" in set(loaded.model.hf_device_map.values())  # the budget really forced offloading
    if placement.layers_on_disk:  # the layers were loaded for the run and dropped again
        assert {p.device.type for p in loaded.adapter.decoder_layers().parameters()} == {"meta"}


@pytest.mark.parametrize("name", ["opt-125m", "stories260k"])  # built in code, and read from safetensors
def test_layerwise_with_disk_weights_holds_one_layer_at_a_time(name, tmp_path):
    placement = Placement(strategy="layerwise", layerwise_weights="disk")
    loaded = load_model("m", SPECS[name], placement=placement, offload_dir=tmp_path)
    layers = loaded.adapter.decoder_layers()
    assert set(loaded.model.hf_device_map.values()) == {"cpu", "disk"}
    held_during_calls: list[list[int]] = []

    def record(*_args) -> None:
        held_during_calls.append([i for i, layer in enumerate(layers) if any(p.device.type != "meta" for p in layer.parameters())])

    for layer in layers:
        layer.register_forward_pre_hook(record)
    tokens = sample_tokens(loaded.adapter.vocab_size)
    capture_tokens(
        loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
        settings=CaptureSettings(batch_size=3, layers=(0, 1), accumulators=("fire_count",)),
        device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
    )
    # three embedding passes stop at layer 0 before anything is loaded; then three batches through layer 0
    # and three through layer 1, each layer alone in memory
    assert held_during_calls == [[]] * 3 + [[0]] * 3 + [[1]] * 3
    assert all(p.device.type == "meta" for p in layers.parameters())


def test_bounded_summaries_merging_mid_shard_agree_across_strategies(monkeypatch, tmp_path):
    """Summaries merged many times per shard (the large-shard regime) still agree: a Misra-Gries summary
    depends on where its merges fall, so each layer's merge points must depend only on its own batches."""
    spec = SPECS["opt-125m"]
    tokens = sample_tokens(7, seed=1)  # four distinct tokens: n-grams repeat, so pruning depends on merge points
    settings = replace(SETTINGS, ngram_capacity=3, token_capacity=2, token_fire_dense_limit=0)

    def capture(placement: Placement, pending_bytes: int) -> dict:
        model = load_model("m", spec, placement=placement)
        _, states = capture_tokens(
            model.model, model.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
            settings=replace(settings, pending_bytes=pending_bytes),
            device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
        )
        return states

    once = capture(Placement(), pending_bytes=1 << 40)  # one merge per layer, at the end
    often = capture(Placement(), pending_bytes=1)  # a merge per layer after every batch
    for name in ("ngram_fire_count", "token_fire_count"):  # merge points matter
        assert any(not np.array_equal(once[name][key], often[name][key]) for key in once[name]), name
    for pending_bytes in (1, 400_000, 1 << 40):
        resident = often if pending_bytes == 1 else capture(Placement(), pending_bytes)
        for placement in (Placement(strategy="layerwise"), Placement(strategy="layerwise", layerwise_states="disk")):
            assert_same_states(resident, capture(placement, pending_bytes))


def test_layers_are_handed_over_when_they_are_done(monkeypatch, tmp_path):
    """Every strategy takes each layer's state from the accumulators once its last batch is counted:
    layerwise before the next layer runs, resident as the last batch goes through the layers, each layer
    right after its own last update."""
    events: list[tuple[str, str, int]] = []
    classes = tuple(REGISTRY[name] for name in ("fire_count", "position_fire_count", "token_fire_count", "ngram_fire_count", "top_k", "moments"))
    for cls in classes:
        update, take = cls.update, cls.take_layer
        monkeypatch.setattr(cls, "update", lambda self, batch, f=update: (events.append((self.name, "update", batch.layer)), f(self, batch))[1])
        monkeypatch.setattr(cls, "take_layer", lambda self, layer, f=take: (events.append((self.name, "take", layer)), f(self, layer))[1])
    spec = SPECS["opt-125m"]
    tokens = sample_tokens(7, seed=1)
    settings = replace(SETTINGS, batch_size=3, token_fire_dense_limit=0, token_capacity=2)
    n_batches = -(-len(tokens) // 3)
    for placement in (Placement(), Placement(strategy="layerwise")):
        events.clear()
        loaded = load_model("m", spec, placement=placement)
        capture_tokens(
            loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True, settings=settings,
            device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
        )
        for cls in classes:
            own = [(kind, layer) for acc, kind, layer in events if acc == cls.name]
            if placement.strategy == "layerwise":
                expected = [step for layer in range(3) for step in [("update", layer)] * n_batches + [("take", layer)]]
            else:
                updates = [("update", layer) for _ in range(n_batches - 1) for layer in range(3)]
                expected = updates + [step for layer in range(3) for step in (("update", layer), ("take", layer))]
            assert own == expected, (placement.strategy, cls.name)


def test_layerwise_capture_holds_one_dense_token_table(monkeypatch, tmp_path):
    """Dense token tables live from a layer's first batch to its hand-over: layerwise capture never holds two,
    resident capture holds every layer's by its last batch; both count the same."""
    alive: list[int] = []
    update = REGISTRY['token_fire_count'].update

    def counted(self, batch):
        update(self, batch)
        alive.append(sum(table is not None for table in self.dense))

    monkeypatch.setattr(REGISTRY['token_fire_count'], "update", counted)
    spec = SPECS["opt-125m"]
    tokens = sample_tokens(7, seed=1)
    settings = replace(SETTINGS, batch_size=3, token_fire_dense_limit=1 << 40, accumulators=("token_fire_count",))
    states, most_alive = [], []
    for placement in (Placement(), Placement(strategy="layerwise")):
        alive.clear()
        loaded = load_model("m", spec, placement=placement)
        states.append(
            capture_tokens(
                loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True, settings=settings,
                device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
            )[1]
        )
        most_alive.append(max(alive))
    assert most_alive == [3, 1]
    assert_same_states(states[0], states[1])


def test_planted_census_neurons_survive_every_strategy(tmp_path):
    """The planted ground-truth model (previous-token head, positional neurons) through each strategy."""
    spec = {"source": "planted", "recipe": "census"}
    tokens = census_tokens(get_recipe("census"))[:9]
    _, layers, expected = _capture(spec, tokens, Placement(), tmp_path)
    for placement in (Placement(strategy="layerwise", layerwise_states="disk"), Placement(strategy="offload")):
        _, got_layers, got = _capture(spec, tokens, placement, tmp_path / placement.strategy, budget_share=0.8)
        assert got_layers == layers
        assert_same_states(expected, got)


def test_layerwise_stops_after_the_last_analysed_layer(tmp_path):
    spec = SPECS["opt-125m"]
    placement = Placement(strategy="layerwise")
    loaded = load_model("m", spec, placement=placement)
    calls = {number: 0 for number in range(3)}
    for number, layer in enumerate(loaded.adapter.decoder_layers()):
        layer.fc1.register_forward_pre_hook(lambda *_args, n=number: calls.__setitem__(n, calls[n] + 1))
    tokens = sample_tokens(loaded.adapter.vocab_size)
    capture_tokens(
        loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True,
        settings=CaptureSettings(batch_size=3, layers=(0, 1), accumulators=("fire_count",)),
        device=torch.device("cpu"), placement=placement, offload_dir=tmp_path, progress=False,
    )
    assert calls == {0: 3, 1: 3, 2: 0}  # three batches through layers 0 and 1; layer 2 never runs
    assert all(p.device.type == "cpu" for p in loaded.adapter.decoder_layers().parameters())


def test_capture_job_with_offload_writes_the_same_store(tmp_path, capsys, monkeypatch):
    recipe = get_recipe("census")
    tokenizer_spec = {"source": "words", "words": planted_words(recipe)}
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("planted", tokenizer_spec)
    shard = tmp_path / "shard-0.zarr"
    write_token_shard(shard, census_tokens(recipe)[:6], tokenizer=tokenizer, dataset="designed", shard=0)
    spec = {"source": "planted", "recipe": "census"}
    base = {"device": "cpu", "dtype": "float32", "batch_size": 4, "ngram_capacity": 64}
    size = model_bytes(load_model("m", spec).model)
    stores = {}
    for label, extra in {
        "resident": {"strategy": "resident"},
        "offload": {"strategy": "offload", "max_memory": {"cpu": int(size * 0.8)}, "offload_dir": str(tmp_path / "offload")},
        "layerwise": {"strategy": "layerwise", "layerwise_states": "disk", "offload_dir": str(tmp_path / "states")},
        "layerwise-disk-weights": {
            "strategy": "layerwise", "layerwise_weights": "disk", "offload_dir": str(tmp_path / "weights")
        },
    }.items():
        out = tmp_path / f"{label}.zarr"
        capture_job(ModelJob("planted", spec, "planted", tokenizer_spec, {**base, **extra}), shard, out)
        # the job says up front how much device memory its statistics can take
        err = capsys.readouterr().err
        assert "capture 'planted': statistics on cpu up to " in err and "statistics in host memory up to " in err
        stores[label] = read_store(out)
        assert stores[label][0]["strategy"] == extra["strategy"]
    for label in ("offload", "layerwise", "layerwise-disk-weights"):
        assert_same_states(stores["resident"][1], stores[label][1])
    assert list((tmp_path / "offload").iterdir()) == []  # the job's temporary folder is gone
    assert list((tmp_path / "states").iterdir()) == []
    assert list((tmp_path / "weights").iterdir()) == []


VOCAB_MODELS = {  # built in code (offloaded to a folder), and read in place from a safetensors checkpoint
    "planted": ({"source": "planted", "recipe": "census"}, "planted"),
    "stories260k": (SPECS["stories260k"], "stories260k"),
}


@pytest.mark.parametrize("name", list(VOCAB_MODELS))
def test_vocabulary_projection_reads_layers_kept_on_disk(name, tmp_path):
    """The vocab job of a model whose capture keeps its layers on disk reads each value vector from there."""
    import polars as pl

    from neuron_census.jobs.census import vocab_job

    spec, tokenizer_name = VOCAB_MODELS[name]
    tokenizer_spec = (
        {"source": "words", "words": planted_words(get_recipe("census"))}
        if name == "planted"
        else {"source": "local", "path": SPECS["stories260k"]["path"]}
    )
    loaded = load_model("m", spec)
    tokens = sample_tokens(loaded.adapter.vocab_size)
    settings = replace(SETTINGS, accumulators=("token_fire_count",))
    layers, states = capture_tokens(
        loaded.model, loaded.adapter, tokens, model_name="m", first_seq_id=0, has_bos=True, settings=settings,
        device=torch.device("cpu"), progress=False,
    )
    store = tmp_path / "merged.zarr"
    n_layers, n_neurons = len(layers), loaded.adapter.n_neurons
    write_store(store, {"layers": list(layers), "n_neurons": n_neurons, "datasets": ["d"], "sources": ["s"]}, states)
    base = {"device": "cpu", "dtype": "float32", "top_n": 5}
    vocab_job(ModelJob("m", spec, tokenizer_name, tokenizer_spec, base), [store], tmp_path / "resident.parquet", tmp_path / "resident-fired.parquet")
    on_disk = {"strategy": "layerwise", "layerwise_weights": "disk", "offload_dir": str(tmp_path / "weights")}
    vocab_job(ModelJob("m", spec, tokenizer_name, tokenizer_spec, {**base, **on_disk}), [store], tmp_path / "disk.parquet", tmp_path / "disk-fired.parquet")
    for kind, rows in (("", n_layers * n_neurons), ("-fired", len(states["token_fire_count"]["keys"]))):
        expected, got = pl.read_parquet(tmp_path / f"resident{kind}.parquet"), pl.read_parquet(tmp_path / f"disk{kind}.parquet")
        assert got.height == rows > 0
        assert got.equals(expected)
    assert list((tmp_path / "weights").iterdir()) == []


def test_placement_and_budget_errors_name_the_key():
    with pytest.raises(ValueError, match="capture.strategy 'gpu' is not one of"):
        Placement(strategy="gpu")
    with pytest.raises(ValueError, match="capture.layerwise_states 'ram'"):
        Placement(strategy="layerwise", layerwise_states="ram")
    with pytest.raises(ValueError, match="capture.layerwise_weights 'gpu'"):
        Placement(strategy="layerwise", layerwise_weights="gpu")
    assert accelerate_max_memory({"0": "20GiB", "cuda:1": 5, "cpu": "1GiB"}, torch.device("cuda")) == {
        0: "20GiB", 1: 5, "cpu": "1GiB"
    }
    assert accelerate_max_memory({0: "20GiB", "cpu": "1GiB"}, torch.device("cpu")) == {"cpu": "1GiB"}
    with pytest.raises(ValueError, match="gives the GPU no budget"):
        accelerate_max_memory({"cpu": "1GiB"}, torch.device("cuda"))
    model = load_model("m", SPECS["opt-125m"]).model
    with pytest.raises(ValueError, match="leaves no room for the model's embeddings"):
        dispatch_offloaded(model, torch.device("cpu"), {"cpu": 1000}, Path("."))
    with pytest.raises(ValueError, match="offload needs a folder"):
        load_model("m", SPECS["opt-125m"], placement=Placement(strategy="offload"))
    with pytest.raises(ValueError, match="layerwise needs a folder"):
        load_model("m", SPECS["opt-125m"], placement=Placement(strategy="layerwise", layerwise_weights="disk"))


def test_a_layer_comes_back_to_its_own_cpu_tensors():
    """Inside the block the layer is on the target device (here the meta device stands in for a GPU);
    afterwards its parameters and buffers are its original CPU tensors again, not copies moved back."""
    layer = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    before = [(t.data_ptr(), t.detach().clone()) for t in [*layer.parameters(), *layer.buffers()]]
    with layer_on_device(layer, torch.device("meta")) as moved:
        assert {t.device.type for t in [*moved.parameters(), *moved.buffers()]} == {"meta"}
    after = [*layer.parameters(), *layer.buffers()]
    assert [t.data_ptr() for t in after] == [ptr for ptr, _ in before]
    for tensor, (_, value) in zip(after, before):
        assert torch.equal(tensor, value)


def test_hidden_states_kept_on_the_device_are_not_copied(tmp_path):
    """`layerwise_states: device` keeps each layer's output as it is; `cpu` keeps a copy in CPU memory."""
    from neuron_census.capture.placement import HiddenStates

    hidden = torch.randn(2, 3, 4)
    kept = {}
    for where in ("device", "cpu", "disk"):
        states = HiddenStates([(2, 3, 4)], torch.float32, where, tmp_path)
        states.put(0, hidden)
        kept[where] = states.get(0)
        torch.testing.assert_close(kept[where], hidden, rtol=0, atol=0)
    assert kept["device"] is hidden
    assert kept["cpu"] is not hidden and kept["cpu"].data_ptr() != hidden.data_ptr()
