"""What the rules of universal-neuron studies call (`workflow/rules/universal.smk`): several models over
the same tokens, interventions on the reference, and the study's tables. Reads inputs, calls the package,
writes outputs atomically, as `neuron_census.jobs.census` does for the rules of one model."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_census.jobs.common import ModelJob, PathLike, read_shard_for, token_tensor, write_for_model, write_parquet


def correlation_job(
    job: ModelJob, models: Mapping[str, Mapping[str, Any]], study: Mapping[str, Any], block: str, shard_path: PathLike, output: PathLike
) -> None:
    """Correlations of one block of layer pairs (`block` = "i-j": the reference's layer group i with group
    j of every other model of `models`, name -> spec) over one token shard, every model run in lockstep on
    the reference's (`job`'s) device."""

    from neuron_census.accumulators.correlation import NeuronCorrelation
    from neuron_census.capture.engine import PairedModel, capture_paired
    from neuron_census.capture.store import write_store
    from neuron_census.models.loading import load_model

    reference = job.name
    placement = _lockstep_placement(job.settings, f"correlations of '{reference}'")
    tokenizer, first, device, dtype = job.load()
    tokens, shard_attrs = job.read_shard(shard_path, tokenizer)
    loaded = {name: first if name == reference else load_model(name, spec, device=device, dtype=dtype) for name, spec in models.items()}
    for name, model in loaded.items():
        if study["blocks"] > model.adapter.n_layers:
            raise ValueError(f"universal.{reference}.blocks: {study['blocks']} blocks, but model '{name}' has {model.adapter.n_layers} layers")
    # each model's layers in `blocks` contiguous groups as equal as they come
    groups = {name: [tuple(part.tolist()) for part in np.array_split(np.arange(model.adapter.n_layers), int(study["blocks"]))]
              for name, model in loaded.items()}
    first, second = (int(part) for part in block.split("-"))
    others = [name for name in models if name != reference]
    layers_b = groups[others[0]][second]
    for name in others[1:]:
        if groups[name][second] != layers_b or loaded[name].adapter.n_neurons != loaded[others[0]].adapter.n_neurons:
            raise ValueError(f"universal neurons of '{reference}': models '{others[0]}' and '{name}' differ in shape")
    widths = {name: model.adapter.n_neurons for name, model in loaded.items()}
    correlation = NeuronCorrelation(
        reference, others, groups[reference][first], layers_b, widths, device,
        dropped_tokens=dropped_tokens(tokenizer, study), preactivation=study["activation"] == "pre",
    )
    batch_size = job.batch_size
    cost = NeuronCorrelation.memory(
        widths[reference], len(correlation.layers_a), widths[others[0]], len(layers_b), len(others), batch_size * tokens.shape[1]
    )
    print(
        f"universal neurons of '{reference}', block {block} (layers {list(correlation.layers_a)} x {list(layers_b)}): "
        + ", ".join(f"{key} {size / 1e9:.2f} GB" for key, size in cost.items()),
        file=sys.stderr,
    )
    paired = {name: PairedModel(model.model, model.adapter, tokenizer.fingerprint) for name, model in loaded.items()}
    capture_paired(
        paired, tokens, [correlation], layers=correlation.layers, first_seq_id=0, has_bos=bool(shard_attrs["has_bos"]),
        batch_size=batch_size, device=device, placement=placement, read_preactivation=study["activation"] == "pre",
    )
    state = correlation.state()
    attrs = {"models": [str(name) for name in state.pop("models")], "block": block, "dataset": shard_attrs["dataset"]}
    write_store(output, attrs | {"shard": int(shard_attrs["shard"])}, {NeuronCorrelation.name: state})


def dropped_tokens(tokenizer: Any, study: Mapping[str, Any]) -> list[int]:
    """The token ids a study leaves out: the special ones and, with `drop_newlines`, line breaks."""
    return sorted(tokenizer.special_ids | set(tokenizer.newline_ids() if study["drop_newlines"] else ()))


def token_features_job(
    tokenizer_name: str, tokenizer_spec: Mapping[str, Any], study: Mapping[str, Any], shards: Sequence[PathLike], output: PathLike
) -> None:
    """The binary token and context features of a study's neuron families: word forms most frequent over
    the study's shards (one shard read at a time), letters, token classes, positions, and the sources
    (domains) the shards' tokens come from."""
    from neuron_census.analyses.features import feature_table, frequent_forms
    from neuron_census.data.corpus import read_token_sources
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    texts = tokenizer.token_texts()
    seq_len = 0
    sources: set[str] = set()

    def tokens() -> Iterator[np.ndarray]:
        nonlocal seq_len
        for path in shards:
            block, _ = read_shard_for(path, tokenizer, "the study's token features")
            seq_len = block.shape[1]
            labelled = read_token_sources(path)
            if labelled is not None:
                codes, names = labelled
                sources.update(names[code] for code in np.unique(codes) if code >= 0)
            yield block

    forms = frequent_forms(tokens(), texts, tokenizer.special_ids, int(study["token_groups"]))
    write_parquet(feature_table(texts, forms, tokenizer.special_ids, seq_len, sorted(sources)), output)


