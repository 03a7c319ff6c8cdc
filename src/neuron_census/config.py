"""Config validation with one-line errors, and the resolution of names into concrete specs.

The Snakefile validates the config against `workflow/schemas/config.schema.yaml` at parse time;
defaults written in the schema are filled in. Resolution functions turn the user's names (a model that
was trained by the pipeline, a tokenizer that it trains) into the load specs the package understands.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import operator
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

RESERVED_NAMES = frozenset({"figures", "capture", "tokens", "tokenizers", "train", "report"})
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the schema 8x faster, in every job


def _read_schema(path: str | Path) -> dict[str, Any]:
    return yaml.load(Path(path).read_text(), Loader=_SAFE_LOADER)


@functools.cache
def schema() -> dict[str, Any]:
    """The package's config schema (read once; not to be changed)."""
    return _read_schema(SCHEMA)


def schema_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of a section's keys: `capture`, `analysis/detectors`, or a definition's
    (`$defs/dataset`). The schema is the one place defaults are written."""
    first, *rest = section.removeprefix("$defs/").split("/")
    node = schema()["$defs"][first] if section.startswith("$defs/") else schema()["properties"][first]
    for part in rest:
        node = node["properties"][part]
    properties = node.get("properties", {})
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def definition_default(name: str) -> Any:
    """The default of a shared definition (`$defs/bos`), which properties take by `$ref` and the validator
    does not fill in (it fills a default written on the property itself)."""
    return copy.deepcopy(schema()["$defs"][name]["default"])


def default_field(defaults: Mapping[str, Any], key: str) -> Any:
    """A dataclass field whose default is `defaults[key]` (from `schema_defaults`): a list becomes a tuple."""
    value = defaults[key]
    return dataclasses.field(default_factory=lambda: tuple(value)) if isinstance(value, list) else value


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
    schema = with_figures(_read_schema(schema_path))
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    _type_command_line_values(config, validator)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"config error at '{where}': {error.message}")
    _check_repeats(config)
    _expand_seeds(config)
    _check_references(config)
    _check_universal(config)
    _check_subupdates(config)
    _check_steering(config)
    _check_probing(config)
    _check_atlas(config)
    _check_models(config)
    return config


def with_figures(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with one `figures.<figure>` entry (a figure_style, default {}) per registered figure: a new
    figure is registered once, in `plots.registry.FIGURES`, and the config accepts its style."""
    from neuron_census.plots.registry import FIGURES

    schema["properties"]["figures"]["properties"] = {name: {"$ref": "#/$defs/figure_style", "default": {}} for name in FIGURES}
    return schema


def _type_errors(errors: Any) -> Iterator[Any]:
    """Every 'type' error, also those inside oneOf/anyOf alternatives."""
    for error in errors:
        if error.validator == "type":
            yield error
        yield from _type_errors(error.context or ())


def _type_command_line_values(config: dict[str, Any], validator: Any) -> None:
    """Give strings the type the schema asks for where they parse as YAML of that type.

    Snakemake reads `--config key='{a: 8}'` with YAML's BaseLoader, which keeps every nested scalar a
    string ('8', 'true', '[1, 2]' inside a list stays '1'): only values the schema refuses as strings are
    parsed again, so a title such as '2048' stays text."""
    for _ in range(8):  # each pass types what the last one exposed (a string list inside a oneOf)
        changed = False
        for error in _type_errors(validator.iter_errors(config)):
            if not isinstance(error.instance, str) or not error.absolute_path:
                continue
            try:
                value = yaml.safe_load(error.instance)
            except yaml.YAMLError:
                continue
            kinds = error.validator_value  # one type name or a list of them
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if isinstance(value, str) or not any(validator.is_type(value, kind) for kind in kinds):
                continue
            *parents, last = error.absolute_path
            holder = functools.reduce(operator.getitem, parents, config)
            if holder[last] == error.instance:
                holder[last] = value
                changed = True
        if not changed:
            return


