"""Capture: a plain loop from an activation source through the accumulators to a sink.

For each (layer, batch) a source yields, every accumulator updates; once a layer has counted the shard's
last batch, the accumulators with a layer axis hand that layer's state to the sink (the store being
written, `layer_states.WriteBehind` in front of it, or memory), so no process holds every layer's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from neuron_census.accumulators import Accumulator, Geometry, LayerBatch, State, build_accumulators
from neuron_census.capture import sources
from neuron_census.capture.layer_states import JoinedParts, LayeredStates, LayerSink
from neuron_census.capture.placement import Placement
from neuron_census.capture.settings import CaptureSettings, resolve_layers


class FiniteCheck:
    """Raises for the first (layer, batch) whose activations had an inf or NaN (which make their sum
    non-finite). Each item adds one reduction; the sums are checked and read back together every `every`
    items, not once per (layer, batch)."""

    def __init__(self, model_name: str, every: int) -> None:
        self.model_name, self.every = model_name, every
        self.flags: list[tuple[int, int, int, torch.Tensor]] = []

    def add(self, item: sources.LayerActivations) -> None:
        batch = item.batch
        last = batch.first_seq + len(batch.tokens) - 1
        self.flags.append((item.layer, batch.first_seq, last, item.acts.sum(dtype=torch.float32)))
        if len(self.flags) >= self.every:
            self.check()

    def check(self) -> None:
        if not self.flags:
            return
        finite = torch.isfinite(torch.stack([total for *_, total in self.flags])).cpu()
        if not bool(finite.all()):
            layer, first, last, _ = self.flags[int((~finite).nonzero()[0, 0])]
            raise FloatingPointError(
                f"model '{self.model_name}' layer {layer}: non-finite activations (inf/NaN) in sequences "
                f"{first}..{last}; use a wider dtype"
            )
        self.flags.clear()


def layer_batch(item: sources.LayerActivations, fire_rule: str, per_batch: dict[Any, Any]) -> LayerBatch:
    """What the accumulators see of one (layer, batch). A neuron fires where its pre-activation is positive
    (default) or where its activation is: for ReLU, GELU and SiLU the two agree; for a gated FFN the
    pre-activation is the gate's input, read as act_fn(gate) > 0 since SiLU keeps the sign."""
    by_gate = fire_rule == "preactivation" and item.preacts is not None
    batch = item.batch
    fires = (item.preacts if by_gate else item.acts) > 0  # type: ignore[operator]
    if batch.counted_from:  # the mask is exactly "position >= counted_from": clear the columns before
        if "uncounted" not in per_batch:
            per_batch["uncounted"] = torch.arange(batch.counted_from, device=fires.device)
        fires.index_fill_(1, per_batch["uncounted"], False)
    return LayerBatch(
        layer=item.layer, acts=item.acts, fires=fires, mask=batch.mask, tokens=batch.tokens, seq_ids=batch.seq_ids,
        counted_from=batch.counted_from, first_seq=batch.first_seq, fires_from_acts=not by_gate, per_batch=per_batch,
        acts_flat=item.acts_flat,  # the hook's own [B*T, N] tensor (OPT): no reshape back
    )


def run(
    source: Iterable[sources.LayerActivations],
    accumulators: Sequence[Accumulator],
    sink: LayerSink,
    geometry: Geometry,
    *,
    fire_rule: str,
    model_name: str,
    progress: tqdm,
) -> None:
    """Feed every (layer, batch) of `source` to every accumulator; hand each finished layer to `sink`."""
    finite = FiniteCheck(model_name, every=len(geometry.layers))
    layered = [acc for acc in accumulators if acc.layered]
    shared: dict[int, dict[Any, Any]] = {}  # per batch, what its layers share (n-grams, distinct tokens)
    last_layer = geometry.layers[-1]
    with closing(iter(source)) as items:  # type: ignore[type-var]
        for item in items:
            finite.add(item)
            batch = layer_batch(item, fire_rule, shared.setdefault(item.batch.index, {}))
            for accumulator in accumulators:
                accumulator.update(batch)
            if item.layer == last_layer:
                del shared[item.batch.index]
            if item.batch.last:
                finite.check()
                sink.add_layers(geometry.slot(item.layer), {acc.name: acc.take_layer(item.layer) for acc in layered})
            progress.update(item.batch.tokens.numel())
            del item, batch  # this layer's activations go before the source runs the next layer
    finite.check()
    for accumulator in accumulators:
        if not accumulator.layered:
            accumulator.flush()
            sink.add_whole(accumulator.name, accumulator.state())


