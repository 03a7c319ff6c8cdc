"""Writing hooks on FFN neurons: set, scale or add to chosen neurons at chosen positions.

Capture hooks read neurons; these write them, so that a neuron's causal effect on the residual stream and
the logits can be measured directly. The edit itself is a pure function of a tensor
(`apply_intervention`); hooks only find the tensor, turn its flat or batched layout into
[..., positions, neurons], and put the edited copy back.

Two targets per neuron, as the adapter names them: "activation", the input of the FFN output projection
(for a gated FFN the product unit act_fn(gate) * up), edited by a forward pre-hook; "preactivation", what
the nonlinearity reads (a gated FFN's gate projection output, the up projection left alone), edited by a
forward hook.

Positions are absolute indices into the token sequence the model has seen in this call chain: prompt and
generated tokens together, counted from 0 (the cache slot, which is the column of `input_ids`, not a
position id: with left padding the two differ). A forward pass without a cache covers positions
0..seq-1; a cached step of `generate` covers positions past..past+seq-1, where `past` is the number of
tokens already in the cache. The offset is read from the call itself (a pre-hook on the model reads
`cache` / `past_key_values` / `cache_position`) rather than by counting tokens since the context was
entered, so repeated forward passes, several `generate` calls and `use_cache=False` all stay correct
inside one context. An intervention at position p therefore edits exactly the forward step that computes
position p; positions outside the current step are ignored.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, get_args

import torch

from neuron_census.models.adapters import FFNAdapter, adapter_for

Op = Literal["set", "scale", "add"]
Target = Literal["activation", "preactivation"]
OPS: tuple[str, ...] = get_args(Op)
TARGETS: tuple[str, ...] = get_args(Target)


def _index(value: Any, what: str) -> int:
    """`value` as an int, or a ValueError naming it (floats and bools are not indices)."""
    if not isinstance(value, bool):
        with suppress(TypeError):
            return operator.index(value)
    raise ValueError(f"{what} must be an integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class Intervention:
    """Set, scale or add `value` to `neurons` of `layer` at `positions` (None: every position).

    `value` is one number for every neuron or a 1-D tensor with one entry per neuron, in `neurons` order.
    Checks that need no model run here; layer and neuron ranges are checked against the model by
    `intervened`. Equality is identity (a tensor value has no single truth value).
    """

    layer: int
    neurons: Sequence[int]
    op: Op
    value: float | torch.Tensor
    positions: Sequence[int] | None = None
    target: Target = "activation"
    _value: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; known: {', '.join(OPS)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; known: {', '.join(TARGETS)}")
        layer = _index(self.layer, "layer")
        if layer < 0:
            raise ValueError(f"layer {layer} is negative")
        neurons = tuple(_index(n, "neuron") for n in self.neurons)
        if not neurons:
            raise ValueError(f"intervention on layer {layer} names no neurons")
        if any(n < 0 for n in neurons):
            raise ValueError(f"neuron {min(neurons)} is negative")
        if len(set(neurons)) != len(neurons):
            duplicate = next(n for n in neurons if neurons.count(n) > 1)
            raise ValueError(f"neuron {duplicate} is listed twice")
        positions = None
        if self.positions is not None:
            positions = tuple(sorted(set(_index(p, "position") for p in self.positions)))
            if positions and positions[0] < 0:
                raise ValueError(f"position {positions[0]} is negative; positions are absolute, from 0")
        value = torch.as_tensor(self.value).detach()
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"value must be a number or a float tensor, got dtype {value.dtype}")
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != len(neurons)):
            raise ValueError(f"value of shape {list(value.shape)} does not match {len(neurons)} neurons")
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "neurons", neurons)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "_value", value.to(torch.float64))


def apply_intervention(x: torch.Tensor, intervention: Intervention, offset: int = 0) -> torch.Tensor:
    """`x` [..., positions, neurons] with the intervention applied: an edited copy, or `x` itself if untouched.

    Index i of the positions axis is absolute position `offset + i`. Out of place so that autograd and
    other hooks holding `x` see consistent values; everything outside the edited cells is copied bit for bit.
    """
    if x.ndim < 2:
        raise ValueError(f"tensor of shape {list(x.shape)} has no [positions, neurons] axes")
    if max(intervention.neurons) >= x.shape[-1]:
        raise ValueError(f"neuron {max(intervention.neurons)} is outside 0..{x.shape[-1] - 1} of this tensor")
    if intervention.positions is None:
        rows = torch.arange(x.shape[-2])
    else:
        covered = range(offset, offset + x.shape[-2])
        rows = torch.tensor([p - offset for p in intervention.positions if p in covered], dtype=torch.long)
        if not len(rows):
            return x
    row_index = rows.to(x.device)[:, None]
    column_index = torch.tensor(intervention.neurons, device=x.device)[None, :]
    value = intervention._value.to(device=x.device, dtype=x.dtype)
    out = x.clone()
    current = out[..., row_index, column_index]  # [..., rows, neurons]; a value broadcasts over the rows
    op = intervention.op
    out[..., row_index, column_index] = value if op == "set" else current * value if op == "scale" else current + value
    return out


class _Window:
    """Which absolute positions the current forward call covers: a stack, one entry per model call in flight."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []  # (offset, sequence length)

    def enter(self, _module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # tokens already processed before this call: from cache_position, or the cache's length, else 0
        cache_position = kwargs.get("cache_position")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache_position, torch.Tensor) and cache_position.numel():
            past = int(cache_position.reshape(-1)[0])
        elif hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        elif isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy ((k, v), ...) per layer
            past = int(cache[0][0].shape[-2])
        else:
            past = 0
        tokens = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        seq_len = int(tokens.shape[-1]) if tokens is not None else None if embeds is None else int(embeds.shape[1])
        self.calls.append((past, seq_len))

    def leave(self, *_: Any) -> None:
        if self.calls:
            self.calls.pop()

    def edit(self, intervention: Intervention, x: torch.Tensor) -> torch.Tensor | None:
        """`intervention` applied to a hooked tensor, [batch, seq, N] or OPT's flat [batch * seq, N]; None if it
        edits nothing in this call. Outside a model forward (layers run by hand) positions count from 0."""
        offset, seq_len = self.calls[-1] if self.calls else (0, None)
        if x.ndim < 3 and (seq_len is None or x.shape[0] % seq_len):
            raise ValueError(
                f"cannot tell positions in a flat tensor of shape {list(x.shape)}: run the model itself, not its layers"
            )
        cells = x if x.ndim >= 3 else x.reshape(-1, seq_len, x.shape[-1])
        edited = apply_intervention(cells, intervention, offset)
        return None if edited is cells else edited.reshape(x.shape)

    def input_hook(self, intervention: Intervention, _module: torch.nn.Module, args: tuple) -> tuple | None:
        edited = self.edit(intervention, args[0])
        return None if edited is None else (edited, *args[1:])

    def output_hook(
        self, intervention: Intervention, _module: torch.nn.Module, _args: tuple, output: torch.Tensor
    ) -> torch.Tensor | None:
        return self.edit(intervention, output)