def _known(where: str, names: Any, known: Mapping[str, Any], what: str) -> None:
    """Refuse a reference (one name or a list of them) to something the config does not define."""
    for name in names if isinstance(names, list) else [names]:
        if name not in known:
            raise ConfigError(f"config error at '{where}': unknown {what} '{name}'")


def _expand_seeds(config: dict[str, Any]) -> None:
    """A train run with `seeds: [0, 1, 2]` becomes runs `<run>-seed0`, ... that differ only in their seed."""
    runs = config.get("train", {})
    for run in runs.values():
        if "seeds" not in run:
            run.setdefault("seed", 0)
    for name in [name for name, run in runs.items() if "seeds" in run]:
        run = runs.pop(name)
        for seed in dict.fromkeys(run.pop("seeds")):
            seeded = f"{name}-seed{seed}"
            if seeded in runs:
                raise ConfigError(f"config error at 'train.{name}.seeds': run '{seeded}' is also configured")
            runs[seeded] = {**run, "seed": seed}


def _check_universal(config: Mapping[str, Any]) -> None:
    """Every model of a universal-neurons study is configured and reads the reference's tokenizer."""
    models = config["models"]
    for reference, study in config.get("universal", {}).items():
        where, others = f"universal.{reference}", study["others"]
        _known(where, reference, models, "model")
        _known(f"{where}.others", others, models, "model")
        if reference in others or len(set(others)) != len(others):
            raise ConfigError(f"config error at '{where}.others': the other models must differ from '{reference}' and each other")
        _known(f"{where}.dataset", study.get("dataset") or [], config["datasets"], "dataset")
        tokenizer = model_tokenizer(config, reference)
        for other in others:
            if (other_tokenizer := model_tokenizer(config, other)) != tokenizer:
                raise ConfigError(
                    f"config error at '{where}.others': models '{reference}' and '{other}' have different tokenizers "
                    f"('{tokenizer}', '{other_tokenizer}'); their neurons must read the same tokens"
                )


def _check_subupdates(config: Mapping[str, Any]) -> None:
    """Every model of a sub-update study is configured, as is its dataset; early exit compares at most the
    dominant sub-updates kept."""
    for model, study in config.get("subupdates", {}).items():
        _known("subupdates", model, config["models"], "model")
        _known(f"subupdates.{model}.dataset", study.get("dataset") or [], config["datasets"], "dataset")
        if (study["early_exit"]["top"] or 0) > study["top"]:
            raise ConfigError(
                f"config error at 'subupdates.{model}.early_exit.top': {study['early_exit']['top']} is more than the {study['top']} dominant sub-updates kept (top)"
            )


def _check_steering(config: Mapping[str, Any]) -> None:
    """Every steered model is configured, as is its dataset, and names neurons or a concept."""
    for model, study in config.get("steering", {}).items():
        _known("steering", model, config["models"], "model")
        _known(f"steering.{model}.dataset", study.get("dataset") or [], config["datasets"], "dataset")
        if not study["values"] and not study["concept"]:
            raise ConfigError(f"config error at 'steering.{model}': name the neurons to set (values) or a concept (a word list)")
        scorer = study["scorer"]
        if scorer["name"] == "lexicon" and not (scorer.get("words") or study["concept"]):
            raise ConfigError(f"config error at 'steering.{model}.scorer': the lexicon scorer needs words (or a concept to take them from)")


def _check_probing(config: Mapping[str, Any]) -> None:
    """Every probed model is configured, as is its dataset; a source belongs to a group once; a group is not
    named as a built-in feature family."""
    from neuron_census.analyses.probe_features import BUILT_IN_FAMILIES

    for model, study in config.get("probing", {}).items():
        _known("probing", model, config["models"], "model")
        _known(f"probing.{model}.datasets", study["datasets"], config["datasets"], "dataset")
        for group, sources in (study.get("groups") or {}).items():
            if len(set(sources)) != len(sources):
                raise ConfigError(f"config error at 'probing.{model}.groups.{group}': {sources} repeat a source")
            if group in BUILT_IN_FAMILIES:
                raise ConfigError(f"config error at 'probing.{model}.groups.{group}': '{group}' names a built-in feature family {list(BUILT_IN_FAMILIES)}")
        layers = probing_layers(config, model)
        shape = model_shape(config, model)
        if shape is not None and any(layer >= shape[0] for layer in layers):
            raise ConfigError(f"config error at 'probing.{model}.layers': model '{model}' has layers 0..{shape[0] - 1}, not {layers}")


