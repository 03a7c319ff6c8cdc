"""Config validation at parse time and the name -> spec/path helpers every rule uses."""

import sys
from pathlib import Path

from neuron_census.config import (
    NAME_PATTERN,
    ConfigError,
    canonical,
    capture_settings,
    job_resources,
    model_datasets,
    model_tokenizer,
    resolved_model_spec,
    resolved_tokenizer_spec,
    tokenizer_dir,
    train_dir,
    validate_config,
)
from neuron_census.corpus import TEXT_SOURCES
from neuron_census.jobs import FIGURES as FIGURE_SPECS, TABLE_FILES

try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ConfigError as error:
    sys.exit(f"neuron-census: {error}")

MODELS = list(config["models"])
FIGURES = [figure for figure in FIGURE_SPECS if config["figures"].get(figure, {}).get("draw", True)]  # `all`, report

_name = NAME_PATTERN.strip("^$")


wildcard_constraints:
    model=_name,
    dataset=_name,
    tok=_name,
    run=_name,
    shard=r"\d+",
    figure=_name,


def shard_paths(tok, dataset):
    n = config["datasets"][dataset]["n_shards"]
    return [f"results/tokens/{tok}/{dataset}/shard-{i}.zarr" for i in range(n)]


def previous_text_shard(tok, dataset, shard):
    """The shard before `shard` of a text dataset (its job reads on from where that one ended), else none."""
    if shard == 0 or config["datasets"][dataset]["source"] not in TEXT_SOURCES:
        return []
    return [f"results/tokens/{tok}/{dataset}/shard-{shard - 1}.zarr"]


def tokenizer_inputs(tok):
    """Files a tokenizer is loaded from, so a tokenizer the pipeline trains is built first."""
    spec = config["tokenizers"][tok]
    if spec["source"] == "train_bpe":
        return [tokenizer_dir(tok)]
    if spec["source"] == "local":
        return [spec["path"]]
    if spec["source"] == "gpt2_bpe":
        return ["resources/tokenizers/gpt2_bpe"]
    return []


def model_inputs(model):
    spec = config["models"][model]
    if spec["source"] == "trained":
        return [train_dir(spec["run"])]
    if spec["source"] == "local":
        return [spec["path"]]
    return []


def figure_models(figure):
    return config["figures"].get(figure, {}).get("models") or MODELS


def figure_style(figure):
    return canonical({k: v for k, v in config["figures"].get(figure, {}).items() if k not in ("models", "draw")})


def vocab_settings(model):
    """The vocabulary-projection settings, run where the model's capture runs (device, dtype, strategy)."""
    capture = capture_settings(config, model)
    return {
        **config["analysis"]["vocab"],
        "device": capture["device"],
        "dtype": capture["dtype"],
        "strategy": capture.get("strategy", "resident"),
        "layerwise_weights": capture.get("layerwise_weights", "cpu"),
        "offload_dir": capture.get("offload_dir"),
    }


def figure_tables(figure):
    """Per table kind the figure reads, that table of each of the figure's models, in legend order."""
    return {
        kind: [f"results/{model}/{TABLE_FILES[kind]}" for model in figure_models(figure)]
        for kind in FIGURE_SPECS[figure].tables
    }


def figure_outputs(figure):
    outputs = {
        "png": report(
            f"results/figures/{figure}.png", caption=f"../report/{figure}.rst", category=FIGURE_SPECS[figure].category
        ),
        "pdf": f"results/figures/{figure}.pdf",
    }
    if FIGURE_SPECS[figure].csv is not None:
        outputs["csv"] = f"results/figures/{figure}.csv"
    return outputs
