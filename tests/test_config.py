"""Config validation: the default and every preset pass; mistakes stop with a message naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from neuron_census.config import (
    ConfigError,
    capture_settings,
    job_resources,
    job_threads,
    model_datasets,
    resolved_model_spec,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture()
def default() -> dict:
    return load(ROOT / "config" / "config.yaml")


@pytest.mark.parametrize("path", [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "presets").glob("*.yaml"))])
def test_shipped_configs_are_valid(path: Path):
    validate_config(load(path), SCHEMA)


def test_defaults_are_filled(default):
    from neuron_census.plots.registry import FIGURES

    config = validate_config(default, SCHEMA)
    assert set(config["figures"]) == set(FIGURES)  # every registered figure, and only those
    assert config["figures"]["probe_methods"] == {} and config["figures"]["fig1a_dead_neurons"]["models"][0] == "stories260k"
    assert config["capture"]["token_fire_dense_limit"] == 1 << 31
    assert config["datasets"]["corpus"]["encoding_errors"] == "strict"
    assert config["models"]["stories260k"]["trust_remote_code"] is False


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["capture"].update(batch_sise=4), r"'capture'.*'batch_sise' was unexpected"),
        (lambda c: c["capture"].update(batch_size="big"), r"'capture.batch_size': 'big' is not of type 'integer'"),
        (lambda c: c["models"]["stories260k"].update(path=3), r"'models.stories260k.path'"),
        (lambda c: c["models"].update({"../evil": c["models"]["stories260k"]}), r"'models'.*does not match"),
        (lambda c: c["capture"].update(datasets=["nope"]), r"'capture.datasets': unknown dataset 'nope'"),
        (
            lambda c: c["analysis"].setdefault("positional", {}).update(datasets=["corpus-train"]),
            r"'analysis.positional.datasets': 'corpus-train' is not one of capture.datasets",
        ),
        (lambda c: c["models"]["tiny-opt"].update(run="nope"), r"'models.tiny-opt.run': unknown train run 'nope'"),
        (lambda c: c["models"]["tiny-opt"].update(step=7), r"'models.tiny-opt.step': 7 is not a checkpoint"),
        (lambda c: c["train"]["tiny-opt"].update(checkpoints=[10]), r"'train.tiny-opt.checkpoints'"),
        # what TrainConfig leaves to the schema
        (lambda c: c["train"]["tiny-opt"].update(dtype="float16"), r"'train.tiny-opt.dtype': 'float16' is not one of"),
        (lambda c: c["train"]["tiny-opt"].update(lr_schedule="step"), r"'train.tiny-opt.lr_schedule'"),
        (lambda c: c["train"]["tiny-opt"].update(micro_batches=0), r"'train.tiny-opt.micro_batches'"),
        (lambda c: c["train"]["tiny-opt"].update(checkpoints=[]), r"'train.tiny-opt.checkpoints'"),
        (lambda c: c["capture"].update(dtype="float64"), r"'capture.dtype': 'float64' is not one of"),
        (lambda c: c["figures"]["fig1a_dead_neurons"].update(bins=[1, 2.5]), r"'figures.fig1a_dead_neurons.bins.1'"),
        (lambda c: c["figures"]["fig1a_dead_neurons"].update(order=4), r"'figures.fig1a_dead_neurons.order'"),
        (lambda c: c["figures"].update(fig99_nope={}), r"'figures'.*'fig99_nope' was unexpected"),
        (lambda c: c["models"].update(figures=c["models"]["stories260k"]), r"'models.figures'.*reserved"),
        (lambda c: c["figures"]["fig1a_dead_neurons"].update(models=["nope"]), r"unknown model 'nope'"),
        (lambda c: c["resources"].update(merge={"mem_mb": 4}), r"'resources'.*'merge' was unexpected"),
        (lambda c: c["models"]["stories260k"].update(resources={"capture": {"mem_mb": "lots"}}), r"'models.stories260k"),
        # what the config alone shows, refused at parse time instead of after jobs ran
        (lambda c: c["train"]["tiny-opt"].update(datasets=["corpus-train", "corpus-train"]),
         r"'train.tiny-opt.datasets': 'corpus-train' is listed twice"),
        (lambda c: c["capture"].update(datasets=["corpus", "corpus"]), r"'capture.datasets': 'corpus' is listed twice"),
        (lambda c: c["figures"]["fig1a_dead_neurons"].update(models=["tiny-opt", "tiny-opt"]), r"'tiny-opt' is listed twice"),
        (lambda c: c["capture"].update(ngram_layers=[99]),
         r"'capture.ngram_layers': layers \[99\] are not analysed for model 'planted' \(capture.layers: all 3 layers\)"),
        (lambda c: c["capture"].update(layers=[0, 1], ngram_layers=[2]), r"'capture.ngram_layers': layers \[2\] are not analysed"),
        (lambda c: c["models"]["tiny-opt"].update(capture={"ngram_layers": [4]}),
         r"'models.tiny-opt.capture.ngram_layers': layers \[4\] are not analysed for model 'tiny-opt' \(capture.layers: all 4"),
        (lambda c: c["models"]["tiny-opt"].update(capture={"layers": [0, 7]}), r"'models.tiny-opt.capture.layers': model 'tiny-opt' has layers 0..3, not \[7\]"),
        (lambda c: c["capture"].update(ngram_orders=[]), r"'capture.ngram_orders': \[\] should be non-empty"),
        (lambda c: c["datasets"]["corpus"].update(seq_len=256),
         r"'datasets.corpus.seq_len': 256 tokens exceed model 'tiny-opt' context of 64 positions"),
        (lambda c: (c["datasets"].update(wide=dict(c["datasets"]["corpus"], seq_len=32)), c["capture"].update(datasets=["corpus", "wide"])),
         r"'capture.datasets': model 'stories260k' would capture datasets of different seq_len \(corpus: 64, wide: 32\)"),
        (lambda c: c["models"]["tiny-opt"].update(capture={"datasets": ["nope"]}), r"'models.tiny-opt.capture.datasets': unknown dataset 'nope'"),
        (lambda c: c["capture"].update(accumulator_options={"top_kk": {}}), r"'capture.accumulator_options': unknown accumulator 'top_kk'"),
        (lambda c: c["models"]["tiny-opt"].update(capture={"accumulator_options": {"moments": {"dtype": "x"}}}),
         r"'models.tiny-opt.capture.accumulator_options': moments: unknown options \['dtype'\]; known: \[\]"),
        (lambda c: c["models"].update(p={"source": "planted", "recipe": "nope", "tokenizer": "stories260k"}),
         r"'models.p.recipe': unknown planted recipe 'nope'"),
        # universal neurons
        (lambda c: c["universal"]["tiny-gpt2-seed0"].update(others=["stories260k"]),
         r"'universal.tiny-gpt2-seed0.others': models 'tiny-gpt2-seed0' and 'stories260k' have different tokenizers"),
        (lambda c: c["universal"]["tiny-gpt2-seed0"].update(others=["tiny-gpt2-seed0"]), r"must differ from 'tiny-gpt2-seed0'"),
        (lambda c: c["universal"].update(nope={"others": ["tiny-opt"]}), r"'universal.nope': unknown model 'nope'"),
        (lambda c: c["universal"]["planted-seed-a"].update(dataset="nope"), r"'universal.planted-seed-a.dataset': unknown dataset"),
        (lambda c: c["universal"]["planted-seed-a"].update(activation="gelu"), r"'universal.planted-seed-a.activation'"),
        (lambda c: c["train"]["tiny-gpt2"].update(seed=3), r"'train.tiny-gpt2'"),  # seed and seeds
        (lambda c: c["train"]["tiny-gpt2"].update(architecture="llama"), r"'train.tiny-gpt2.architecture'"),
        (lambda c: c["train"].update({"tiny-gpt2-seed1": c["train"]["tiny-opt"]}), r"run 'tiny-gpt2-seed1' is also configured"),
        # sparse probing
        (lambda c: c["probing"].update(nope={}), r"'probing': unknown model 'nope'"),
        (lambda c: c["probing"]["stories260k"].update(datasets=["nope"]), r"'probing.stories260k.datasets': unknown dataset 'nope'"),
        (lambda c: c["probing"]["stories260k"].update(layers=[5]), r"'probing.stories260k.layers': model 'stories260k' has layers 0..4, not \[5\]"),
        (lambda c: c["probing"]["stories260k"].update(methods=["best"]), r"'probing.stories260k.methods.0'"),
        (lambda c: c["probing"]["stories260k"]["groups"].update(language=["lang-fr", "lang-fr"]), r"'probing.stories260k.groups.language'.*repeat"),
        (lambda c: c["probing"]["stories260k"]["groups"].update(pos=["lang-fr"]), r"'probing.stories260k.groups.pos': 'pos' names a built-in feature family"),
        (lambda c: c["probing"]["stories260k"].update(pos="some"), r"'probing.stories260k.pos'"),
        (lambda c: c["probing"]["stories260k"].update(min_per_class=0), r"'probing.stories260k.min_per_class'"),
        (lambda c: c.setdefault("atlas", {}).update(models=["nope"]), r"'atlas.models': unknown model 'nope'"),
        (lambda c: c.setdefault("atlas", {}).update(models=["planted-probing"]), r"'atlas.models': model 'planted-probing' has census: false"),
        (lambda c: c.setdefault("atlas", {}).update(other_pages=-1), r"'atlas.other_pages'"),
        (lambda c: (c["models"].update(hub={"source": "hub", "id": "EleutherAI/pythia-70m", "tokenizer": "stories260k"}), c["probing"].update(hub={})),
         r"'probing.hub.layers': name the layers to probe"),
        (lambda c: c["probing"]["stories260k"].update(positive_share=1.0), r"'probing.stories260k.positive_share'"),
    ],
)
def test_mistakes_name_the_key(default, mutate, message):
    config = copy.deepcopy(default)
    mutate(config)
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(config, SCHEMA)
    assert "\n" not in str(info.value)


def test_seeds_make_one_run_each(default):
    config = validate_config(default, SCHEMA)
    runs = {name: run for name, run in config["train"].items() if name.startswith("tiny-gpt2")}
    assert {name: run["seed"] for name, run in runs.items()} == {f"tiny-gpt2-seed{k}": k for k in range(3)}
    assert all("seeds" not in run and run["architecture"] == "gpt2" for run in runs.values())
    assert config["train"]["tiny-opt"]["seed"] == 0


def test_resolution_of_trained_models(default):
    config = validate_config(default, SCHEMA)
    assert resolved_model_spec(config, "tiny-opt") == {"source": "local", "path": "results/train/tiny-opt/step-2800"}
    config["models"]["stories260k"]["capture"] = {"batch_size": 3}
    assert capture_settings(config, "stories260k")["batch_size"] == 3
    assert capture_settings(config, "tiny-opt")["batch_size"] == config["capture"]["batch_size"]


def test_job_resources_per_model(default):
    """Built-in sizes, under the config's `resources`, under a model's own; never part of the model's spec
    (so changing a request reruns nothing)."""
    config = validate_config(default, SCHEMA)
    config["models"]["stories260k"]["resources"] = {"capture": {"mem_mb": 123}}
    assert job_resources(config, "stories260k", "capture") == {"mem_mb": 123, "runtime": config["resources"]["capture"]["runtime"]}
    assert job_resources(config, "tiny-opt", "capture") == config["resources"]["capture"]
    assert "resources" not in resolved_model_spec(config, "stories260k")
    del config["resources"]["vocab_projection"]
    assert job_resources(config, "tiny-opt", "vocab_projection") == {"mem_mb": 64000, "runtime": 120}
    opt = validate_config(load(ROOT / "config" / "presets" / "opt-family.yaml"), SCHEMA)
    assert job_resources(opt, "opt-30b", "capture") == {"mem_mb": 120000, "runtime": 1440}
    assert job_resources(opt, "opt-125m", "capture") == {"mem_mb": 64000, "runtime": 720}


def test_job_threads_per_model(default):
    """The threads of a model's jobs: the model's own, else the config's, else 8 (the presets' GPU jobs)."""
    config = validate_config(default, SCHEMA)
    assert job_threads(config, "tiny-opt") == job_threads(config) == config["resources"]["threads"] == 1  # the embedded default: tiny models
    config["models"]["stories260k"]["resources"] = {"threads": 3}
    assert job_threads(config, "stories260k") == 3 and job_threads(config, "planted") == 1
    del config["resources"]["threads"]
    assert job_threads(config, "planted") == job_threads(config) == 8 and job_threads(config, "stories260k") == 3
    opt = validate_config(load(ROOT / "config" / "presets" / "opt-family.yaml"), SCHEMA)
    assert job_threads(opt, "opt-125m") == 8
    bad = {**default, "resources": {"threads": 0}}
    with pytest.raises(ConfigError, match="threads"):
        validate_config(bad, SCHEMA)


def test_a_model_captures_its_own_datasets(default):
    config = copy.deepcopy(default)
    config["datasets"]["short"] = {"source": "bundled", "seq_len": 32, "sequences_per_shard": 4}
    config["models"]["tiny-opt"]["capture"] = {"datasets": ["short"], "batch_size": 3}
    validate_config(config, SCHEMA)
    assert model_datasets(config, "tiny-opt") == ["short"] and model_datasets(config, "stories260k") == ["corpus"]
    assert "datasets" not in capture_settings(config, "tiny-opt") and "datasets" not in capture_settings(config, "stories260k")


def test_nested_command_line_values_get_their_schema_types(default):
    """Snakemake reads `--config capture='{batch_size: 8, layers: [0, 1]}'` with YAML's BaseLoader: strings."""
    config = copy.deepcopy(default)
    snakemake_cli = pytest.importorskip("snakemake.cli")
    overrides = snakemake_cli.parse_config(
        ["capture={batch_size: 8, layers: [0, 1], write_behind: false, token_capacity: null}", "report={title: '2048'}",
         "analysis={positional: {min_mi: 0.1}}"]
    )
    assert overrides["capture"]["batch_size"] == "8"  # what Snakemake hands over
    snakemake_utils = pytest.importorskip("snakemake.utils")
    snakemake_utils.update_config(config, overrides)
    validate_config(config, SCHEMA)
    assert config["capture"]["batch_size"] == 8 and config["capture"]["layers"] == [0, 1]
    assert config["capture"]["write_behind"] is False and config["capture"]["token_capacity"] is None
    assert config["analysis"]["positional"]["min_mi"] == 0.1 and config["report"]["title"] == "2048"
    config["capture"]["batch_size"] = "eight"
    with pytest.raises(ConfigError, match=r"'capture.batch_size': 'eight' is not of type 'integer'"):
        validate_config(config, SCHEMA)


