"""Where a model's weights live during capture (the activation sources in `sources` drive batches through).

Three strategies give the same activations:

- `resident`: the whole model on the capture device; each batch runs through the network once.
- `offload`: Accelerate's big-model inference. Layers that do not fit `max_memory` on the device stay on
  the CPU or on disk and are streamed to the device when they run, so large batches amortise the copy.
- `layerwise`: the papers' single-GPU method. The embeddings of every batch of the shard are computed first
  and kept (`HiddenStates`); then each decoder layer is moved to the device once and run on all of them, up
  to the last analysed layer. The decoder layers wait in CPU memory, or, with `layerwise_weights: disk`, on
  disk (Accelerate's offload), so that only one layer is ever in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_census.config import schema_defaults

_DEFAULTS = schema_defaults("capture")


@dataclass(frozen=True)
class Placement:
    """How capture places a model: a strategy and its memory budget.

    `max_memory` maps devices ("cpu", 0, "cuda:0") to budgets ("20GiB", bytes) as Accelerate reads them;
    empty means Accelerate's own estimate of what is free. `offload_dir` holds weights that fit nowhere
    (offload, layerwise with `layerwise_weights: disk`) or the kept hidden states (layerwise with
    `layerwise_states: disk`; `cpu` keeps them in CPU memory, `device` on the capture device); None = a
    temporary folder.
    """

    strategy: str = _DEFAULTS["strategy"]
    max_memory: Mapping[str, str | int] = field(default_factory=dict)
    offload_dir: str | None = _DEFAULTS["offload_dir"]
    layerwise_states: str = _DEFAULTS["layerwise_states"]
    layerwise_weights: str = _DEFAULTS["layerwise_weights"]

    def __post_init__(self) -> None:
        choices = {
            "strategy": ("resident", "offload", "layerwise"),
            "layerwise_states": ("cpu", "disk", "device"),
            "layerwise_weights": ("cpu", "disk"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"capture.{key} '{getattr(self, key)}' is not one of {allowed}")

    @property
    def layers_on_disk(self) -> bool:
        """Decoder layers are offloaded to disk and loaded one at a time (layerwise with disk weights)."""
        return self.strategy == "layerwise" and self.layerwise_weights == "disk"

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> Placement:
        """The placement keys of a `capture` block; absent keys keep the schema's defaults."""
        known = {key: settings[key] for key in ("strategy", "offload_dir", "layerwise_states", "layerwise_weights") if key in settings}
        return cls(max_memory=dict(settings.get("max_memory") or {}), **known)


def accelerate_max_memory(budget: Mapping[str, str | int], device: torch.device) -> dict[int | str, str | int]:
    """Accelerate's max_memory keys: GPU indices as ints, "cpu" and "disk" as strings.

    On a CPU capture device GPU budgets are dropped (the CPU is the execution device); on CUDA a
    non-empty budget must name the GPU, or Accelerate would place nothing on it.
    """
    resolved: dict[int | str, str | int] = {}
    for key, value in budget.items():
        text = str(key)
        if text.startswith("cuda"):
            resolved[int(text.partition(":")[2] or 0)] = value
        else:
            resolved[int(text) if text.isdigit() else text] = value
    if device.type == "cpu":
        return {k: v for k, v in resolved.items() if not isinstance(k, int)}
    if resolved and not any(isinstance(k, int) for k in resolved):
        raise ValueError(f"capture.max_memory {dict(budget)} gives the GPU no budget (add e.g. 0: 20GiB)")
    return resolved


