"""What kind of neuron each analysis says a neuron is, in one list per neuron (dead, detectors, positional,
trigger suppression, vocabulary role, universal, entropy, attention deactivation, single-neuron probe),
and how the kinds overlap: the views that join the four papers (the atlas, `kind_overlaps`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

FLAGS_BEFORE_ROLE = (
    ("dead", "dead"), ("token_detector", "token detector"), ("bigram_detector", "bigram detector"),
    ("positional", "positional"), ("suppresses_trigger", "suppresses its trigger"),
)  # (neurons.parquet column, kind) of the kinds a true column gives, before the vocabulary role
FLAGS_AFTER_ROLE = (
    ("universal", "universal"), ("entropy_neuron", "entropy neuron"), ("deactivates", "attention deactivation"),
    ("probe_features", "single-neuron probe"),  # a non-empty list of features
)
VOCAB_ROLES = ("prediction", "suppression", "partition")  # as analyses.weights.vocab_roles names them (a torch module)
KIND_ORDER = (*(k for _, k in FLAGS_BEFORE_ROLE), *(f"{role} neuron" for role in VOCAB_ROLES), *(k for _, k in FLAGS_AFTER_ROLE))


def ordered_kinds(kinds: Iterable[str]) -> list[str]:
    """Distinct kind names in KIND_ORDER (any other after them, alphabetically)."""
    return sorted(set(kinds), key=lambda kind: (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind))


def present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def neuron_kinds(row: Mapping[str, Any]) -> list[str]:
    """The kinds the analyses gave a neuron, in the order of the papers (dead, detectors, positional, trigger
    suppression, vocabulary role, universal, entropy, attention deactivation, probes): what the index filters
    by; each page's sections give the details."""
    kinds = [kind for column, kind in FLAGS_BEFORE_ROLE if row.get(column)]
    if present(row, "vocab_role"):
        kinds.append(f"{row['vocab_role']} neuron")
    kinds += [kind for column, kind in FLAGS_AFTER_ROLE if row.get(column)]
    return kinds


def with_kinds(neurons: pl.DataFrame) -> pl.DataFrame:
    """neurons.parquet with `kinds` (list of the kind names `neuron_kinds` gives each row)."""
    kinds = [neuron_kinds(row) for row in neurons.iter_rows(named=True)]
    return neurons.with_columns(kinds=pl.Series(kinds, dtype=pl.List(pl.Utf8)))


OVERLAP_SCHEMA = {
    "model": pl.Utf8, "layer": pl.Int64, "kind": pl.Utf8, "other": pl.Utf8, "n_kind": pl.Int64, "n_other": pl.Int64,
    "n_both": pl.Int64, "share": pl.Float64,
}


def _overlaps(model: str, layer: int | None, kinds: list[list[str]], names: list[str]) -> list[tuple]:
    """Every ordered pair of `names` over one group of neurons (each neuron's kinds)."""
    member = np.array([[name in row for name in names] for row in kinds], dtype=np.int64).reshape(len(kinds), len(names))
    both = member.T @ member
    totals = np.diag(both)
    return [
        (model, layer, a, b, int(totals[i]), int(totals[j]), int(both[i, j]), float(both[i, j] / totals[i]) if totals[i] else None)
        for i, a in enumerate(names) for j, b in enumerate(names)
    ]


def kind_overlaps(neurons: pl.DataFrame) -> pl.DataFrame:
    """How the kinds of different papers overlap: per model, for all its layers (`layer` null) and per layer,
    every ordered pair of the kinds the model has (a kind with itself included): neurons of the kind, of the
    other, of both, and `share` = both / kind, the share of the kind's neurons that are also the other (null
    where the layer has none of the kind). E.g. (universal, token detector): are universal neurons detectors;
    (suppression neuron, suppresses its trigger): do suppression neurons suppress their own triggers."""
    table = neurons if "kinds" in neurons.columns else with_kinds(neurons)
    rows: list[tuple] = []
    for (model,), group in table.group_by("model", maintain_order=True):  # models in the order given
        group = group.sort("layer", "neuron")
        names = ordered_kinds(kind for row in group["kinds"].to_list() for kind in row)
        if not names:
            continue
        rows += _overlaps(model, None, group["kinds"].to_list(), names)
        for (layer,), part in group.group_by("layer", maintain_order=True):
            rows += _overlaps(model, int(layer), part["kinds"].to_list(), names)
    return pl.DataFrame(rows, schema=OVERLAP_SCHEMA, orient="row")


SUMMARY_KEYS = (
    "layers", "neurons", "dead %", "token detectors", "bigram detectors", "positional", "universal %", "single-neuron probes", "best probe",
)  # the report's summary columns, in order


def model_summary(neurons: pl.DataFrame) -> dict[str, Any]:
    """One model's row of the report's summary: layers, neurons, dead share (%), detectors, positional neurons
    by type, universal share (%), single-neuron probes and the best of them (keys absent where the model has
    no such analysis)."""
    n = max(neurons.height, 1)
    summary: dict[str, Any] = {"layers": neurons["layer"].n_unique(), "neurons": neurons.height}
    if "dead" in neurons.columns:
        summary["dead %"] = round(100 * int(neurons["dead"].fill_null(False).sum()) / n, 1)
    for name, column in (("token detectors", "token_detector"), ("bigram detectors", "bigram_detector")):
        if column in neurons.columns:
            summary[name] = int(neurons[column].fill_null(False).sum())
    if "positional" in neurons.columns:
        types = neurons.filter(pl.col("positional").fill_null(False))["positional_type"].value_counts(sort=True)
        summary["positional"] = ", ".join(f"{kind} {count}" for kind, count in types.iter_rows()) or "0"
    if "universal" in neurons.columns:
        summary["universal %"] = round(100 * int(neurons["universal"].fill_null(False).sum()) / n, 1)
    if "probe_features" in neurons.columns:
        probes = neurons.filter(pl.col("probe_features").list.len().fill_null(0) > 0)
        summary["single-neuron probes"] = probes.height
        if probes.height:
            best = probes.sort("probe_f1", descending=True, nulls_last=True).row(0, named=True)
            features = best["probe_features"]
            more = f" (+{len(features) - 2})" if len(features) > 2 else ""
            summary["best probe"] = f"L{best['layer']} N{best['neuron']}, F1 {best['probe_f1']:.2f}: {'; '.join(features[:2])}{more}"
    return summary