def _check_atlas(config: Mapping[str, Any]) -> None:
    """An atlas is of a model with tables (a census model)."""
    for model in config["atlas"]["models"] or []:
        _known("atlas.models", model, config["models"], "model")
        if not config["models"][model].get("census", definition_default("census")):
            raise ConfigError(f"config error at 'atlas.models': model '{model}' has census: false, so no tables for an atlas")


def probing_layers(config: Mapping[str, Any], model: str) -> list[int]:
    """The layers a probing study probes: its own `layers`, else the model's listed capture layers, else every
    layer where the config tells the model's depth; a ConfigError where nothing does (hub models)."""
    layers = config["probing"][model].get("layers") or capture_settings(config, model)["layers"]
    if isinstance(layers, list):
        return sorted({int(layer) for layer in layers})
    shape = model_shape(config, model)
    if shape is None:
        raise ConfigError(f"config error at 'probing.{model}.layers': name the layers to probe (the config alone does not tell the depth of model '{model}')")
    return list(range(shape[0]))


def _check_references(config: Mapping[str, Any]) -> None:
    datasets, tokenizers, models = config["datasets"], config["tokenizers"], config["models"]
    runs = config.get("train", {})
    for section in ("datasets", "tokenizers", "train", "models"):
        for name in config.get(section, {}):
            if name in RESERVED_NAMES:
                raise ConfigError(f"config error at '{section}.{name}': '{name}' is reserved for a results folder")
    for name, spec in tokenizers.items():
        if spec["source"] == "train_bpe":
            _known(f"tokenizers.{name}.dataset", spec["dataset"], datasets, "dataset")
    for name, run in runs.items():
        _known(f"train.{name}.tokenizer", run["tokenizer"], tokenizers, "tokenizer")
        _known(f"train.{name}.datasets", run["datasets"], datasets, "dataset")
        if max(run["checkpoints"]) != run["steps"]:
            raise ConfigError(f"config error at 'train.{name}.checkpoints': the last checkpoint must be steps={run['steps']}")
    for name, spec in models.items():
        if spec["source"] != "trained":
            _known(f"models.{name}.tokenizer", spec.get("tokenizer"), tokenizers, "tokenizer")
            continue
        _known(f"models.{name}.run", spec["run"], runs, "train run")
        if spec.get("step") is not None and spec["step"] not in runs[spec["run"]]["checkpoints"]:
            raise ConfigError(
                f"config error at 'models.{name}.step': {spec['step']} is not a checkpoint of run "
                f"'{spec['run']}' {runs[spec['run']]['checkpoints']}"
            )
    _known("capture.datasets", config["capture"]["datasets"], datasets, "dataset")
    for name, spec in models.items():
        _known(f"models.{name}.capture.datasets", spec.get("capture", {}).get("datasets") or [], datasets, "dataset")
    captured = {dataset for model in models for dataset in model_datasets(config, model)}
    for dataset in config.get("analysis", {}).get("positional", {}).get("datasets") or []:
        if dataset not in captured:
            raise ConfigError(
                f"config error at 'analysis.positional.datasets': '{dataset}' is not one of capture.datasets"
            )
    for figure, settings in config.get("figures", {}).items():
        _known(f"figures.{figure}.models", settings.get("models") or [], models, "model")
        drawn = settings.get("models") or list(models)
        if settings.get("model") is not None and settings["model"] not in drawn:
            raise ConfigError(
                f"config error at 'figures.{figure}.model': '{settings['model']}' is not one of the figure's models {drawn}"
            )