def neuron_properties_job(job: ModelJob, study: Mapping[str, Any], features: PathLike, shard_path: PathLike, output: PathLike) -> None:
    """Over one shard of a study's tokens (the ones its correlations count), the reference's pre-activation
    moments and activation frequency, and its per-feature activation sums (families)."""
    from neuron_census.accumulators.feature_moments import FeatureMoments
    from neuron_census.accumulators.preactivation_moments import PreactivationMoments
    from neuron_census.analyses.features import feature_matrices
    from neuron_census.capture.engine import PairedModel, capture_paired
    from neuron_census.capture.store import write_store
    from neuron_census.data.corpus import read_token_sources

    reference = job.name
    placement = _lockstep_placement(job.settings, f"neuron properties of '{reference}'")
    tokenizer, loaded, device, _ = job.load()
    tokens, shard_attrs = job.read_shard(shard_path, tokenizer)
    adapter = loaded.adapter
    layers = list(range(adapter.n_layers))
    dropped = dropped_tokens(tokenizer, study)
    matrices = feature_matrices(pl.read_parquet(features), adapter.vocab_size, tokens.shape[1])
    labelled = read_token_sources(shard_path)
    contexts = None if labelled is None else matrices.context_columns(*labelled)
    accumulators = [
        PreactivationMoments(reference, layers, adapter.n_neurons, device, dropped_tokens=dropped),
        FeatureMoments(
            reference, layers, adapter.n_neurons, matrices, device, dropped_tokens=dropped, preactivation=study["activation"] == "pre",
            contexts=contexts,
        ),
    ]
    capture_paired(
        {reference: PairedModel(loaded.model, adapter, tokenizer.fingerprint)}, tokens, accumulators, layers=layers, first_seq_id=0,
        has_bos=bool(shard_attrs["has_bos"]), batch_size=job.batch_size, device=device, placement=placement, read_preactivation=True,
    )
    attrs = {"models": [reference], "dataset": shard_attrs["dataset"], "shard": int(shard_attrs["shard"])}
    write_store(output, attrs, {accumulator.name: accumulator.state() for accumulator in accumulators})


def entropy_job(
    job: ModelJob, study: Mapping[str, Any], weights: str, shard_path: PathLike, curves_out: PathLike, neurons_out: PathLike
) -> None:
    """Entropy neurons of the reference's last layer: its candidates and random neurons set to a range of
    values on the first `entropy.sequences` sequences of one shard of the study's tokens."""
    from neuron_census.analyses.entropy import EntropySettings, chosen_neurons, entropy_curves, entropy_neurons
    from neuron_census.analyses.weights import weight_columns

    entropy = EntropySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in study["entropy"].items()})
    tokenizer, loaded, device, _ = job.load()
    tokens, shard_attrs = job.read_shard(shard_path, tokenizer)
    last = loaded.adapter.n_layers - 1
    candidates, random = chosen_neurons(weight_columns(loaded.adapter, [last], processing=weights), last, entropy)
    batch = token_tensor(tokens[: entropy.sequences], device)
    curves = entropy_curves(
        loaded.model, loaded.adapter, batch, last, candidates, random, entropy.values,
        batch_size=job.batch_size, has_bos=bool(shard_attrs["has_bos"]),
    )
    write_for_model(curves, job.name, curves_out)
    write_for_model(entropy_neurons(curves, entropy.min_change), job.name, neurons_out)


