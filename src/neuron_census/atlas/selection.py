"""Which neurons get a page: bounded per layer, so a model of millions of neurons makes thousands of files."""

from __future__ import annotations

import numpy as np
import polars as pl

from neuron_census.analyses.kinds import with_kinds
from neuron_census.config import schema_defaults


def page_neurons(
    neurons: pl.DataFrame, per_layer: int, others: int, seed: int = schema_defaults("atlas")["seed"]
) -> pl.DataFrame:
    """(layer, neuron) of every neuron with a page: per layer, the flagged ones (any kind), at most `per_layer`
    of them (most kinds first, a dead neuron's one kind counting least, then by neuron), and `others`
    unflagged living neurons drawn at random (seeded per layer), so typical neurons have pages too."""
    table = neurons if "kinds" in neurons.columns else with_kinds(neurons)
    table = table.select("layer", "neuron", "kinds").with_columns(
        weight=pl.col("kinds").list.len() - pl.col("kinds").list.contains("dead").cast(pl.Int64) * 0.5
    )
    chosen = []
    for (layer,), group in table.group_by("layer", maintain_order=True):
        flagged = group.filter(pl.col("weight") > 0).sort(["weight", "neuron"], descending=[True, False]).head(per_layer)
        rest = group.filter(pl.col("weight") == 0)["neuron"].to_numpy()
        rng = np.random.default_rng([seed, int(layer)])
        drawn = np.sort(rng.choice(rest, min(others, len(rest)), replace=False)) if len(rest) else rest
        chosen.append(flagged.select("layer", "neuron"))
        chosen.append(pl.DataFrame({"layer": np.full(len(drawn), layer, dtype=np.int64), "neuron": drawn.astype(np.int64)}))
    return pl.concat(chosen).sort("layer", "neuron") if chosen else pl.DataFrame(schema={"layer": pl.Int64, "neuron": pl.Int64})
