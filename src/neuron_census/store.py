"""Accumulator stores: one zarr v3 group per capture job, and their merge.

Layout: group attributes describe what was captured (model, dataset, shards, layers, sizes, fire rule);
one subgroup per accumulator holds its state arrays. Stores are written through `atomic_path`, and a
store is only accepted on reading when its attributes say it is complete and every array is readable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from neuron_census.accumulators import REGISTRY, State, merge_states
from neuron_census.atomic import atomic_path

STORE_KIND = "accumulators"
FORMAT_VERSION = 2

# Attributes that must agree for two stores to be merged.
MERGE_KEYS = (
    "model",
    "layers",
    "n_layers_total",
    "n_neurons",
    "seq_len",
    "vocab_size",
    "tokenizer_fingerprint",
    "fire_rule",
    "has_bos",
    "top_k",
)


def write_store(path: str | os.PathLike[str], attrs: Mapping[str, Any], states: Mapping[str, State]) -> None:
    """Write accumulator states atomically; `attrs` must be JSON-serialisable."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name, state in states.items():
            sub = group.create_group(name)
            for key, array in state.items():
                sub.create_array(key, data=np.ascontiguousarray(array))
        group.attrs.update({**attrs, "kind": STORE_KIND, "format_version": FORMAT_VERSION, "complete": True})


def read_store(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, State]]:
    """Read a store written by `write_store`; a missing, torn or foreign store raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"accumulator store {path} does not exist")
    try:
        with warnings.catch_warnings():
            # Snakemake marks directory outputs with a .snakemake_timestamp file, which zarr lists as a stray member.
            warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp", category=UserWarning)
            group = zarr.open_group(path, mode="r")
            attrs = dict(group.attrs)
            if attrs.get("kind") != STORE_KIND or not attrs.get("complete"):
                raise ValueError("not a complete accumulator store")
            if attrs.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {attrs.get('format_version')} != {FORMAT_VERSION}")
            states: dict[str, State] = {}
            for name, sub in sorted(group.groups()):
                if name not in REGISTRY:
                    raise ValueError(f"unknown accumulator '{name}'")
                states[name] = {key: np.asarray(array[...]) for key, array in sorted(sub.arrays())}
    except ValueError as error:
        raise ValueError(f"accumulator store {path} is unreadable: {error}") from None
    except Exception as error:  # zarr/codec errors on truncated or corrupted chunks
        raise ValueError(f"accumulator store {path} is corrupted: {type(error).__name__}: {error}") from None
    return attrs, states


def merge_stores(paths: Sequence[str | os.PathLike[str]]) -> tuple[dict[str, Any], dict[str, State]]:
    """Read and merge stores of the same model; datasets and shards are listed in the result's attrs."""
    if not paths:
        raise ValueError("no accumulator stores to merge")
    loaded = [read_store(p) for p in paths]
    first_attrs = loaded[0][0]
    for path, (attrs, _) in zip(paths[1:], loaded[1:]):
        for key in MERGE_KEYS:
            if attrs.get(key) != first_attrs.get(key):
                raise ValueError(
                    f"cannot merge {path} with {paths[0]}: '{key}' differs "
                    f"({attrs.get(key)!r} vs {first_attrs.get(key)!r})"
                )
    merged_attrs = {key: first_attrs[key] for key in (*MERGE_KEYS, "activation") if key in first_attrs}
    merged_attrs["datasets"] = sorted({d for attrs, _ in loaded for d in attrs["datasets"]})
    merged_attrs["sources"] = sorted({s for attrs, _ in loaded for s in attrs["sources"]})
    if len(merged_attrs["sources"]) != sum(len(attrs["sources"]) for attrs, _ in loaded):
        raise ValueError(f"stores to merge overlap: a shard would be counted twice ({', '.join(map(str, paths))})")
    return merged_attrs, merge_states([states for _, states in loaded])
