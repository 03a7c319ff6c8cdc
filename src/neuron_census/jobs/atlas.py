"""What the `atlas` rule calls: read a model's tables, stores and token shards, write its atlas directory
(index, per-layer row scripts, neuron pages) atomically. No model is loaded."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_census.jobs.common import PathLike, stacked_shards, store_readers

SUBUPDATE_EXAMPLES = 5  # dominant sub-update examples shown per page


def _finite(value: float | None) -> float | None:
    """A number for the row scripts: JSON has no NaN."""
    return None if value is None or not np.isfinite(value) else float(value)


def _subupdates(subupdates: PathLike | None, predictions: PathLike | None) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (layer, neuron): how many predictions its sub-update is dominant in, and the highest-scoring few."""
    if subupdates is None or predictions is None:
        return {}
    contexts = pl.read_parquet(predictions).unique("prediction").select("prediction", "context", "final_text")
    dominant = pl.read_parquet(subupdates).filter(pl.col("kind") == "dominant").join(contexts, on="prediction", how="left")
    out = {}
    for (layer, neuron), group in dominant.group_by("layer", "neuron"):
        best = group.sort("score", descending=True).head(SUBUPDATE_EXAMPLES)
        examples = [
            {"score": score, "promotes": promotes, "context": f"{context or ''} → {final or ''}".replace("\n", "↵")}
            for score, promotes, context, final in best.select("score", "promotes", "context", "final_text").iter_rows()
        ]
        out[(int(layer), int(neuron))] = {"count": len(group), "examples": examples}
    return out


def atlas_job(
    model_name: str,
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    stores: Mapping[str, PathLike],
    shards: Mapping[str, Sequence[PathLike]],
    neurons: PathLike,
    settings: Mapping[str, Any],
    output: PathLike,
    matches: PathLike | None = None,
    subupdates: PathLike | None = None,
    predictions: PathLike | None = None,
) -> None:
    """The atlas of one model: `stores` and `shards` per capture dataset (top examples, firing by position),
    `neurons` its neurons.parquet, and where the model has them its universal best matches and sub-updates."""
    from neuron_census.analyses.kinds import ordered_kinds, with_kinds
    from neuron_census.atlas.examples import examples_table, top_examples
    from neuron_census.atlas.index import index_page, layer_rows_script
    from neuron_census.atlas.pages import neuron_page
    from neuron_census.atlas.selection import page_neurons
    from neuron_census.atomic import atomic_path
    from neuron_census.capture.store import merged_layer_state
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    texts = [text.replace("\n", "↵") for text in tokenizer.token_texts()]
    datasets = list(stores)
    readers = store_readers([stores[name] for name in datasets], ["top_k", "position_fire_count"], f"model '{model_name}''s atlas")
    tokens_of = [stacked_shards(shards[name], tokenizer, f"model '{model_name}''s atlas") for name in datasets]  # row = sequence id
    table = with_kinds(pl.read_parquet(neurons))
    paged = page_neurons(table, int(settings["pages_per_layer"]), int(settings["other_pages"]), int(settings["seed"]))
    paged_set = set(paged.iter_rows())
    partners = {} if matches is None else {
        (int(layer), int(neuron)): group.sort("other").to_dicts()
        for (layer, neuron), group in pl.read_parquet(matches).group_by("layer", "neuron")
    }
    dominant = _subupdates(subupdates, predictions)
    layers = [int(x) for x in readers[0].attrs["layers"]]
    kinds = ordered_kinds(kind for row in table["kinds"].to_list() for kind in row)
    summary = []
    with atomic_path(output) as out:
        (out / "rows").mkdir(parents=True)
        (out / "neurons").mkdir()
        for slot, layer in enumerate(layers):
            rows = table.filter(pl.col("layer") == layer).sort("neuron")
            if rows.is_empty():
                continue
            on_page = [n for n in rows["neuron"].to_list() if (layer, n) in paged_set]
            has_page = set(on_page)
            top = [reader.layer_state("top_k", slot) for reader in readers]
            picked = top_examples(*(np.stack([np.asarray(t[key]).reshape(np.shape(t[key])[-2:]) for t in top]) for key in ("values", "seq", "pos")), int(settings["examples"]))
            examples = examples_table(layer, on_page, picked, datasets, lambda d, seq: tokens_of[d][seq], texts, int(settings["before"]), int(settings["after"]))
            by_neuron = {n: group.to_dicts() for (n,), group in examples.group_by("neuron")}
            position = merged_layer_state(readers, "position_fire_count", slot)
            per_position = np.asarray(position["tokens"]).reshape(-1)  # counted tokens at each position
            counted = per_position > 0
            fired = np.asarray(position["counts"]).reshape(per_position.size, -1)[counted]  # rates only for the pages' neurons
            for row in rows.filter(pl.col("neuron").is_in(on_page)).iter_rows(named=True):
                neuron = row["neuron"]
                for side in ("top", "bottom"):  # tokens as they read in text, not the vocabulary's raw strings
                    if row.get(f"vocab_{side}_ids"):
                        row[f"vocab_{side}_tokens"] = [texts[i] for i in row[f"vocab_{side}_ids"]]
                rates = fired[:, neuron] / per_position[counted]
                page = neuron_page(model_name, row, by_neuron.get(neuron, []), rates, partners.get((layer, neuron), []), dominant.get((layer, neuron)))
                (out / "neurons" / f"L{layer}-N{neuron}.html").write_text(page, encoding="utf-8")
            script_rows = [
                [
                    row["neuron"], _finite(row.get("fire_freq")), "; ".join(row["kinds"]),
                    " ".join([*(row.get("detected_token_strings") or []), *(row.get("detected_bigrams") or [])]),
                    "; ".join(row.get("probe_features") or []),
                    f"neurons/L{layer}-N{row['neuron']}.html" if row["neuron"] in has_page else "",
                ]
                for row in rows.iter_rows(named=True)
            ]
            (out / "rows" / f"layer-{layer}.js").write_text(layer_rows_script(layer, script_rows), encoding="utf-8")
            per_kind = {kind: int(rows["kinds"].list.contains(kind).sum()) for kind in kinds}
            summary.append({"layer": layer, "neurons": len(rows), "counts": per_kind, "pages": len(on_page)})
        n_pages = sum(s["pages"] for s in summary)
        index = index_page(model_name, [s["layer"] for s in summary], kinds, summary, n_pages, int(settings["pages_per_layer"]), int(settings["other_pages"]))
        (out / "index.html").write_text(index, encoding="utf-8")
    print(f"atlas of '{model_name}': {n_pages} neuron pages over {len(summary)} layers", file=sys.stderr, flush=True)