@contextmanager
def temporary_folder(parent: str | Path | None, prefix: str = "census-offload-") -> Iterator[Path]:
    """A temporary folder for offloaded weights or kept states, inside `parent` (created if need be) if given."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as tmp:
        yield Path(tmp)


def dispatch_offloaded(
    model: torch.nn.Module, device: torch.device, budget: Mapping[str, str | int], folder: Path,
    *, layers_on_disk: Sequence[str] = (),
) -> dict[str, Any]:
    """Spread `model` over device, CPU and disk within `budget` (Accelerate); returns the device map.

    Decoder layers are never split (the model's `_no_split_modules`). The execution device of everything
    offloaded is `device`; on a CPU-only machine that means weights streamed from disk to CPU memory.
    With `layers_on_disk` (module names) those layers go to disk and everything else to `device`, whatever
    the budget (a model built in memory; the hub/local path does this while reading the checkpoint).
    """
    from accelerate import dispatch_model, infer_auto_device_map

    if layers_on_disk:
        device_map = layers_on_disk_map(model, layers_on_disk, device)
    else:
        max_memory = accelerate_max_memory(budget, device)
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        device_map = infer_auto_device_map(model, max_memory=max_memory or None, no_split_module_classes=no_split)
        if set(device_map.values()) == {"disk"}:
            raise ValueError(f"capture.max_memory {dict(budget)} leaves no room for the model's embeddings; raise it")
    on_device = [place for place in device_map.values() if place not in ("cpu", "disk")]
    main = on_device[0] if on_device else _place(device)
    dispatch_model(model, device_map=device_map, main_device=main, offload_dir=str(folder))
    return device_map


def _place(device: torch.device) -> str | int:
    """`device` as Accelerate's device maps name it."""
    return "cpu" if device.type == "cpu" else (device.index or 0)


def layers_on_disk_map(model: torch.nn.Module, layer_names: Sequence[str], device: torch.device) -> dict[str, Any]:
    """A device map with each decoder layer on "disk" and everything else on `device`.

    Modules are listed down to the layers and no further, so no entry overlaps another (Accelerate and
    Transformers both require that).
    """
    place = _place(device)
    layers = set(layer_names)
    device_map: dict[str, Any] = {}

    def visit(module: torch.nn.Module, prefix: str) -> None:
        if prefix in layers:
            device_map[prefix] = "disk"
            return
        if prefix and not any(name.startswith(f"{prefix}.") for name in layers):
            device_map[prefix] = place
            return
        for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            device_map[f"{prefix}.{name}" if prefix else name] = place
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return device_map


class HiddenStates:
    """The residual stream of every batch between two layers: in CPU memory, a memory-mapped file, or left on
    the capture device (no copies between layers; an OPT-66b shard of 256 x 2048 tokens is 9.7 GB in bfloat16)."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, where: str, folder: Path) -> None:
        self.shapes = list(shapes)
        self._held: list[torch.Tensor | None] = [None] * len(shapes)
        self._offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        # CPU memory or a file: one buffer, batch after batch, each layer's output copied over its input (consumed
        # by now): a new buffer per layer would be fresh memory whose every page faults in again during the copy
        size = int(self._offsets[-1])
        self._flat: torch.Tensor | None = None
        if where == "cpu":
            self._flat = torch.empty(size, dtype=dtype)
        elif where != "device":
            self._flat = torch.from_file(str(folder / "hidden-states.bin"), shared=True, size=size, dtype=dtype)

    def put(self, index: int, hidden: torch.Tensor) -> None:
        if self._flat is None:  # kept on the device: the layer's output itself (the next layer's input)
            self._held[index] = hidden
        else:
            self._flat[self._offsets[index] : self._offsets[index + 1]].copy_(hidden.detach().reshape(-1))

    def get(self, index: int) -> torch.Tensor:
        if self._flat is not None:
            return self._flat[self._offsets[index] : self._offsets[index + 1]].view(self.shapes[index])
        hidden = self._held[index]
        assert hidden is not None
        return hidden


def place_outside_layers(model: torch.nn.Module, layers: torch.nn.ModuleList, device: torch.device) -> None:
    """Everything but the decoder layers onto `device` (embeddings, norms, rotary tables, head).

    Tied weights are one Parameter, so they move once.
    """
    in_layers = {id(tensor) for tensor in (*layers.parameters(), *layers.buffers())}
    for module in model.modules():
        for param in list(module.parameters(recurse=False)):
            if id(param) not in in_layers:
                param.data = param.data.to(device)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if id(buffer) not in in_layers:
                module._buffers[name] = buffer.to(device)


@contextmanager
def layer_on_device(layer: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """`layer` with its weights on `device` for the whole block, then back where they came from.

    A layer in CPU memory is copied there, and afterwards its tensors point at their CPU copies again:
    inference leaves them unchanged, so nothing is copied back. A layer offloaded to disk is loaded once
    (each offloaded submodule's hook loads its weights, then stops reloading them at every call) and
    dropped again afterwards, so a shard's batches share one load and memory holds one layer.
    """
    leaves = [m for m in layer.modules() if getattr(getattr(m, "_hf_hook", None), "offload", False)]
    copies: dict[int, torch.Tensor] = {}  # shared parameters and buffers get one copy, and stay shared
    with ExitStack() as restore:  # undone last to first
        for leaf in leaves:
            leaf._hf_hook.pre_forward(leaf)
            leaf._hf_hook.offload = False
            restore.callback(leaf._hf_hook.post_forward, leaf, None)  # drops the weights, once offload is back on
            restore.callback(setattr, leaf._hf_hook, "offload", True)
        for module in [] if leaves else layer.modules():
            for table in ("_parameters", "_buffers"):
                tensors = getattr(module, table)
                for name, tensor in tensors.items():
                    if tensor is None:
                        continue
                    if id(tensor) not in copies:
                        moved, parameter = tensor.detach().to(device), table == "_parameters"
                        copies[id(tensor)] = torch.nn.Parameter(moved, tensor.requires_grad) if parameter else moved
                    tensors[name] = copies[id(tensor)]
                    restore.callback(tensors.__setitem__, name, tensor)
        yield layer
