"""One forward pass over a token shard feeds every accumulator; nothing else is kept.

Hooks on each analysed layer's FFN output projection read the neuron activations (its input) and pass
them to the accumulators. The pass stops right after the last analysed layer's activations are read, so
later layers and the LM head are never computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from neuron_census.accumulators import (
    FireCount,
    Geometry,
    LayerBatch,
    Moments,
    NgramCount,
    NgramFireCount,
    PositionFireCount,
    State,
    TokenCount,
    TokenFireCount,
    TopK,
)
from neuron_census.capture.placement import LastLayerNeverRan, Placement, StopForward, run_layerwise, run_resident
from neuron_census.capture.layer_states import LayerSink, joined_states

FIRE_RULES = ("preactivation", "activation")
ALL_ACCUMULATORS = (
    "fire_count",
    "position_fire_count",
    "token_count",
    "token_fire_count",
    "ngram_fire_count",
    "ngram_count",
    "top_k",
    "moments",
)


@dataclass(frozen=True)
class CaptureSettings:
    """What one capture job computes. `layers` None means every layer of the model."""

    layers: tuple[int, ...] | None = None
    batch_size: int = 16
    fire_rule: str = "preactivation"
    top_k: int = 16
    token_fire_dense_limit: int = 1 << 26
    token_capacity: int | None = None  # tokens kept per neuron in the sparse table; None: every one (exact)
    ngram_layers: str | tuple[int, ...] = "first_half"  # "first_half", "all", or model layer numbers
    ngram_orders: tuple[int, ...] = (2, 3)
    ngram_capacity: int = 65536  # n-grams kept per neuron and order (exact below this)
    ngram_count_capacity: int = 1 << 22  # distinct n-grams kept for occurrence counts
    merge_pending: int = 1 << 18  # batch (token or n-gram, neuron) pairs pending, over all layers, before merging
    accumulators: tuple[str, ...] = field(default=ALL_ACCUMULATORS)

    def __post_init__(self) -> None:
        if self.fire_rule not in FIRE_RULES:
            raise ValueError(f"capture.fire_rule '{self.fire_rule}' is not one of {FIRE_RULES}")
        unknown = set(self.accumulators) - set(ALL_ACCUMULATORS)
        if unknown:
            raise ValueError(f"unknown accumulators {sorted(unknown)}; known: {ALL_ACCUMULATORS}")
        if isinstance(self.ngram_layers, str) and self.ngram_layers not in ("first_half", "all"):
            raise ValueError(f"capture.ngram_layers '{self.ngram_layers}' is not first_half, all or a list of layers")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> CaptureSettings:
        """Settings from a config's `capture` block (with a model's overrides); absent keys keep the defaults."""
        known = {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}
        if "layers" in known:
            known["layers"] = None if known["layers"] == "all" else tuple(int(x) for x in known["layers"])
        if not isinstance(known.get("ngram_layers", ""), str):
            known["ngram_layers"] = tuple(int(x) for x in known["ngram_layers"])
        if "ngram_orders" in known:
            known["ngram_orders"] = tuple(known["ngram_orders"])
        return cls(**known)


def resolve_layers(requested: Sequence[int] | None, n_layers: int, model_name: str) -> tuple[int, ...]:
    if requested is None:
        return tuple(range(n_layers))
    layers = tuple(sorted(set(int(layer) for layer in requested)))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ValueError(f"model '{model_name}' has layers 0..{n_layers - 1}; capture.layers asks for {bad or 'none'}")
    return layers


def resolve_ngram_layers(setting: str | Sequence[int], analysed: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """Analysed layers whose n-grams are counted; `first_half` = layer / n_layers < 0.5, as Fig. 2 uses."""
    if setting == "all":
        return analysed
    if setting == "first_half":
        return tuple(layer for layer in analysed if 2 * layer < n_layers)
    return tuple(layer for layer in analysed if layer in set(int(x) for x in setting))


def unanalysed_ngram_layers(setting: str | Sequence[int], analysed: Sequence[int]) -> list[int]:
    """Layers listed in `capture.ngram_layers` that are not analysed: a job refuses them, since their n-gram
    columns would silently be empty (a capture of some layers alone may pass the full list on purpose)."""
    return [] if isinstance(setting, str) else sorted({int(x) for x in setting} - set(analysed))


def build_accumulators(
    settings: CaptureSettings, geometry: Geometry, device: torch.device, n_layers_total: int
) -> list[Any]:
    ngram_layers = resolve_ngram_layers(settings.ngram_layers, geometry.layers, n_layers_total)
    factories: dict[str, Callable[[], Any]] = {
        "fire_count": lambda: FireCount(geometry, device),
        "position_fire_count": lambda: PositionFireCount(geometry, device),
        "token_count": lambda: TokenCount(geometry, device),
        "token_fire_count": lambda: TokenFireCount(
            geometry,
            device,
            dense_limit=settings.token_fire_dense_limit,
            capacity=settings.token_capacity,
            merge_pending=settings.merge_pending,
        ),
        "ngram_fire_count": lambda: NgramFireCount(
            geometry,
            device,
            layers=ngram_layers,
            orders=settings.ngram_orders,
            capacity=settings.ngram_capacity,
            merge_pending=settings.merge_pending,
        ),
        "ngram_count": lambda: NgramCount(
            geometry,
            device,
            orders=settings.ngram_orders,
            capacity=settings.ngram_count_capacity,
            merge_pending=settings.merge_pending,
        ),
        "top_k": lambda: TopK(geometry, device, k=settings.top_k),
        "moments": lambda: Moments(geometry, device),
    }
    return [factories[name]() for name in settings.accumulators]


def _fires(acts: torch.Tensor, gate: torch.Tensor | None, rule: str) -> torch.Tensor:
    """A neuron fires where its pre-activation is positive (default) or where its activation is.

    For ReLU, GELU and SiLU the two agree (each is positive exactly where its input is). For a gated FFN
    the pre-activation is the gate's input, read as act_fn(gate) > 0 since SiLU keeps the sign.
    """
    if rule == "preactivation" and gate is not None:
        return gate > 0
    return acts > 0


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
    whose kept hidden states go to `offload_dir` when `placement.layerwise_states` is disk).

    States are handed over a layer at a time, as soon as a layer has counted its last batch: under layerwise
    capture before the next layer runs, otherwise while the shard's last batch goes on through the later
    layers (so the store's writer thread writes the first layers meanwhile). With a `sink` (a store being written, directly or by a
    writer thread: `layer_states.WriteBehind`) they go there and the returned dict is empty, so host memory
    holds one or two layers' statistics at a time, not all of them (OPT-66b's tables can reach 300 GB over
    its layers); without one they are joined in memory.
    """
    placement = placement or Placement()
    n_seq, seq_len = tokens.shape
    if seq_len > adapter.context_length:
        raise ValueError(
            f"sequences of {seq_len} tokens exceed model '{model_name}' context of {adapter.context_length} positions "
            "(lower the dataset's seq_len)"
        )
    if tokens.size and int(tokens.max()) >= adapter.vocab_size:
        raise ValueError(
            f"token id {int(tokens.max())} is outside model '{model_name}' vocabulary of {adapter.vocab_size}"
        )
    layers = resolve_layers(settings.layers, adapter.n_layers, model_name)
    geometry = Geometry(layers=layers, n_neurons=adapter.n_neurons, seq_len=seq_len, vocab_size=adapter.vocab_size)
    accumulators = build_accumulators(settings, geometry, device, adapter.n_layers)
    last_layer = layers[-1]

    current: dict[str, Any] = {}
    gates: dict[int, torch.Tensor] = {}
    unchecked: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def check_finite() -> None:
        """Raise for the first (layer, batch) since the last check whose activations had an inf or NaN."""
        if not unchecked:
            return
        flags = torch.stack([flag for *_, flag in unchecked]).cpu()
        if bool(flags.any()):
            layer, first, last, _ = unchecked[int(flags.nonzero()[0, 0])]
            raise FloatingPointError(
                f"model '{model_name}' layer {layer}: non-finite activations (inf/NaN) in sequences "
                f"{int(first)}..{int(last)}; use a wider dtype"
            )
        unchecked.clear()

    def gate_hook(layer: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> None:
            gates[layer] = output

        return hook

    def neuron_hook(layer: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            batch_tokens = current["tokens"]
            shape = (*batch_tokens.shape, adapter.n_neurons)
            acts = args[0].reshape(shape).to(device)
            gate = gates.pop(layer).reshape(shape).to(device) if layer in gates else None
            fires = _fires(acts, gate, settings.fire_rule)
            if has_bos:
                fires[:, 0] = False  # counted positions: all but BOS (cheaper than a full masked AND)
            batch = LayerBatch(
                layer=layer,
                acts=acts,
                fires=fires,
                mask=current["mask"],
                tokens=batch_tokens,
                seq_ids=current["seq_ids"],
                per_batch=current["per_batch"],
                counted_from=1 if has_bos else 0,
                fires_where_positive=gate is None or settings.fire_rule != "preactivation",
            )
            # A NaN or inf anywhere makes its neuron's column sum non-finite: one cheap float reduction,
            # read back once per batch (not per layer) so a GPU is not synchronised inside the forward pass.
            seq_ids = current["seq_ids"]
            # Summed as float32 straight from the activations' own dtype: no float32 copy of a bfloat16 batch.
            column_sums = acts.reshape(-1, adapter.n_neurons).sum(dim=0, dtype=torch.float32)
            unchecked.append((layer, seq_ids[0], seq_ids[-1], ~torch.isfinite(column_sums).all()))
            for accumulator in accumulators:
                accumulator.update(batch)
            if current["last_batch"]:  # the layer is complete: its statistics go to the store now
                hand_over(layer)
            if layer == last_layer:
                raise StopForward

        return hook

    # Once a layer's last batch is counted (layerwise capture: before the next layer runs; otherwise in the
    # shard's last forward pass), the accumulators with a layer axis hand that layer's state over, and it
    # leaves the device.
    out, joined = (sink, None) if sink is not None else joined_states()
    by_layer = [acc for acc in accumulators if hasattr(acc, "take_layer")]
    handed: list[int] = []

    def hand_over(layer: int) -> None:
        out.add_layers(geometry.slot(layer), {accumulator.name: accumulator.take_layer(layer) for accumulator in by_layer})
        handed.append(layer)

    handles = []
    for layer in layers:
        handles.append(adapter.neuron_input_module(layer).register_forward_pre_hook(neuron_hook(layer)))
        gate_module = adapter.gate_output_module(layer) if settings.fire_rule == "preactivation" else None
        if gate_module is not None:
            handles.append(gate_module.register_forward_hook(gate_hook(layer)))

    all_tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    starts = list(range(0, n_seq, settings.batch_size))
    bar = tqdm(
        total=n_seq * seq_len, unit="tok", unit_scale=True, desc=f"capture {model_name}", disable=not progress
    )

    def begin_batch(index: int) -> torch.Tensor:
        """Make batch `index` the one the hooks see; returns its token ids on `device`."""
        check_finite()
        start = starts[index]
        batch_tokens = all_tokens[start : start + settings.batch_size].to(device)
        mask = torch.ones_like(batch_tokens, dtype=torch.bool)
        if has_bos:
            mask[:, 0] = False
        current.update(
            last_batch=index == len(starts) - 1,
            per_batch={},
            tokens=batch_tokens,
            mask=mask,
            seq_ids=torch.arange(first_seq_id + start, first_seq_id + start + len(batch_tokens), device=device),
        )
        return batch_tokens

    def count_progress(index: int) -> torch.Tensor:
        batch_tokens = begin_batch(index)
        bar.update(batch_tokens.numel())
        return batch_tokens

    try:
        with torch.inference_mode():
            if placement.strategy == "layerwise":
                rows = [min(settings.batch_size, n_seq - start) for start in starts]
                bar.total = n_seq * seq_len * (last_layer + 2)  # the embedding pass, then each layer
                run_layerwise(
                    model,
                    adapter.decoder_layers(),
                    last_layer,
                    rows,
                    count_progress,
                    device,
                    states=placement.layerwise_states,
                    folder=offload_dir,
                )
            else:
                run_resident(model, len(starts), count_progress)
            check_finite()
    except LastLayerNeverRan as error:
        raise RuntimeError(f"model '{model_name}': the hook of layer {last_layer} never ran") from error
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    for layer in layers[len(handed) :]:
        hand_over(layer)
    for accumulator in accumulators:
        if accumulator not in by_layer:
            out.add_whole(accumulator.name, accumulator.state())
    if joined is None:
        return layers, {}
    return layers, {acc.name: joined[acc.name].state() for acc in accumulators}
