"""Streaming sufficient statistics of FFN neurons: one accumulator a module, registered by its class.

Every module of this package is imported here, so an accumulator registers itself (`base.REGISTRY`) by
being defined: adding one touches its own file and its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

import torch

from neuron_census.accumulators.base import REGISTRY, Accumulator, Geometry, LayerBatch, Memory, State

if TYPE_CHECKING:
    from neuron_census.capture.settings import CaptureSettings

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Accumulator", "Geometry", "LayerBatch", "Memory", "State", "build_accumulators",
           "default_accumulators", "merge_states"]


def default_accumulators() -> tuple[str, ...]:
    """The accumulators a capture runs unless it names its own, in registration order."""
    return tuple(name for name, cls in REGISTRY.items() if cls.default)


def build_accumulators(settings: CaptureSettings, geometry: Geometry, device: torch.device) -> list[Accumulator]:
    return [REGISTRY[name].from_settings(settings, geometry, device) for name in settings.accumulators]


def merge_states(states: list[dict[str, State]]) -> dict[str, State]:
    """Merge per-shard states accumulator by accumulator (each is associative)."""
    names = sorted(states[0])
    for other in states[1:]:
        if sorted(other) != names:
            raise ValueError(f"cannot merge stores with different accumulators: {names} vs {sorted(other)}")
    return {name: REGISTRY[name].merge([s[name] for s in states]) for name in names}


def statistics_memory(settings: CaptureSettings, geometry: Geometry, *, layerwise: bool, n_tokens: int) -> dict[str, Memory]:
    """Each accumulator's own upper bound of what it holds on the device and on the host during a capture
    (`Accumulator.memory`): reached only when every neuron's tables are full."""
    return {
        name: REGISTRY[name].memory(settings, geometry, layerwise=layerwise, n_tokens=n_tokens)
        for name in settings.accumulators
    }


def describe_bound(bounds: dict[str, int]) -> str:
    """'up to 12.3 GB (position_fire_count 11.3, ...)', largest first."""
    parts = ", ".join(f"{name} {size / 1e9:.1f}" for name, size in sorted(bounds.items(), key=lambda kv: -kv[1]))
    return f"up to {sum(bounds.values()) / 1e9:.1f} GB ({parts})"
