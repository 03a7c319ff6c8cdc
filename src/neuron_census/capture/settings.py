"""What one capture job computes: the `capture` config block as a typed value, defaults from the schema."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

from neuron_census.config import default_field, schema_defaults

FIRE_RULES = ("preactivation", "activation")
_default = partial(default_field, schema_defaults("capture"))


def _default_accumulators() -> tuple[str, ...]:
    from neuron_census.accumulators import default_accumulators

    return default_accumulators()


@dataclass(frozen=True)
class CaptureSettings:
    """What one capture job computes. `layers` None means every layer of the model; `accumulators` defaults
    to every accumulator that runs by default (`Accumulator.default`), and `samples` too when
    `sample_spans` names a file (`from_config`)."""

    layers: tuple[int, ...] | None = None
    batch_size: int = _default("batch_size")
    fire_rule: str = _default("fire_rule")
    top_k: int = _default("top_k")
    token_fire_dense_limit: int = _default("token_fire_dense_limit")
    token_capacity: int | None = _default("token_capacity")  # tokens kept per neuron; None: every one (exact)
    ngram_layers: str | tuple[int, ...] = _default("ngram_layers")  # "first_half", "all", or layer numbers
    ngram_orders: tuple[int, ...] = _default("ngram_orders")
    ngram_capacity: int = _default("ngram_capacity")  # n-grams kept per neuron and order (exact below this)
    ngram_count_capacity: int = _default("ngram_count_capacity")  # distinct n-grams kept for occurrence counts
    pending_bytes: int = _default("pending_bytes")  # device bytes of batch tables waiting to be merged
    sample_spans: str | None = _default("sample_spans")  # parquet file of labelled spans to keep activations of
    sample_limit: int = _default("sample_limit")
    accumulators: tuple[str, ...] = field(default_factory=_default_accumulators)
    # accumulator name -> its own options (`Accumulator.options`): an accumulator's settings live in its file
    accumulator_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from neuron_census.accumulators import REGISTRY
        from neuron_census.accumulators.base import check_options

        if self.fire_rule not in FIRE_RULES:
            raise ValueError(f"capture.fire_rule '{self.fire_rule}' is not one of {FIRE_RULES}")
        unknown = set(self.accumulators) - set(REGISTRY)
        if unknown:
            raise ValueError(f"unknown accumulators {sorted(unknown)}; known: {sorted(REGISTRY)}")
        try:
            check_options(self.accumulator_options)
        except ValueError as error:
            raise ValueError(f"capture.accumulator_options: {error}") from None
        if isinstance(self.ngram_layers, str) and self.ngram_layers not in ("first_half", "all"):
            raise ValueError(f"capture.ngram_layers '{self.ngram_layers}' is not first_half, all or a list of layers")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any]) -> CaptureSettings:
        """Settings from a config's `capture` block (with a model's overrides); absent keys keep the defaults."""
        known = {k: v for k, v in settings.items() if k in {f.name for f in fields(cls)}}
        if "layers" in known:
            known["layers"] = None if known["layers"] == "all" else tuple(int(x) for x in known["layers"])
        if not isinstance(known.get("ngram_layers", ""), str):
            known["ngram_layers"] = tuple(int(x) for x in known["ngram_layers"])
        for key in ("ngram_orders", "accumulators"):
            if key in known:
                known[key] = tuple(known[key])
        if known.get("accumulators") == ():
            del known["accumulators"]
        if known.get("sample_spans") and "accumulators" not in known:  # spans given: keep their samples too
            known["accumulators"] = (*_default_accumulators(), "samples")
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
