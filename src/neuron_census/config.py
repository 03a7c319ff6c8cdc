"""Config validation with one-line errors, and the resolution of names into concrete specs.

The Snakefile validates the config against `workflow/schemas/config.schema.yaml` at parse time;
defaults written in the schema are filled in. Resolution functions turn the user's names (a model that
was trained by the pipeline, a tokenizer that it trains) into the load specs the package understands.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RESERVED_NAMES = frozenset({"figures", "capture", "tokens", "tokenizers", "train", "report"})


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def _with_defaults(validator_class: type) -> type:
    """A validator that also writes schema defaults into the instance (the jsonschema recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Validate `config` in place (filling defaults) and check cross references; raise ConfigError."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"config error at '{where}': {error.message}")
    _check_references(config)
    return config


def _check_references(config: Mapping[str, Any]) -> None:
    datasets, tokenizers, runs, models = (
        config["datasets"],
        config["tokenizers"],
        config.get("train", {}),
        config["models"],
    )
    for section in ("datasets", "tokenizers", "train", "models"):
        for name in config.get(section, {}):
            if name in RESERVED_NAMES:
                raise ConfigError(f"config error at '{section}.{name}': '{name}' is reserved for a results folder")
    for name, spec in tokenizers.items():
        if spec["source"] == "train_bpe" and spec["dataset"] not in datasets:
            raise ConfigError(f"config error at 'tokenizers.{name}.dataset': unknown dataset '{spec['dataset']}'")
    for name, run in runs.items():
        if run["tokenizer"] not in tokenizers:
            raise ConfigError(f"config error at 'train.{name}.tokenizer': unknown tokenizer '{run['tokenizer']}'")
        for dataset in run["datasets"]:
            if dataset not in datasets:
                raise ConfigError(f"config error at 'train.{name}.datasets': unknown dataset '{dataset}'")
        if max(run["checkpoints"]) != run["steps"]:
            raise ConfigError(f"config error at 'train.{name}.checkpoints': the last checkpoint must be steps={run['steps']}")
    for name, spec in models.items():
        if spec["source"] == "trained":
            run = runs.get(spec["run"])
            if run is None:
                raise ConfigError(f"config error at 'models.{name}.run': unknown train run '{spec['run']}'")
            if spec.get("step") is not None and spec["step"] not in run["checkpoints"]:
                raise ConfigError(
                    f"config error at 'models.{name}.step': {spec['step']} is not a checkpoint of run "
                    f"'{spec['run']}' {run['checkpoints']}"
                )
        elif spec.get("tokenizer") not in tokenizers:
            raise ConfigError(f"config error at 'models.{name}.tokenizer': unknown tokenizer '{spec.get('tokenizer')}'")
    for dataset in config["capture"]["datasets"]:
        if dataset not in datasets:
            raise ConfigError(f"config error at 'capture.datasets': unknown dataset '{dataset}'")
    for dataset in config.get("analysis", {}).get("positional", {}).get("datasets") or []:
        if dataset not in config["capture"]["datasets"]:
            raise ConfigError(
                f"config error at 'analysis.positional.datasets': '{dataset}' is not one of capture.datasets"
            )
    for figure, settings in config.get("figures", {}).items():
        for model in settings.get("models") or []:
            if model not in models:
                raise ConfigError(f"config error at 'figures.{figure}.models': unknown model '{model}'")
        drawn = settings.get("models") or list(models)
        if settings.get("model") is not None and settings["model"] not in drawn:
            raise ConfigError(
                f"config error at 'figures.{figure}.model': '{settings['model']}' is not one of the figure's models {drawn}"
            )


def canonical(value: Any) -> Any:
    """`value` with every mapping's keys sorted, recursively.

    Snakemake compares rule params by their text, so reordering keys in a config file must not look
    like a change; every param that carries a config slice goes through this.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def tokenizer_dir(name: str) -> str:
    return f"results/tokenizers/{name}"


def train_dir(run: str) -> str:
    return f"results/train/{run}"


def resolved_tokenizer_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The load spec of tokenizer `name`; a tokenizer the pipeline trains loads from its results folder."""
    spec = dict(config["tokenizers"][name])
    if spec["source"] == "train_bpe":
        return {"source": "local", "path": tokenizer_dir(name), "bos": spec.get("bos", "auto"), "eos": spec.get("eos", "auto")}
    return spec


def model_tokenizer(config: Mapping[str, Any], model: str) -> str:
    spec = config["models"][model]
    if spec["source"] == "trained":
        return config["train"][spec["run"]]["tokenizer"]
    return spec["tokenizer"]


def resolved_model_spec(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The load spec of `model`; a model the pipeline trains loads from its checkpoint folder."""
    spec = dict(config["models"][model])
    if spec["source"] == "trained":
        run = config["train"][spec["run"]]
        step = spec.get("step") or run["steps"]
        return {"source": "local", "path": f"{train_dir(spec['run'])}/step-{step}"}
    return {k: v for k, v in spec.items() if k not in ("tokenizer", "capture", "resources")}


def capture_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Capture settings of `model`: the global `capture` block with the model's own overrides."""
    base = {k: v for k, v in config["capture"].items() if k != "datasets"}
    return {**base, **config["models"][model].get("capture", {})}


# What the jobs that run a model ask a cluster for unless the config says otherwise (memory in MB, time in
# minutes): enough for models of a few billion parameters.
JOB_RESOURCES: dict[str, dict[str, int]] = {
    "capture": {"mem_mb": 64000, "runtime": 720},
    "vocab_projection": {"mem_mb": 64000, "runtime": 120},
}


def job_resources(config: Mapping[str, Any], model: str, rule: str) -> dict[str, int]:
    """Memory and time of `rule`'s jobs for `model`: the built-in sizes, under the config's `resources`,
    under the model's own `resources`. Kept out of the jobs' params, so changing them reruns nothing."""
    return {
        **JOB_RESOURCES[rule],
        **config.get("resources", {}).get(rule, {}),
        **config["models"][model].get("resources", {}).get(rule, {}),
    }
