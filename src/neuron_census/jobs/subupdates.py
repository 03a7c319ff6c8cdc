"""What the rules of FFN sub-update analyses (`workflow/rules/subupdates.smk`, Geva et al. 2022) call: read
inputs, call the package, write outputs atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_census.jobs.common import ModelJob, PathLike, stacked_shards, token_tensor, write_for_model, write_parquet


def subupdate_settings(study: Mapping[str, Any]) -> Any:
    from neuron_census.analyses.subupdates import SubupdateSettings

    return SubupdateSettings(**{k: v for k, v in study.items() if k not in ("dataset", "clusters", "early_exit")})


def subupdate_lens_job(
    job: ModelJob, study: Mapping[str, Any], shards: Sequence[PathLike], lens_out: PathLike, subupdates_out: PathLike, vectors_out: PathLike
) -> None:
    """The logit lens and the dominant and random sub-updates of every layer at `study.predictions` cut
    sequences of the study's shards (read in order, as many as the predictions need), and the residual and
    FFN-output vectors at each cut (a zarr group, arrays `residual` and `ffn` [P, L, d])."""
    from neuron_census.analyses.subupdates import cut_positions, lens_pass

    chosen = subupdate_settings(study)
    model_name = job.name
    tokenizer, loaded, device, _ = job.load()
    blocks, have = [], 0
    for path in shards:
        if have >= chosen.predictions:
            break
        block, _ = job.read_shard(path, tokenizer)
        blocks.append(block[: chosen.predictions - have])
        have += len(blocks[-1])
    tokens = np.concatenate(blocks)
    positions = cut_positions(len(tokens), tokens.shape[1], chosen)
    found = lens_pass(loaded.model, loaded.adapter, token_tensor(tokens, device), positions, chosen, batch_size=job.batch_size)
    write_for_model(found.lens.join(prediction_texts(tokenizer, tokens, positions, found.lens), on="prediction", how="left", maintain_order="left"), model_name, lens_out)
    write_for_model(found.subupdates.with_columns(scoring=pl.lit(chosen.scoring)), model_name, subupdates_out)
    write_vectors(found.residual, found.ffn, model_name, vectors_out)


def write_vectors(residual: np.ndarray, ffn: np.ndarray, model: str, output: PathLike) -> None:
    """The lens job's vectors at the cuts, float32 [P, L, d] each, in one zarr group written atomically."""
    import zarr

    from neuron_census.atomic import atomic_path

    with atomic_path(output) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        for name, array in (("residual", residual), ("ffn", ffn)):
            group.create_array(name, data=np.ascontiguousarray(array, dtype=np.float32), chunks=(min(len(array), 1024) or 1, *array.shape[1:]))
        group.attrs.update({"model": model})