def attention_job(job: ModelJob, study: Mapping[str, Any], shard_path: PathLike, scores_out: PathLike, paths_out: PathLike) -> None:
    """Attention-deactivation scores of every neuron of the reference, and the path ablation of its top
    pairs on the first `attention.sequences` sequences of one shard of the study's tokens."""
    from neuron_census.analyses.attention import AttentionSettings, bos_keys, deactivation_scores, path_ablation, top_pairs

    attention = AttentionSettings(**study["attention"])
    tokenizer, loaded, device, _ = job.load()
    if tokenizer.bos_id is None:
        raise ValueError(f"attention-deactivation neurons of '{job.name}': tokenizer '{job.tokenizer_name}' has no BOS token")
    tokens, _ = job.read_shard(shard_path, tokenizer)
    scores = deactivation_scores(loaded.adapter, bos_keys(loaded.model, loaded.adapter, tokenizer.bos_id), tokens.shape[1])
    pairs = top_pairs(scores, attention.pairs)
    paths = path_ablation(
        loaded.model, loaded.adapter, token_tensor(tokens[: attention.sequences], device), pairs,
        batch_size=job.batch_size, min_change=attention.min_change,
    )
    write_for_model(scores, job.name, scores_out)
    write_for_model(paths, job.name, paths_out)


def read_study_store(path: PathLike) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """A study store's attributes and states (correlations get their model names back)."""
    from neuron_census.accumulators.correlation import NeuronCorrelation
    from neuron_census.capture.store import read_store

    attrs, states = read_store(path)
    if NeuronCorrelation.name in states:
        states[NeuronCorrelation.name] = states[NeuronCorrelation.name] | {"models": np.asarray(attrs["models"])}
    return attrs, states


def study_merge_job(inputs: Sequence[PathLike], output: PathLike) -> None:
    """Shards of a study store (a block of correlations, or the properties) combined exactly, one shard
    read at a time (two states in memory)."""
    from neuron_census.accumulators.base import PAIRED
    from neuron_census.accumulators.correlation import NeuronCorrelation
    from neuron_census.capture.store import write_store

    attrs, states = read_study_store(inputs[0])
    for path in inputs[1:]:
        more = read_study_store(path)[1]
        if sorted(more) != sorted(states):
            raise ValueError(f"study store {path} holds {sorted(more)}, {inputs[0]} holds {sorted(states)}")
        states = {name: PAIRED[name].merge([state, more[name]]) for name, state in states.items()}
    if NeuronCorrelation.name in states:
        states[NeuronCorrelation.name].pop("models")
    write_store(output, {key: value for key, value in attrs.items() if key in ("models", "block", "dataset")}, states)


def universal_tables_job(
    reference: str, model_spec: Mapping[str, Any], blocks: Sequence[PathLike], properties: PathLike, features: PathLike,
    study: Mapping[str, Any], weights: str, matches_out: PathLike, universal_out: PathLike, threads: int = 1,
) -> None:
    """The best match of every reference neuron in every other model, its universality, its activation
    properties and family over the same tokens, and its weight statistics (read `weights`: processed or
    raw)."""
    import torch

    from neuron_census.accumulators.correlation import NeuronCorrelation
    from neuron_census.accumulators.feature_moments import FeatureMoments
    from neuron_census.accumulators.preactivation_moments import PreactivationMoments
    from neuron_census.analyses.families import family_columns
    from neuron_census.analyses.universal import activation_properties, best_matches, universality
    from neuron_census.analyses.weights import weight_columns
    from neuron_census.models.loading import load_model

    states = (read_study_store(path)[1][NeuronCorrelation.name] for path in blocks)  # one block in memory at a time
    matches = best_matches(states, seed=int(study["rotation_seed"]))
    table = universality(matches, threshold=float(study["threshold"]))
    measured = read_study_store(properties)[1]
    families = family_columns([measured[FeatureMoments.name]], pl.read_parquet(features), threshold=float(study["family_threshold"]))
    torch.set_num_threads(max(1, threads))
    loaded = load_model(reference, model_spec)  # on the CPU: a few matrix products per layer
    keys = ["layer", "neuron"]
    for columns in (
        activation_properties([measured[PreactivationMoments.name]]),
        families,
        weight_columns(loaded.adapter, sorted(set(table["layer"].to_list())), processing=weights),
    ):
        table = table.join(columns, on=keys, how="left", maintain_order="left")
    write_for_model(matches, reference, matches_out)
    write_for_model(table, reference, universal_out)


def _lockstep_placement(settings: Mapping[str, Any], what: str) -> Any:
    """The capture placement of a paired capture, which needs every layer of a batch before the next batch."""
    from neuron_census.capture.placement import Placement

    placement = Placement.from_config(settings)
    if placement.strategy == "layerwise":
        raise ValueError(f"{what} need the resident or offload strategy, not layerwise")
    return placement

