"""Load one census model from its spec (hub, local folder, random architecture, planted recipe).

Weights are read from safetensors only (never unpickled) and code from a model repository runs only when
the spec sets `trust_remote_code`. The model comes back frozen in eval mode with its FFN adapter; an
unsupported family is refused from its config, before any weights are read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import logging as hf_logging

from neuron_census.capture.placement import Placement, accelerate_max_memory, dispatch_offloaded, layers_on_disk_map
from neuron_census.errors import first_line
from neuron_census.models.adapters import FFNAdapter, adapter_for, check_model_type

SOURCES = ("hub", "local", "random", "planted")


@dataclass
class LoadedModel:
    """A frozen causal LM with the adapter that locates its FFN neurons."""

    name: str
    model: PreTrainedModel
    adapter: FFNAdapter


def _required(name: str, spec: Mapping[str, Any], key: str) -> Any:
    if spec.get(key) in (None, ""):
        raise ValueError(f"model '{name}': source '{spec['source']}' needs key '{key}'")
    return spec[key]


def _remote_code_error(name: str, source: str) -> ValueError:
    return ValueError(
        f"model '{name}' ({source}) needs code from its repository; "
        f"set trust_remote_code: true for it only if you trust that code"
    )


def _from_pretrained(
    name: str,
    spec: Mapping[str, Any],
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
    placement: Placement,
    folder: Path | None,
) -> PreTrainedModel:
    """A hub or local checkpoint: raw config first (refuses unsupported families and unallowed remote code
    cheaply), then safetensors weights, placed as they are read (so that under offload, or with layers on
    disk, a model larger than memory is never materialised whole)."""
    revision = None
    if spec["source"] == "hub":
        source, revision = _required(name, spec, "id"), spec.get("revision")
    else:
        path = Path(_required(name, spec, "path"))
        local = path if path.is_absolute() else root / path
        if not local.is_dir():
            raise FileNotFoundError(f"model '{name}': folder {local} not found")
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model '{name}': {local} has no config.json")
        if not any(local.glob("*.safetensors")):
            raise FileNotFoundError(f"model '{name}': {local} has no *.safetensors weights (only safetensors are read)")
        source = str(local)
    trust_remote_code = bool(spec.get("trust_remote_code", False))
    try:
        raw, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    except (OSError, ValueError) as error:  # unknown id, no network, no config.json, malformed id
        raise ValueError(f"model '{name}': cannot read the config of {source}: {first_line(error)}") from None
    model_type = raw.get("model_type")
    if "auto_map" in raw and model_type not in CONFIG_MAPPING and not trust_remote_code:
        raise _remote_code_error(name, source)
    check_model_type(model_type, name)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise _remote_code_error(name, source) from error
        raise
    if placement.strategy == "offload":
        max_memory = accelerate_max_memory(placement.max_memory, device) or None
        where: dict[str, Any] = {"device_map": "auto", "max_memory": max_memory, "offload_folder": str(folder)}
    elif placement.layers_on_disk:
        from accelerate import init_empty_weights

        with init_empty_weights():  # the module names, without weights
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        device_map = layers_on_disk_map(skeleton, decoder_layer_names(skeleton, name), device)
        where = {"device_map": device_map, "offload_folder": str(folder)}
    else:  # resident on the device; layerwise on the CPU (it moves each layer to the device itself)
        where = {"device_map": device if placement.strategy == "resident" else torch.device("cpu")}
    for path in sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else ():
        try:  # open each header, so that a damaged file is named (the library's own error names none)
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError, OSError
            raise ValueError(f"model '{name}': {path} is not a readable safetensors file ({first_line(error)})") from None
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' load report is replaced by the one line below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source, config=config, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True,
            dtype=dtype, output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below, with the shapes, instead of raised
            **where,
        )
    except OSError as error:  # e.g. a repository with pickled (.bin) weights only: they are never read
        raise ValueError(f"model '{name}': cannot load safetensors weights of {source}: {first_line(error)}") from None
    except Exception as error:  # safetensors and torch raise their own types for damaged files
        raise ValueError(f"model '{name}': cannot load the weights of {source}: {first_line(error)}") from None
    finally:
        hf_logging.set_verbosity(previous)
    check_loading_info(name, source, info)
    return model


# Buffers that older checkpoints carry and transformers recomputes: reading past them loses no weight.
HARMLESS_UNEXPECTED = (".attn.masked_bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


def check_loading_info(name: str, source: str, info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint that does not hold exactly the tensors its config describes: a missing tensor would
    be randomly initialised and analysed as if trained, an unexpected one belongs to another architecture."""
    problems = []
    mismatched = sorted(info.get("mismatched_keys") or (), key=str)
    if mismatched:
        key, stored, expected = mismatched[0]
        problems.append(f"{len(mismatched)} tensor(s) of other shapes than config.json gives ({key}: {list(stored)} "
                        f"stored, {list(expected)} expected)")
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(key for key in info.get("unexpected_keys") or () if not key.endswith(HARMLESS_UNEXPECTED))
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{kind} tensor(s) {', '.join(keys[:3])}{more}")
    if info.get("error_msgs"):
        problems.append(first_line(Exception(info["error_msgs"][0])))
    if problems:
        raise ValueError(f"model '{name}': the weights of {source} do not match its config: {'; '.join(problems)}")


