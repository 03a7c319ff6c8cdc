"""Config validation at parse time and the name -> spec/path helpers every rule uses."""

import functools
import sys
from pathlib import Path

from neuron_census.config import (
    ConfigError,
    canonical,
    capture_settings,
    definition_default,
    job_resources,
    job_threads,
    model_datasets,
    model_label,
    model_tokenizer,
    probing_layers,
    resolved_model_spec,
    resolved_tokenizer_spec,
    schema,
    tokenizer_dir,
    train_dir,
    validate_config,
)
from neuron_census.data.corpus import TEXT_SOURCES, source_files
from neuron_census.data.inputs import files_fingerprint, folder_files
from neuron_census.plots.registry import FIGURES as FIGURE_SPECS, STUDY_TABLES, figure_study
from neuron_census.jobs.probing import PROBE_KEYS, SPAN_STUDY_KEYS
from neuron_census.testing.planted import SEED_RECIPES

try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ConfigError as error:
    sys.exit(f"neuron-census: {error}")

MODELS = [model for model, spec in config["models"].items() if spec.get("census", definition_default("census"))]  # each one's tables: `all`
ATLAS_MODELS = MODELS if config["atlas"]["models"] is None else config["atlas"]["models"]


def _studied(figure):
    """A figure of a study's tables needs such a study to draw."""
    study = figure_study(figure)
    return study is None or bool(config[study])


FIGURES = [  # `all` and the report
    figure for figure in FIGURE_SPECS if config["figures"].get(figure, {}).get("draw", True) and _studied(figure)
]

_name = schema()["$defs"]["name"]["pattern"].strip("^$")  # config names are wildcard values


wildcard_constraints:
    model=_name,
    dataset=_name,
    tok=_name,
    run=_name,
    shard=r"\d+",
    block=r"\d+-\d+",
    figure=_name,
    layer=r"\d+",


def shard_paths(tok, dataset):
    n = config["datasets"][dataset]["n_shards"]
    return [f"results/tokens/{tok}/{dataset}/shard-{i}.zarr" for i in range(n)]


def previous_text_shard(tok, dataset, shard):
    """The shard before `shard` of a text dataset (its job reads on from where that one ended), else none."""
    if shard == 0 or config["datasets"][dataset]["source"] not in TEXT_SOURCES:
        return []
    return [f"results/tokens/{tok}/{dataset}/shard-{shard - 1}.zarr"]


def tokenizer_inputs(tok):
    """Files a tokenizer is loaded from, so a tokenizer the pipeline trains is built first, and an edited
    tokenizer file reruns what it tokenized."""
    spec = config["tokenizers"][tok]
    if spec["source"] == "train_bpe":
        return [tokenizer_dir(tok)]
    if spec["source"] == "local":
        return folder_files(spec["path"])
    if spec["source"] == "gpt2_bpe":
        return [f"resources/tokenizers/gpt2_bpe/{name}" for name in ("encoder.json", "vocab.bpe")]
    return []


def model_inputs(model):
    """Files a model is loaded from: a trained run's folder (an output of `train`), or every file of a local
    folder (a rewritten model.safetensors reruns the model's jobs; the folder's own mtime would not)."""
    spec = config["models"][model]
    if spec["source"] == "trained":
        return [train_dir(spec["run"])]
    if spec["source"] == "local":
        return folder_files(spec["path"])
    return []


def _text_files(dataset):
    """The local files a text dataset reads (bundled corpus files, matched globs, local hf data files)."""
    spec = config["datasets"][dataset]
    if spec["source"] not in TEXT_SOURCES:
        return ()
    try:
        return tuple(str(path) for path in source_files(spec, Path("."), dataset=dataset))
    except (ValueError, OSError) as error:  # a glob that matches nothing, say: stop before any job
        sys.exit(f"neuron-census: error: {error}")


text_files = functools.cache(_text_files)  # globs matched once per parse, not once per job


def input_version(paths):
    """A param fingerprinting the files a job reads that are not results: any change to them reruns the job
    (a trained model or tokenizer is a result, which Snakemake itself tracks)."""
    return files_fingerprint(path for path in paths if not path.startswith("results/"))


def sample_spans(model):
    """The labelled-span file a model's captures keep samples of (none unless `capture.sample_spans` names one)."""
    return [path for path in [capture_settings(config, model).get("sample_spans")] if path]


def figure_models(figure):
    """The figure's models; by default every model, or the models of the study whose tables it draws."""
    study = figure_study(figure)
    default = list(config[study]) if study else MODELS
    return config["figures"].get(figure, {}).get("models") or default


def figure_style(figure):
    return canonical({k: v for k, v in config["figures"].get(figure, {}).items() if k not in ("models", "draw")})


def vocab_settings(model):
    """The vocabulary-projection settings, run where the model's capture runs (device, dtype, strategy)."""
    capture = capture_settings(config, model)
    return {
        **config["analysis"]["vocab"],
        "device": capture["device"],
        "dtype": capture["dtype"],
        "strategy": capture["strategy"],
        "layerwise_weights": capture["layerwise_weights"],
        "offload_dir": capture.get("offload_dir"),
    }