def read_vectors(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(residual, ffn) [P, L, d] float32, as the lens job wrote them."""
    import zarr

    group = zarr.open_group(store=str(path), mode="r")
    return np.asarray(group["residual"][...]), np.asarray(group["ffn"][...])


CONTEXT_TOKENS = 12  # the tokens up to a cut that a prediction's `context` text shows


def prediction_texts(tokenizer: Any, tokens: np.ndarray, positions: np.ndarray, lens: pl.DataFrame) -> pl.DataFrame:
    """Per prediction, what a reader needs to recognise it: the text of its last CONTEXT_TOKENS tokens up
    to the cut (`context`) and of the final prediction (`final_text`)."""
    finals = lens.filter(pl.col("layer") == 0).sort("prediction")["final_token"].to_list()
    contexts = [tokens[i, max(0, p + 1 - CONTEXT_TOKENS) : p + 1].tolist() for i, p in enumerate(positions)]
    texts = tokenizer.token_texts()
    return pl.DataFrame({
        "prediction": np.arange(len(positions)),
        "context": tokenizer.backend.decode_batch(contexts, skip_special_tokens=True),
        "final_text": [texts[t] for t in finals],
    }, schema={"prediction": pl.Int64, "context": pl.Utf8, "final_text": pl.Utf8})


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


def value_clusters_job(job: ModelJob, n_clusters: int, vocab: Mapping[str, Any], assigned_out: PathLike, clusters_out: PathLike) -> None:
    """value_clusters.parquet (every value vector's concept cluster, per layer) and clusters.parquet (each
    cluster's size and top tokens), the projections read as `analysis.vocab` says (final norm or not)."""
    from neuron_census.analyses.concepts import cluster_tables

    tokenizer, loaded, _, _ = job.load()
    assigned, clusters = cluster_tables(
        loaded.adapter, range(loaded.adapter.n_layers), tokenizer.token_strings(), n_clusters=n_clusters,
        final_norm=bool(vocab["final_norm"]), top_n=int(vocab["top_n"]),
    )
    write_for_model(assigned, job.name, assigned_out)
    write_for_model(clusters, job.name, clusters_out)


def steering_job(
    job: ModelJob, study: Mapping[str, Any], vocab: PathLike, prompts: PathLike, shards: Sequence[PathLike],
    generations_out: PathLike, summary_out: PathLike,
) -> None:
    """steering.parquet (each prompt's continuation and score, with and without the chosen value vectors
    set) and steering_summary.parquet (per condition: the scorer's rate, the mean score, the perplexity of
    `perplexity_sequences` held-out sequences, and which value vectors were set with their top tokens)."""
    from neuron_census.analyses.steering import (
        SteeringSettings, concept_values, describe_values, generate, listed_values, make_scorer, perplexity, read_prompts,
        steering_interventions, steering_summary,
    )
    from neuron_census.interventions import intervened

    chosen = SteeringSettings(
        value=float(study["value"]), target=study["target"], new_tokens=int(study["new_tokens"]), beams=int(study["beams"]),
        max_prompts=int(study["max_prompts"]), challenging=bool(study["challenging"]), concept_values=int(study["concept_values"]),
        perplexity_sequences=int(study["perplexity_sequences"]), batch_size=int(study["batch_size"]),
    )
    scorer_spec = dict(study["scorer"])
    if scorer_spec["name"] == "lexicon" and not scorer_spec.get("words"):
        scorer_spec["words"] = list(study["concept"])
    scorer = make_scorer(scorer_spec)
    texts = read_prompts(prompts, chosen)
    model_name = job.name
    tokenizer, loaded, device, _ = job.load()
    vocab_table = pl.read_parquet(vocab)
    token_texts = tokenizer.token_texts()
    values = listed_values(study["values"]) or concept_values(vocab_table, token_texts, study["concept"], chosen.concept_values)
    if not values:
        raise ValueError(f"steering of model '{model_name}': no value vector's top tokens hold a word of the concept {list(study['concept'])}")
    interventions = steering_interventions(values, chosen)
    with intervened(loaded.model, interventions):  # refuses layers and neurons outside the model before any generation
        pass
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    prompt_ids = [bos + ids for ids in tokenizer.encode_batch(texts)]
    sequences = stacked_shards(shards, tokenizer, f"model '{model_name}'")[: chosen.perplexity_sequences]
    held_out = token_tensor(sequences, device)
    parts, costs = [], {}
    for condition, applied in (("baseline", []), ("steered", interventions)):
        continuations = generate(loaded.model, prompt_ids, applied, chosen)
        decoded = tokenizer.backend.decode_batch(continuations, skip_special_tokens=True)
        parts.append(pl.DataFrame({
            "condition": condition, "prompt_id": np.arange(len(texts)), "prompt": texts, "continuation": decoded,
            "continuation_ids": continuations, "score": scorer.score(decoded),
        }, schema_overrides={"continuation_ids": pl.List(pl.Int64)}))
        costs[condition] = perplexity(loaded.model, held_out, applied, chosen.batch_size)
    generations = pl.concat(parts)
    tops = {(row["layer"], row["neuron"]): row["vocab_top_tokens"] for row in vocab_table.select("layer", "neuron", "vocab_top_tokens").iter_rows(named=True)}
    value_tokens = [f"{layer}:{neuron} " + " ".join(tops.get((layer, neuron), [])[:5]) for layer, neurons in values.items() for neuron in neurons]
    summary = steering_summary(generations, costs, scorer.threshold).with_columns(
        scorer=pl.lit(scorer.name), values=pl.lit(describe_values(values)), n_values=pl.lit(sum(map(len, values.values()))),
        value_tokens=pl.lit(value_tokens, dtype=pl.List(pl.Utf8)), set_to=pl.lit(chosen.value), target=pl.lit(chosen.target),
    )
    write_for_model(generations, model_name, generations_out)
    write_for_model(summary, model_name, summary_out)


def early_exit_job(
    predictions: PathLike, subupdates: PathLike, value_clusters: PathLike, vectors: PathLike, settings: Mapping[str, Any],
    table_out: PathLike, summary_out: PathLike,
) -> None:
    """early_exit.parquet (accuracy and layers saved per method and split) and early_exit_summary.parquet
    (their means and deviations over splits): the cluster-overlap rule on the dominant sub-updates' concept
    clusters, logistic-regression probes on the lens job's vectors, and the oracle."""
    from neuron_census.analyses.early_exit import EarlyExitSettings, early_exit_summary, early_exit_table

    lens = pl.read_parquet(predictions).sort("prediction", "layer")
    model = str(lens["model"][0])
    n_layers = int(lens["layer"].max()) + 1
    top_after = lens["top_after"].to_numpy().reshape(-1, n_layers)
    saturation = lens.filter(pl.col("layer") == 0)["saturation_layer"].to_numpy()
    ids = dominant_cluster_ids(pl.read_parquet(subupdates), pl.read_parquet(value_clusters), len(top_after), n_layers)
    residual, ffn = read_vectors(vectors)
    chosen = EarlyExitSettings(**settings)
    table = early_exit_table(top_after, saturation, ids, residual, ffn, chosen)
    write_for_model(table, model, table_out)
    write_for_model(early_exit_summary(table), model, summary_out)


def dominant_cluster_ids(subupdates: pl.DataFrame, value_clusters: pl.DataFrame, n_predictions: int, n_layers: int) -> np.ndarray:
    """[P, L, top]: the concept cluster of each prediction's dominant sub-updates per layer, in score order."""
    dominant = subupdates.filter(pl.col("kind") == "dominant").join(
        value_clusters.select("layer", "neuron", "cluster"), on=["layer", "neuron"], how="left"
    ).sort("prediction", "layer", "place")
    if dominant["cluster"].null_count():
        raise ValueError("a dominant sub-update's neuron has no concept cluster: value_clusters.parquet is of another model")
    return dominant["cluster"].to_numpy().reshape(n_predictions, n_layers, -1)
