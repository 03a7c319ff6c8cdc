"""Load one census model from its spec (hub, local folder, random architecture, planted recipe).

Weights are read from safetensors only (never unpickled) and code from a model repository runs only when
the spec sets `trust_remote_code`. The model comes back frozen in eval mode with its FFN adapter; an
unsupported family is refused from its config, before any weights are read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from neuron_census.models.adapters import FFNAdapter, adapter_for, check_model_type
from neuron_census.errors import first_line
from neuron_census.capture.placement import (
    Placement,
    accelerate_max_memory,
    dispatch_layers_to_disk,
    dispatch_offloaded,
    layers_on_disk_map,
)

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


def _local_folder(name: str, spec: Mapping[str, Any], root: Path) -> Path:
    path = Path(_required(name, spec, "path"))
    folder = path if path.is_absolute() else Path(root) / path
    if not folder.is_dir():
        raise FileNotFoundError(f"model '{name}': folder {folder} not found")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model '{name}': {folder} has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"model '{name}': {folder} has no *.safetensors weights (only safetensors are read)")
    return folder


def _remote_code_error(name: str, source: str) -> ValueError:
    return ValueError(
        f"model '{name}' ({source}) needs code from its repository; "
        f"set trust_remote_code: true for it only if you trust that code"
    )


def _from_pretrained(
    name: str,
    source: str,
    revision: str | None,
    trust_remote_code: bool,
    device: torch.device,
    dtype: torch.dtype,
    offload: tuple[dict[int | str, str | int], Path] | None = None,
    layers_to_disk: Path | None = None,
) -> PreTrainedModel:
    """Raw config first (refuses unsupported families and unallowed remote code cheaply), then safetensors weights.

    With `offload` = (max_memory, folder), Accelerate places the weights as they are read, so a model larger
    than the device (or the CPU) is never materialised whole. With `layers_to_disk` (a folder) every decoder
    layer goes to disk as it is read and the rest to `device`: memory never holds more than one layer.
    """
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
    placement: dict[str, Any] = {"device_map": device}
    if offload is not None:
        max_memory, folder = offload
        placement = {"device_map": "auto", "max_memory": max_memory or None, "offload_folder": str(folder)}
    elif layers_to_disk is not None:
        from accelerate import init_empty_weights

        with init_empty_weights():  # the module names, without weights
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        device_map = layers_on_disk_map(skeleton, decoder_layer_names(skeleton, name), device)
        placement = {"device_map": device_map, "offload_folder": str(layers_to_disk)}
    if Path(source).is_dir():
        check_safetensors_files(name, Path(source))
    try:
        with transformers_errors_only():  # its load report is replaced by the one line below
            model, info = AutoModelForCausalLM.from_pretrained(
                source,
                config=config,
                revision=revision,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, with the shapes, instead of raised
                **placement,
            )
    except OSError as error:  # e.g. a repository with pickled (.bin) weights only: they are never read
        raise ValueError(f"model '{name}': cannot load safetensors weights of {source}: {first_line(error)}") from None
    except Exception as error:  # safetensors and torch raise their own types for damaged files
        raise ValueError(f"model '{name}': cannot load the weights of {source}: {first_line(error)}") from None
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


def check_safetensors_files(name: str, folder: Path) -> None:
    """Open every safetensors file's header, so a truncated or damaged file is named before anything loads
    (the library's own error names no file)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError, OSError
            raise ValueError(f"model '{name}': {path} is not a readable safetensors file ({first_line(error)})") from None


@contextmanager
def transformers_errors_only() -> Iterator[None]:
    """transformers' logging at error level for the duration (its load report would repeat our message)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _build(
    name: str,
    spec: Mapping[str, Any],
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
    offload: tuple[dict[int | str, str | int], Path] | None = None,
    layers_to_disk: Path | None = None,
) -> PreTrainedModel:
    source = spec.get("source")
    trust = bool(spec.get("trust_remote_code", False))
    if source == "hub":
        source_id, revision = _required(name, spec, "id"), spec.get("revision")
        return _from_pretrained(name, source_id, revision, trust, device, dtype, offload, layers_to_disk)
    if source == "local":
        folder = _local_folder(name, spec, root)
        return _from_pretrained(name, str(folder), None, trust, device, dtype, offload, layers_to_disk)
    if source == "random":
        from neuron_census.models.zoo import build_random_model

        return build_random_model(
            _required(name, spec, "architecture"),
            seed=int(spec.get("seed", 0)),
            n_layers=spec.get("n_layers"),
            dtype=dtype,
            device=device,
        )
    if source == "planted":
        from neuron_census.testing.planted import build_planted_model

        model = build_planted_model(_required(name, spec, "recipe"))
        return model.to(device=device, dtype=dtype)
    hint = ""
    if source == "trained":
        hint = " (resolve 'trained' to 'local' with neuron_census.config.resolved_model_spec)"
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
    `placement.max_memory` (offload).
    """
    placement = placement or Placement()
    target = torch.device(device)
    if offload_dir is None and (placement.strategy == "offload" or placement.layers_on_disk):
        raise ValueError(f"model '{name}': {placement.strategy} needs a folder for the weights it keeps on disk")
    if placement.strategy == "resident":
        model = _build(name, spec, Path(root), target, dtype)
    elif placement.layers_on_disk and spec.get("source") in ("hub", "local"):
        model = _build(name, spec, Path(root), target, dtype, layers_to_disk=Path(offload_dir))
    elif placement.layers_on_disk:
        model = _build(name, spec, Path(root), torch.device("cpu"), dtype)
        dispatch_layers_to_disk(model, decoder_layer_names(model, name), target, Path(offload_dir))
    elif placement.strategy == "layerwise":
        model = _build(name, spec, Path(root), torch.device("cpu"), dtype)
    else:
        offload = (accelerate_max_memory(placement.max_memory, target), Path(offload_dir))
        if spec.get("source") in ("hub", "local"):
            model = _build(name, spec, Path(root), target, dtype, offload)
        else:
            model = _build(name, spec, Path(root), torch.device("cpu"), dtype)
            dispatch_offloaded(model, target, placement.max_memory, Path(offload_dir))
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model, adapter=adapter_for(model, name=name))


def decoder_layer_names(model: torch.nn.Module, name: str) -> list[str]:
    """Module names of the decoder layers (e.g. model.decoder.layers.0), as device maps name them."""
    layers = adapter_for(model, name=name).decoder_layers()
    prefix = next(module_name for module_name, module in model.named_modules() if module is layers)
    return [f"{prefix}.{index}" for index in range(len(layers))]