def _build(name: str, spec: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A model built in memory: a random architecture or a planted recipe."""
    source = spec.get("source")
    if source == "random":
        from neuron_census.models.zoo import build_random_model

        architecture, seed = _required(name, spec, "architecture"), int(spec.get("seed", 0))
        return build_random_model(architecture, seed=seed, n_layers=spec.get("n_layers"), dtype=dtype, device=device)
    if source == "planted":
        from neuron_census.testing.planted import build_planted_model

        model = build_planted_model(_required(name, spec, "recipe"))
        return model.to(device=device, dtype=dtype)
    hint = " (resolve 'trained' to 'local' with neuron_census.config.resolved_model_spec)" if source == "trained" else ""
    raise ValueError(f"model '{name}': unknown source '{source}'{hint}; expected one of {', '.join(SOURCES)}")


def load_model(
    name: str,
    spec: Mapping[str, Any],
    *,
    root: Path = Path("."),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    placement: Placement | None = None,
    offload_dir: Path | None = None,
) -> LoadedModel:
    """Load model `name` from `spec` (see config/README.md, `models.<name>`), frozen, in eval mode.

    `placement` (default resident) decides where the weights go: all on `device` (resident), on the CPU
    (layerwise moves layers to the device itself), decoder layers in `offload_dir` and the rest on `device`
    (layerwise with disk weights), or spread by Accelerate over device, CPU and `offload_dir` within
    `placement.max_memory` (offload). Checkpoints are placed as they are read; a model built in memory is
    built on the CPU (unless resident) and then placed.
    """
    placement = placement or Placement()
    target = torch.device(device)
    if offload_dir is None and (placement.strategy == "offload" or placement.layers_on_disk):
        raise ValueError(f"model '{name}': {placement.strategy} needs a folder for the weights it keeps on disk")
    folder = None if offload_dir is None else Path(offload_dir)
    if spec.get("source") in ("hub", "local"):
        model = _from_pretrained(name, spec, Path(root), target, dtype, placement, folder)
    else:
        model = _build(name, spec, target if placement.strategy == "resident" else torch.device("cpu"), dtype)
        if placement.layers_on_disk or placement.strategy == "offload":
            on_disk = decoder_layer_names(model, name) if placement.layers_on_disk else ()
            dispatch_offloaded(model, target, placement.max_memory, folder, layers_on_disk=on_disk)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model, adapter=adapter_for(model, name=name))


def decoder_layer_names(model: torch.nn.Module, name: str) -> list[str]:
    """Module names of the decoder layers (e.g. model.decoder.layers.0), as device maps name them."""
    adapter = adapter_for(model, name=name)
    return [f"{adapter.layers_path}.{index}" for index in range(adapter.n_layers)]
