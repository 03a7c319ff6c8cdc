"""Activation sources: one model (or several in lockstep) run over a token shard, layer by layer.

A source yields `LayerActivations`, one analysed layer of one batch at a time. Hooks only hand tensors out.
Each batch is embedded by the model's own forward pass, stopped at the first decoder layer, then the decoder
layers are called one by one up to the last analysed layer (whose FFN output projection is skipped), so later
layers and the LM head never run. `resident` (also under `offload`) runs batch after batch; `layerwise` embeds
every batch, then runs each layer once over all of them; `paired` zips several models' sources in lockstep.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_census.capture.placement import HiddenStates, layer_on_device, place_outside_layers, temporary_folder


class StopForward(Exception):
    """Raised from a hook to skip the rest of a forward pass."""


@dataclass(frozen=True)
class TokenBatch:
    """One batch of a shard, as every layer of every model sees it."""

    index: int
    tokens: torch.Tensor  # [B, T] int64 on the capture device
    seq_ids: torch.Tensor  # [B] int64 global sequence ids
    mask: torch.Tensor  # [B, T] bool: counted positions (False at BOS)
    first_seq: int  # seq_ids[0], on the host
    counted_from: int  # mask is exactly "position >= counted_from"
    last: bool  # the shard's last batch


@dataclass(frozen=True)
class LayerActivations:
    batch: TokenBatch
    layer: int
    acts: torch.Tensor  # [B, T, N] on the capture device
    preacts: torch.Tensor | None  # [B, T, N] gate output of a gated FFN, when the fire rule reads it; or the
    # nonlinearity's input (`ModelSteps(preacts="preactivation")`, as paired statistics may ask)
    acts_flat: torch.Tensor | None = None  # [B*T, N] float32, when the hook handed them out so (OPT)


@dataclass(frozen=True)
class PairedActivations:
    """One (layer, batch) of several models over the same tokens: activations by model name."""

    batch: TokenBatch
    layer: int
    acts: Mapping[str, torch.Tensor]
    preacts: Mapping[str, torch.Tensor | None]


def token_batches(
    tokens: np.ndarray, batch_size: int, first_seq_id: int, has_bos: bool, device: torch.device
) -> list[TokenBatch]:
    """The shard's batches, in order, their tokens on `device`."""
    all_tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    counted_from = 1 if has_bos else 0
    batches = []
    starts = range(0, len(tokens), batch_size)
    for index, start in enumerate(starts):
        rows = all_tokens[start : start + batch_size].to(device)
        mask = torch.ones_like(rows, dtype=torch.bool)
        mask[:, :counted_from] = False
        first = first_seq_id + start
        seq_ids = torch.arange(first, first + len(rows), device=device)
        batches.append(TokenBatch(index, rows, seq_ids, mask, first, counted_from, index == len(starts) - 1))
    return batches


