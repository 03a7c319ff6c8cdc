"""Loading census models from every spec source, and refusing bad specs with the culprit named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from neuron_census.models.loading import LoadedModel, load_model
from neuron_census.models.zoo import build_random_model

REPO = Path(__file__).resolve().parents[1]
STORIES = next(
    (p for p in (REPO / "resources/models/stories260K", Path("/work/shared/data/models/stories260K/hf")) if p.is_dir()),
    REPO / "resources/models/stories260K",
)


def _frozen(loaded: LoadedModel) -> bool:
    return not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_bundled_stories260k_loads_from_a_local_folder() -> None:
    loaded = load_model("stories260k", {"source": "local", "path": STORIES.name, "tokenizer": "x"}, root=STORIES.parent)
    adapter = loaded.adapter
    assert loaded.name == "stories260k" and adapter.name == "stories260k"
    assert (adapter.family, adapter.gated, adapter.n_neurons, adapter.n_layers) == ("llama", True, 172, 5)
    assert (adapter.d_model, adapter.vocab_size, adapter.context_length, adapter.activation) == (64, 512, 512, "silu")
    assert _frozen(loaded) and loaded.model.dtype == torch.float32
    assert adapter.gate_output_module(0) is not adapter.gate_output_module(1)
    # trained weights really came in (random init would give an RMSNorm gain of exactly 1)
    assert not torch.allclose(loaded.model.model.norm.weight, torch.ones(64))
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([[1, 100, 200, 300]])).logits
    assert logits.shape == (1, 4, 512) and torch.isfinite(logits).all()


def test_absolute_local_path_and_hub_source_from_a_folder_in_bfloat16() -> None:
    loaded = load_model("s", {"source": "local", "path": str(STORIES)}, root=Path("/nonexistent"), dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.adapter.project_to_vocab(torch.ones(2, 64), apply_final_norm=True).dtype == torch.float32
    # the hub path accepts a folder as its id, so it is exercised offline
    hub = load_model("s", {"source": "hub", "id": str(STORIES), "trust_remote_code": False})
    assert hub.adapter.n_neurons == 172 and _frozen(hub)


def test_random_source_is_seeded() -> None:
    spec = {"source": "random", "architecture": "pythia-70m", "seed": 3, "n_layers": 1, "tokenizer": "t"}
    a, b = load_model("r", spec), load_model("r", spec)
    c = load_model("r", {**spec, "seed": 4})
    assert (a.adapter.family, a.adapter.n_layers, a.adapter.n_neurons) == ("gpt_neox", 1, 2048)
    assert _frozen(a)
    assert torch.equal(a.adapter.value_vectors(0), b.adapter.value_vectors(0))
    assert not torch.equal(a.adapter.value_vectors(0), c.adapter.value_vectors(0))
    with pytest.raises(ValueError, match="unknown architecture 'opt-9b'"):
        load_model("r", {"source": "random", "architecture": "opt-9b"})


def test_planted_source() -> None:
    loaded = load_model("planted", {"source": "planted", "recipe": "basic"})
    assert loaded.adapter.family == "opt" and _frozen(loaded)


def test_saved_random_model_round_trips_through_safetensors(tmp_path: Path) -> None:
    model = build_random_model("pythia-70m", seed=2, n_layers=1)
    model.save_pretrained(tmp_path / "m")
    assert list((tmp_path / "m").glob("*.safetensors"))
    loaded = load_model("m", {"source": "local", "path": "m"}, root=tmp_path)
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)
    saved_fc_out = model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.T
    assert torch.equal(loaded.adapter.value_vectors(0), saved_fc_out)


def test_missing_folder_names_model_and_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model 'gone': folder .*nowhere not found"):
        load_model("gone", {"source": "local", "path": "nowhere"}, root=tmp_path)


def test_folder_without_safetensors_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(STORIES / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(FileNotFoundError, match=r"model 'pk': .*pickled has no \*\.safetensors"):
        load_model("pk", {"source": "local", "path": str(folder)})
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model("pk", {"source": "local", "path": str(folder)})


def test_remote_code_is_never_run_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {"model_type": "weird", "auto_map": {"AutoConfig": "configuration_weird.WeirdConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_weird.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (folder / "model.safetensors").write_bytes(b"")
    message = r"model 'odd' \(.*custom\) needs code from its repository; set trust_remote_code"
    with pytest.raises(ValueError, match=message):
        load_model("odd", {"source": "local", "path": str(folder)})
    assert not (tmp_path / "ran").exists()


def test_unsupported_family_is_refused_before_weights_load(tmp_path: Path) -> None:
    config = AutoConfig.for_model("gpt_neo", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                  attention_types=[[["global"], 1]], max_position_embeddings=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "neo")
    (tmp_path / "neo" / "model.safetensors").write_bytes(b"corrupt: never read")
    with pytest.raises(ValueError, match=r"no FFN adapter for model type 'gpt_neo' \(model 'neo'\); supported:"):
        load_model("neo", {"source": "local", "path": "neo"}, root=tmp_path)


def test_bad_specs_name_the_culprit() -> None:
    message = r"model 'x': unknown source 'ftp'; expected one of hub, local, random, planted"
    with pytest.raises(ValueError, match=message):
        load_model("x", {"source": "ftp"})
    with pytest.raises(ValueError, match="resolved_model_spec"):
        load_model("x", {"source": "trained", "run": "tiny-opt"})
    with pytest.raises(ValueError, match="model 'x': source 'hub' needs key 'id'"):
        load_model("x", {"source": "hub"})
    with pytest.raises(ValueError, match="model 'x': source 'random' needs key 'architecture'"):
        load_model("x", {"source": "random"})


def test_the_package_never_unpickles_or_enables_remote_code() -> None:
    """A guard on the source: no pickle-based loader, and remote code only ever from a model's own spec."""
    package = Path(__file__).resolve().parents[1] / "src" / "neuron_census"
    forbidden = ("torch.load(", "import pickle", "allow_pickle=True", "weights_only=False", "trust_remote_code=True")
    found = [
        (path.name, pattern) for path in sorted(package.rglob("*.py")) for pattern in forbidden if pattern in path.read_text()
    ]
    assert found == []