def model_source(
    model: torch.nn.Module, adapter: Any, tokens: np.ndarray, batches: Sequence[sources.TokenBatch],
    layers: Sequence[int] | None, device: torch.device, placement: Placement | None, offload_dir: Path | None,
    *, model_name: str, preacts: str | None,
) -> tuple[tuple[int, ...], Iterator[sources.LayerActivations]]:
    """The analysed layers of one model (after checking `tokens` fit it) and its source over `batches`."""
    if tokens.shape[1] > adapter.context_length:
        raise ValueError(
            f"sequences of {tokens.shape[1]} tokens exceed model '{model_name}' context of {adapter.context_length} "
            "positions (lower the dataset's seq_len)"
        )
    if tokens.size and int(tokens.max()) >= adapter.vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside model '{model_name}' vocabulary of {adapter.vocab_size}")
    analysed = resolve_layers(layers, adapter.n_layers, model_name)
    steps = sources.ModelSteps(model, adapter, analysed, device, name=model_name, preacts=preacts)
    if placement is not None and placement.strategy == "layerwise":
        return analysed, sources.layerwise(steps, batches, states=placement.layerwise_states, folder=offload_dir)
    return analysed, sources.resident(steps, batches)


def capture_tokens(
    model: torch.nn.Module,
    adapter: Any,
    tokens: np.ndarray,
    *,
    model_name: str,
    first_seq_id: int,
    has_bos: bool,
    settings: CaptureSettings,
    device: torch.device,
    placement: Placement | None = None,
    offload_dir: Path | None = None,
    progress: bool = True,
    sink: LayerSink | None = None,
) -> tuple[tuple[int, ...], dict[str, State]]:
    """Run `model` over `tokens` [n_seq, seq_len] and return the analysed layers and accumulator states.

    `device` holds the accumulators and receives the inputs. The model must already be placed for
    `placement`: on `device` (resident), dispatched by Accelerate (offload) or on the CPU (layerwise,
    whose kept hidden states go to `offload_dir` when `placement.layerwise_states` is disk). With a `sink`
    the states go there, a layer as soon as it is done, and the returned dict is empty.
    """
    batches = sources.token_batches(tokens, settings.batch_size, first_seq_id, has_bos, device)
    layers, source = model_source(
        model, adapter, tokens, batches, settings.layers, device, placement, offload_dir,
        model_name=model_name, preacts="gate" if settings.fire_rule == "preactivation" else None,
    )
    geometry = Geometry(layers, adapter.n_neurons, tokens.shape[1], adapter.vocab_size, adapter.n_layers)
    accumulators = build_accumulators(settings, geometry, device)
    joined = LayeredStates()  # the states in memory, without a sink
    out = joined if sink is None else sink
    bar = tqdm(total=tokens.size * len(layers), unit="tok", unit_scale=True, desc=f"capture {model_name}", disable=not progress)
    with bar, torch.inference_mode():
        run(source, accumulators, out, geometry, fire_rule=settings.fire_rule, model_name=model_name, progress=bar)
    if sink is not None:
        return layers, {}
    return layers, {acc.name: cast(JoinedParts, joined.targets[acc.name]).state() for acc in accumulators}


# ------------------------------------------------------------------------------------------ paired capture


@dataclass(frozen=True)
class PairedModel:
    """One model of a paired capture, placed on the capture device (or dispatched by Accelerate)."""

    model: torch.nn.Module
    adapter: Any
    tokenizer_fingerprint: str


class PairedAccumulator(Protocol):
    """What a paired capture feeds: every model's activations of one (layer, batch) at a time."""

    def update(self, item: sources.PairedActivations) -> None: ...


def capture_paired(
    models: Mapping[str, PairedModel],
    tokens: np.ndarray,
    accumulators: Sequence[PairedAccumulator],
    *,
    layers: Sequence[int] | None,
    first_seq_id: int,
    has_bos: bool,
    batch_size: int,
    device: torch.device,
    placement: Placement | None = None,
    offload_dir: Path | None = None,
    read_preactivation: bool = False,
) -> None:
    """Run every model over the same batches of `tokens` in lockstep, feeding `accumulators` each (layer,
    batch) of all of them together (`sources.paired`). Models must share the tokenizer and the analysed
    layers must exist in each; one model object named twice runs once and is seen under both names.
    `read_preactivation`: each item's `preacts` are the input of every model's FFN nonlinearity."""
    names = list(models)
    for name in names[1:]:
        if models[name].tokenizer_fingerprint != models[names[0]].tokenizer_fingerprint:
            raise ValueError(f"models '{names[0]}' and '{name}' have different tokenizers; a paired capture needs one")
    batches = sources.token_batches(tokens, batch_size, first_seq_id, has_bos, device)
    # a model object named twice runs once, under its first name (two sets of hooks on one module clash)
    first_name: dict[int, str] = {}
    runs_as = {name: first_name.setdefault(id(paired.model), name) for name, paired in models.items()}
    per_model: dict[str, Iterator[sources.LayerActivations]] = {}
    for name in first_name.values():
        _, per_model[name] = model_source(
            models[name].model, models[name].adapter, tokens, batches, layers, device, placement, offload_dir,
            model_name=name, preacts="preactivation" if read_preactivation else None,
        )
    with torch.inference_mode(), closing(sources.paired(per_model, runs_as)) as items:  # type: ignore[type-var]
        for item in items:
            for accumulator in accumulators:
                accumulator.update(item)