def figure_tables(figure):
    """Per table kind the figure reads, that table of each of the figure's models, in legend order."""
    return {
        kind: [f"results/{model}/{kind}.parquet" for model in figure_models(figure)]
        for kind in FIGURE_SPECS[figure].tables
    }


def figure_outputs(figure):
    outputs = {
        "png": f"results/figures/{figure}.png",
        "pdf": f"results/figures/{figure}.pdf",
    }
    if FIGURE_SPECS[figure].csv is not None:
        outputs["csv"] = f"results/figures/{figure}.csv"
    return outputs


def planted_note(figure):
    """A caption's closing note when the figure draws models built in code, so no reader takes them for
    trained models."""
    planted = [m for m in figure_models(figure) if config["models"][m]["source"] == "planted"]
    family = [m for m in planted if config["models"][m]["recipe"] in SEED_RECIPES]
    census = [m for m in planted if m not in family]
    notes = []
    if census:
        notes.append(
            f"{_listed(census)} built in code: neurons of known roles (dead ones, token and bigram detectors, "
            "positional neurons of every type) are planted by construction, so the figure shows what each finding "
            "looks like and that the pipeline recovers exactly what was planted."
        )
    if family:
        notes.append(
            f"{_listed(family)} built in code with other models of its family: they hold rescaled copies of some "
            "of its neurons (in other places and layers) and random neurons elsewhere, so the figure shows what "
            "universal neurons look like and that the pipeline finds exactly the copied ones."
        )
    return " ".join(notes)


def _listed(models):
    return f"{' and '.join(repr(m) for m in models)} {'is' if len(models) == 1 else 'are'}"


def universal_study(model):
    return config["universal"][model]


def universal_dataset(model):
    return universal_study(model)["dataset"] or model_datasets(config, model)[0]


def universal_models(model):
    return [model, *universal_study(model)["others"]]


def study_tables(model):
    """The per-neuron tables of a universal-neurons study that its reference's neurons.parquet joins."""
    if model not in config.get("universal", {}):
        return []
    return [f"results/{model}/{table}.parquet" for table in ("universal", "entropy_neurons", "attention_scores", "attention_paths")]


def subupdate_study(model):
    return config["subupdates"][model]


def subupdate_dataset(model):
    return subupdate_study(model)["dataset"] or model_datasets(config, model)[0]


def first_shards(model, dataset, sequences):
    """The dataset's first shards, as many as `sequences` sequences need."""
    needed = -(-sequences // config["datasets"][dataset]["sequences_per_shard"])
    return shard_paths(model_tokenizer(config, model), dataset)[:needed]


def subupdate_shards(model):
    """As many shards as the study's predictions need (one per sequence)."""
    return first_shards(model, subupdate_dataset(model), subupdate_study(model)["predictions"])


def steering_dataset(model):
    return config["steering"][model]["dataset"] or model_datasets(config, model)[0]


def steering_shards(model):
    """As many shards as the perplexity's held-out sequences need."""
    return first_shards(model, steering_dataset(model), config["steering"][model]["perplexity_sequences"])


def correlation_blocks(model):
    n = universal_study(model)["blocks"]
    return [f"{i}-{j}" for i in range(n) for j in range(n)]


def study_settings(model):
    """What the correlations depend on (the thresholds of the tables do not rerun them)."""
    return canonical({k: universal_study(model)[k] for k in ("others", "dataset", "blocks", "activation", "drop_newlines")})


def probing_study(model):
    return config["probing"][model]


def probing_datasets(model):
    return probing_study(model)["datasets"] or model_datasets(config, model)[:1]


def probing_shards(model, dataset):
    """The shards a dataset's sequences come from (every shard when `sequences` is null)."""
    sequences = probing_study(model)["sequences"]
    if sequences is None:
        return shard_paths(model_tokenizer(config, model), dataset)
    return first_shards(model, dataset, sequences)


def probing_stores(model):
    """Every sample store the study's sweeps read, dataset by dataset."""
    return [
        f"results/probing/{model}/{dataset}/samples/{Path(shard).name}"
        for dataset in probing_datasets(model) for shard in probing_shards(model, dataset)
    ]


def probing_capture_settings(model, dataset):
    """The model's capture settings, keeping only the samples of the dataset's spans at the study's layers."""
    study = probing_study(model)
    layers = probing_layers(config, model)
    settings = {k: v for k, v in capture_settings(config, model).items() if k not in ("accumulators", "ngram_layers")}
    return settings | {
        "accumulators": ["samples"], "layers": layers, "ngram_layers": layers,
        "sample_spans": f"results/probing/{model}/{dataset}/sample_spans.parquet", "sample_limit": study["sample_limit"],
    }


def atlas_extras(model):
    """The tables of the model's studies that its pages show: universal best matches, sub-updates."""
    extras = {}
    if model in config["universal"]:
        extras["matches"] = f"results/{model}/best_matches.parquet"
    if model in config["subupdates"]:
        extras["subupdates"] = f"results/{model}/subupdates.parquet"
        extras["predictions"] = f"results/{model}/predictions.parquet"
    return extras
