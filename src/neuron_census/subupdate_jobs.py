"""What the rules of FFN sub-update analyses (`workflow/rules/subupdates.smk`, Geva et al. 2022) call: read
inputs, call the package, write outputs atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_census.jobs import (
    PathLike,
    capture_batch_size,
    load_model_and_tokenizer,
    read_shard_for,
    token_tensor,
    write_for_model,
    write_parquet,
)


def subupdate_settings(study: Mapping[str, Any]) -> Any:
    from neuron_census.analyses.subupdates import SubupdateSettings

    return SubupdateSettings(**{k: v for k, v in study.items() if k not in ("dataset", "clusters")})


def subupdate_lens_job(
    model_name: str,
    model_spec: Mapping[str, Any],
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    study: Mapping[str, Any],
    shards: Sequence[PathLike],
    lens_out: PathLike,
    subupdates_out: PathLike,
    threads: int = 1,
) -> None:
    """The logit lens and the dominant and random sub-updates of every layer at `study.predictions` cut
    sequences of the study's shards (read in order, as many as the predictions need)."""
    from neuron_census.analyses.subupdates import cut_positions, lens_pass

    chosen = subupdate_settings(study)
    tokenizer, loaded, device, _ = load_model_and_tokenizer(model_name, model_spec, tokenizer_name, tokenizer_spec, settings, threads)
    blocks, have = [], 0
    for path in shards:
        if have >= chosen.predictions:
            break
        block, _ = read_shard_for(path, tokenizer, f"model '{model_name}'")
        blocks.append(block[: chosen.predictions - have])
        have += len(blocks[-1])
    tokens = np.concatenate(blocks)
    positions = cut_positions(len(tokens), tokens.shape[1], chosen)
    found = lens_pass(loaded.model, loaded.adapter, token_tensor(tokens, device), positions, chosen, batch_size=capture_batch_size(settings))
    write_for_model(found.lens, model_name, lens_out)
    write_for_model(found.subupdates, model_name, subupdates_out)


def subupdate_tables_job(lens: PathLike, subupdates: PathLike, vocab: PathLike, predictions_out: PathLike, labelled_out: PathLike, layers_out: PathLike) -> None:
    """predictions.parquet (the lens per prediction and layer), subupdates.parquet (each chosen sub-update
    with its promotion / elimination labels and its value vector's top tokens) and subupdate_layers.parquet
    (their shares per layer, dominant against random)."""
    from neuron_census.analyses.subupdates import label_subupdates, layer_shares

    lens_table, vocab_table = pl.read_parquet(lens), pl.read_parquet(vocab)
    labelled = label_subupdates(pl.read_parquet(subupdates), lens_table.drop("model"), vocab_table)
    tokens = vocab_table.select("layer", "neuron", "vocab_final_norm", "vocab_top_tokens", "vocab_bottom_tokens")
    labelled = labelled.join(tokens, on=["layer", "neuron"], how="left", maintain_order="left")
    write_parquet(lens_table, predictions_out)
    write_parquet(labelled, labelled_out)
    model = str(lens_table["model"][0])
    write_for_model(layer_shares(labelled), model, layers_out)


def value_clusters_job(
    model_name: str,
    model_spec: Mapping[str, Any],
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    n_clusters: int,
    vocab: Mapping[str, Any],
    assigned_out: PathLike,
    clusters_out: PathLike,
    threads: int = 1,
) -> None:
    """value_clusters.parquet (every value vector's concept cluster, per layer) and clusters.parquet (each
    cluster's size and top tokens), the projections read as `analysis.vocab` says (final norm or not)."""
    from neuron_census.analyses.concepts import cluster_tables

    tokenizer, loaded, _, _ = load_model_and_tokenizer(model_name, model_spec, tokenizer_name, tokenizer_spec, settings, threads)
    assigned, clusters = cluster_tables(
        loaded.adapter, range(loaded.adapter.n_layers), tokenizer.token_strings(), n_clusters=n_clusters,
        final_norm=bool(vocab.get("final_norm", False)), top_n=int(vocab.get("top_n", 10)),
    )
    write_for_model(assigned, model_name, assigned_out)
    write_for_model(clusters, model_name, clusters_out)