class ModelSteps:
    """One model driven a decoder layer at a time, with hooks that hand each analysed layer's activations out.

    `embed` runs the model's forward pass until the first decoder layer and returns that layer's input and
    keyword arguments (causal mask, positions, rotary tables: sequences are never padded, so they depend on
    the batch shape alone); `layer` calls one decoder layer and returns its output and, for an analysed
    layer, its activations.
    """

    def __init__(
        self, model: torch.nn.Module, adapter: Any, layers: Sequence[int], device: torch.device, *, name: str,
        preacts: str | None = None,
    ) -> None:
        if device.type == "cuda" and device.index is None:  # the device tensors name: `cuda` is the current one
            device = torch.device("cuda", torch.cuda.current_device())
        self.model, self.adapter, self.device, self.name = model, adapter, device, name
        self.layers, self.last = frozenset(layers), layers[-1]
        # what `preacts` hold: "gate" the gate output of a gated FFN (None for others), "preactivation" the
        # nonlinearity's input, None nothing
        self.read_preacts = {"gate": adapter.gate_output_module, "preactivation": adapter.preactivation_module}.get(preacts)
        self.decoder = adapter.decoder_layers()
        self._acts: dict[int, torch.Tensor] = {}
        self._gates: dict[int, torch.Tensor] = {}
        self._first: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self._embedding = False  # the first layer's hook grabs its input only while `embed` runs

    @contextmanager
    def hooked(self) -> Iterator[ModelSteps]:
        """The hooks in place for the block, and removed after it, whatever happens."""
        handles = [self.decoder[0].register_forward_pre_hook(self._grab_first_input, with_kwargs=True)]
        for layer in self.layers:
            neuron_input = self.adapter.neuron_input_module(layer)
            handles.append(neuron_input.register_forward_pre_hook(partial(self._neuron_hook, layer)))
            gate = self.read_preacts(layer) if self.read_preacts else None
            if gate is not None:
                handles.append(gate.register_forward_hook(partial(self._gate_hook, layer)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _grab_first_input(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._embedding:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        self._first.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise StopForward

    def _neuron_hook(self, layer: int, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._acts[layer] = args[0]
        if layer == self.last:
            raise StopForward  # the last analysed layer's output is never needed

    def _gate_hook(self, layer: int, _module: torch.nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> None:
        self._gates[layer] = output

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        self._embedding = True
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except StopForward:
            pass
        finally:
            self._embedding = False
        if not self._first:
            raise RuntimeError(f"model '{self.name}': the first decoder layer never ran")
        return self._first.pop()

    def layer(self, number: int, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Run decoder layer `number`; its output, None after the last."""
        try:
            output = self.decoder[number](hidden, **kwargs)
        except StopForward:
            if number != self.last:
                raise
            return None  # without the StopForward of the last layer's hook, `take` says that hook never ran
        return output[0] if isinstance(output, tuple) else output

    def take(self, batch: TokenBatch, layer: int) -> LayerActivations:
        """The activations the hooks handed out for `layer`, shaped [B, T, N] (OPT flattens tokens) on the device."""
        if layer not in self._acts:
            raise RuntimeError(f"model '{self.name}': the hook of layer {layer} never ran")
        shape = (*batch.tokens.shape, self.adapter.n_neurons)
        raw, gate = self._on_device(self._acts.pop(layer)), self._gates.pop(layer, None)
        flat = raw if raw.dim() == 2 and raw.dtype == torch.float32 else None
        acts = raw if raw.shape == shape else raw.reshape(shape)
        return LayerActivations(batch, layer, acts, None if gate is None else self._on_device(gate.reshape(shape)), flat)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the capture device: itself, with no op dispatched, where it is there already."""
        return tensor if tensor.device == self.device else tensor.to(self.device)


def resident(steps: ModelSteps, batches: Sequence[TokenBatch]) -> Iterator[LayerActivations]:
    """Batch after batch through layers 0..last (also under `offload`: Accelerate moves the weights)."""
    with steps.hooked():
        for batch in batches:
            hidden, kwargs = steps.embed(batch.tokens)
            for number in range(steps.last + 1):
                hidden = steps.layer(number, hidden, kwargs)  # type: ignore[assignment]
                if number in steps.layers:
                    yield steps.take(batch, number)


def layerwise(
    steps: ModelSteps, batches: Sequence[TokenBatch], *, states: str = "cpu", folder: Path | None = None
) -> Iterator[LayerActivations]:
    """Embed every batch, then move each layer 0..last to the device once and run it on every batch.

    The decoder layers sit on the CPU (each one's device copy is dropped after running) or are offloaded
    to disk (and dropped after running); the hidden states wait where `states` says.
    """
    place_outside_layers(steps.model, steps.decoder, steps.device)
    with steps.hooked(), temporary_folder(folder, "census-states-") as tmp:
        kwargs_by_shape: dict[tuple[int, ...], dict[str, Any]] = {}
        hidden: HiddenStates | None = None
        for batch in batches:
            embedded, kwargs = steps.embed(batch.tokens)
            kwargs_by_shape.setdefault(tuple(embedded.shape), kwargs)
            if hidden is None:
                rest = tuple(embedded.shape[1:])
                hidden = HiddenStates([(len(b.tokens), *rest) for b in batches], embedded.dtype, states, tmp)
            hidden.put(batch.index, embedded)
        assert hidden is not None
        for number in range(steps.last + 1):
            with layer_on_device(steps.decoder[number], steps.device):
                for batch in batches:
                    inputs = hidden.get(batch.index).to(steps.device, non_blocking=True)
                    output = steps.layer(number, inputs, kwargs_by_shape[hidden.shapes[batch.index]])
                    if number in steps.layers:
                        yield steps.take(batch, number)
                    if output is not None:
                        hidden.put(batch.index, output)


def paired(sources: Mapping[str, Iterator[LayerActivations]], runs_as: Mapping[str, str]) -> Iterator[PairedActivations]:
    """Several models' sources over the same batches, in lockstep: every model's (layer, batch) together, under
    each name of `runs_as` (name -> the source that runs it: one model object named twice runs once). Under
    `layerwise` placement this holds layer l of every model on the device at once, and every model's hidden
    states of the shard (where `layerwise_states` puts them)."""
    names = list(sources)
    with ExitStack() as stack:
        for source in sources.values():
            stack.callback(getattr(source, "close", lambda: None))
        for items in zip(*sources.values(), strict=True):
            first = items[0]
            for name, item in zip(names[1:], items[1:]):
                if (item.batch.index, item.layer) != (first.batch.index, first.layer):
                    raise ValueError(
                        f"paired models '{names[0]}' and '{name}' are out of step: layer {first.layer} vs {item.layer}"
                    )
            ran = dict(zip(names, items))
            acts = {name: ran[runner].acts for name, runner in runs_as.items()}
            preacts = {name: ran[runner].preacts for name, runner in runs_as.items()}
            yield PairedActivations(first.batch, first.layer, acts, preacts)