@contextmanager
def intervened(model: torch.nn.Module, interventions: Sequence[Intervention]) -> Iterator[FFNAdapter]:
    """Run `model` (forward or `generate`) with `interventions` applied; the hooks always go on exit.

    Several interventions on one module apply in list order. Everything is validated (layer and neuron
    ranges against the model) before any hook is registered. Yields the adapter.
    """
    adapter = adapter_for(model)
    window = _Window()
    hooks = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise ValueError(f"expected an Intervention, got {type(intervention).__name__}")
        layer, top = intervention.layer, max(intervention.neurons)
        if layer >= adapter.n_layers:
            raise ValueError(f"layer {layer} is outside 0..{adapter.n_layers - 1} of model '{adapter.name}'")
        if top >= adapter.n_neurons:
            raise ValueError(
                f"neuron {top} is outside 0..{adapter.n_neurons - 1} of layer {layer} of model '{adapter.name}'"
            )
        if intervention.target == "activation":
            register, hook = adapter.neuron_input_module(layer).register_forward_pre_hook, window.input_hook
        else:
            register, hook = adapter.preactivation_module(layer).register_forward_hook, window.output_hook
        hooks.append((register, partial(hook, intervention)))
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles.append(model.register_forward_pre_hook(window.enter, with_kwargs=True))
        handles.append(model.register_forward_hook(window.leave, always_call=True))
        for register, hook in hooks:
            handles.append(register(hook))
        yield adapter
    finally:
        for handle in reversed(handles):
            handle.remove()