def _settings_classes() -> list[tuple[str, str]]:
    return [
        ("neuron_census.capture.settings:CaptureSettings", "capture"),
        ("neuron_census.analyses.probing:ProbeSettings", "$defs/probing_study"),
        ("neuron_census.analyses.probe_features:FeatureSettings", "$defs/probing_study"),
        ("neuron_census.analyses.steering:SteeringSettings", "$defs/steering_study"),
        ("neuron_census.analyses.subupdates:SubupdateSettings", "$defs/subupdate_study"),
        ("neuron_census.analyses.early_exit:EarlyExitSettings", "$defs/subupdate_study/early_exit"),
        ("neuron_census.analyses.entropy:EntropySettings", "$defs/universal_study/entropy"),
        ("neuron_census.analyses.attention:AttentionSettings", "$defs/universal_study/attention"),
        ("neuron_census.training.train:TrainConfig", "$defs/train_run"),
    ]


@pytest.mark.parametrize(("target", "section"), _settings_classes())
def test_settings_classes_default_to_the_schema(target: str, section: str):
    """A settings class built without arguments holds the schema's default of every key the schema has one for."""
    import dataclasses
    import importlib

    from neuron_census.config import schema_defaults

    module, name = target.split(":")
    built = getattr(importlib.import_module(module), name)()
    expected = schema_defaults(section)
    if section == "capture":
        del expected["layers"]  # the class's None is a config's `all` (`CaptureSettings.from_config`)
    shared = [f.name for f in dataclasses.fields(built) if f.name in expected]
    assert len(shared) >= 3, f"{name} shares too few keys with {section}: {shared}"
    for key in shared:
        value = expected[key]
        assert getattr(built, key) == (tuple(value) if isinstance(value, list) else value), f"{name}.{key}"