def _repeated_items(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every list of names or numbers a user writes, by where it is."""
    for key in ("datasets", "layers", "ngram_layers"):
        yield f"capture.{key}", config["capture"].get(key)
    for name, spec in config["models"].items():
        for key in ("datasets", "layers", "ngram_layers"):
            yield f"models.{name}.capture.{key}", spec.get("capture", {}).get(key)
    for name, run in config.get("train", {}).items():
        yield f"train.{name}.datasets", run.get("datasets")
        yield f"train.{name}.checkpoints", run.get("checkpoints")
    yield "analysis.positional.datasets", config.get("analysis", {}).get("positional", {}).get("datasets")
    for figure, settings in config.get("figures", {}).items():
        yield f"figures.{figure}.models", settings.get("models")


def _check_repeats(config: Mapping[str, Any]) -> None:
    """A name listed twice is a mistake that costs: a training dataset would be trained on twice."""
    for where, items in _repeated_items(config):
        repeated = [item for i, item in enumerate(items) if item in items[:i]] if isinstance(items, list) else []
        if repeated:
            raise ConfigError(f"config error at '{where}': {repeated[0]!r} is listed twice")


def model_datasets(config: Mapping[str, Any], model: str) -> list[str]:
    """The datasets `model` is captured on: its own `capture.datasets`, else the global ones."""
    return list(config["models"][model].get("capture", {}).get("datasets") or config["capture"]["datasets"])


def _capture_key(config: Mapping[str, Any], model: str, key: str) -> str:
    """Where a model's capture setting comes from: its own override, or the global block."""
    return f"models.{model}.capture.{key}" if key in config["models"][model].get("capture", {}) else f"capture.{key}"


def model_shape(config: Mapping[str, Any], model: str) -> tuple[int, int] | None:
    """(layers, context positions) of `model` where the config alone tells them (trained runs, planted recipes,
    a local folder's config.json); None for hub and random models, whose jobs check the same at load time."""
    spec = config["models"][model]
    if spec["source"] == "trained":
        run = config["train"][spec["run"]]
        return int(run["n_layers"]), int(run["max_positions"])
    if spec["source"] == "planted":
        from neuron_census.testing.planted import planted_shape

        try:
            return planted_shape(spec["recipe"])
        except ValueError as error:
            raise ConfigError(f"config error at 'models.{model}.recipe': {error}") from None
    if spec["source"] != "local":
        return None
    try:  # a config.json under any family's key names; one that cannot be read, the job loading the model reports
        raw = json.loads((Path(spec["path"]) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    layers = next((raw[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(raw.get(k), int)), None)
    context = next((raw[k] for k in ("max_position_embeddings", "n_positions") if isinstance(raw.get(k), int)), None)
    return (layers, context) if layers is not None and context is not None else None


def _check_models(config: Mapping[str, Any]) -> None:
    """What the config alone shows about each model's captures: one sequence length across its datasets, that
    length within its context, analysed layers within its depth, and n-gram layers among the analysed ones."""
    positional = config.get("analysis", {}).get("positional", {}).get("datasets")
    for model in config["models"]:
        datasets = model_datasets(config, model)
        where = _capture_key(config, model, "datasets")
        lengths = {dataset: config["datasets"][dataset]["seq_len"] for dataset in datasets}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{d}: {n}" for d, n in lengths.items())
            raise ConfigError(f"config error at '{where}': model '{model}' would capture datasets of different seq_len ({listed}); give them one")
        if positional and not set(positional) & set(datasets):
            raise ConfigError(
                f"config error at 'analysis.positional.datasets': model '{model}' captures none of {positional}"
            )
        settings = capture_settings(config, model)
        if settings["accumulator_options"]:  # each declares its options; the registry imports torch, so only if set
            from neuron_census.accumulators.base import check_options

            try:
                check_options(settings["accumulator_options"])
            except ValueError as error:
                where = _capture_key(config, model, "accumulator_options")
                raise ConfigError(f"config error at '{where}': {error}") from None
        shape = model_shape(config, model)
        layers, ngram_layers = settings["layers"], settings["ngram_layers"]  # the schema's defaults filled in
        if shape is not None:
            n_layers, context = shape
            seq_len = next(iter(lengths.values()))
            if seq_len > context:
                raise ConfigError(
                    f"config error at 'datasets.{datasets[0]}.seq_len': {seq_len} tokens exceed model '{model}' "
                    f"context of {context} positions"
                )
            outside = [layer for layer in layers if layer >= n_layers] if isinstance(layers, list) else []
            if outside:
                raise ConfigError(
                    f"config error at '{_capture_key(config, model, 'layers')}': model '{model}' has layers "
                    f"0..{n_layers - 1}, not {outside}"
                )
        if isinstance(ngram_layers, list):
            analysed = layers if isinstance(layers, list) else None if shape is None else list(range(shape[0]))
            outside = [layer for layer in ngram_layers if analysed is not None and layer not in analysed]
            if outside:
                described = f"layers {layers}" if isinstance(layers, list) else f"all {shape[0]} layers"
                raise ConfigError(
                    f"config error at '{_capture_key(config, model, 'ngram_layers')}': layers {outside} are not analysed "
                    f"for model '{model}' (capture.layers: {described}); their n-gram columns would be empty"
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
        roles = {role: spec.get(role, definition_default(role)) for role in ("bos", "eos")}
        return {"source": "local", "path": tokenizer_dir(name), **roles}
    return spec


def model_tokenizer(config: Mapping[str, Any], model: str) -> str:
    spec = config["models"][model]
    return config["train"][spec["run"]]["tokenizer"] if spec["source"] == "trained" else spec["tokenizer"]


def resolved_model_spec(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The load spec of `model`; a model the pipeline trains loads from its checkpoint folder."""
    spec = dict(config["models"][model])
    if spec["source"] == "trained":
        run = config["train"][spec["run"]]
        step = spec.get("step") or run["steps"]
        return {"source": "local", "path": f"{train_dir(spec['run'])}/step-{step}"}
    return {k: v for k, v in spec.items() if k not in ("tokenizer", "capture", "resources", "label", "census")}


def model_label(config: Mapping[str, Any], model: str) -> str:
    """How figures and captions name `model`: its `label`, else its name, said to be built in code for a
    planted model (so no reader takes its clean findings for a trained model's)."""
    spec = config["models"][model]
    if spec.get("label"):
        return str(spec["label"])
    return f"{model} (built in code, known neurons)" if spec["source"] == "planted" else model


def capture_settings(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Capture settings of `model`: the global `capture` block with the model's own overrides."""
    merged = {**config["capture"], **config["models"][model].get("capture", {})}
    return {k: v for k, v in merged.items() if k != "datasets"}


# What the jobs that run a model ask a cluster for unless the config says otherwise (memory in MB, time in
# minutes): enough for models of a few billion parameters.
JOB_RESOURCES: dict[str, dict[str, int]] = {
    "capture": {"mem_mb": 64000, "runtime": 720},
    "vocab_projection": {"mem_mb": 64000, "runtime": 120},
}


def job_threads(config: Mapping[str, Any], model: str | None = None) -> int:
    """CPU threads of every job that runs `model` (or trains one, `model` None): the model's
    `resources.threads`, else the config's, else 8. Kept out of the jobs' params, so changing them reruns
    nothing; Snakemake caps them at `--cores`."""
    own = config["models"][model].get("resources", {}).get("threads") if model is not None else None
    return own or config.get("resources", {}).get("threads") or 8


def job_resources(config: Mapping[str, Any], model: str, rule: str) -> dict[str, int]:
    """Memory and time of `rule`'s jobs for `model`: the built-in sizes, under the config's `resources`,
    under the model's own `resources`. Kept out of the jobs' params, so changing them reruns nothing."""
    return {
        **JOB_RESOURCES[rule],
        **config.get("resources", {}).get(rule, {}),
        **config["models"][model].get("resources", {}).get(rule, {}),
    }
