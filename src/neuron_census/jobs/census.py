"""One function per pipeline job: read inputs, call the pure core, write outputs atomically.

Workflow scripts only unpack Snakemake's inputs and params (builtins) and call these, so every job can
also be run and tested from Python without Snakemake.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from neuron_census.atomic import atomic_path
from neuron_census.config import schema_defaults
from neuron_census.jobs.common import ModelJob, PathLike, stacked_shards, store_readers, write_parquet

if TYPE_CHECKING:
    import torch

    from neuron_census.capture.placement import Placement
    from neuron_census.capture.settings import CaptureSettings


def tokenize_job(
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    dataset_name: str,
    dataset_spec: Mapping[str, Any],
    shard: int,
    output: PathLike,
    previous: PathLike | None = None,
) -> None:
    """One token shard. A text dataset's shard records where the stream stands after it, and with the
    previous shard given (`previous`) reads and tokenizes only its own text from there: making n shards
    tokenizes the text once, not 1 + 2 + ... + n shard's worth."""
    import hashlib
    import json

    from neuron_census.data.corpus import (
        TEXT_SOURCES, StreamCursor, read_stream_end, shard_sequences, source_files, text_shard, write_token_shard,
    )
    from neuron_census.data.inputs import files_fingerprint
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    settings = {k: v for k, v in dataset_spec.items() if k != "n_shards"}
    spec = {**settings, "n_shards": shard + 1}  # shard i does not depend on n_shards
    if dataset_spec.get("source") not in TEXT_SOURCES:
        tokens = shard_sequences(spec, tokenizer, shard, Path("."), dataset=dataset_name)
        sources = None
        if dataset_spec.get("source") == "planted":
            from neuron_census.testing.planted import designed_sources

            sources = designed_sources(tokens)
        write_token_shard(output, tokens, tokenizer=tokenizer, dataset=dataset_name, shard=shard, sources=sources)
        return
    # the text's version is part of the stream: a shard never goes on from one made of another version
    text = files_fingerprint(source_files(dataset_spec, Path("."), dataset=dataset_name))
    described = json.dumps([tokenizer.fingerprint, settings, text], sort_keys=True, default=str)
    stream = hashlib.sha256(described.encode()).hexdigest()[:16]
    cursor = read_stream_end(previous, stream) if previous is not None else None
    if previous is not None and cursor is None:
        print(f"tokenize: {previous} records no stream position of these settings and text; reading from the start", file=sys.stderr)
    tokens, sources, end = text_shard(spec, tokenizer, shard, Path("."), name=dataset_name, cursor=cursor or StreamCursor())
    write_token_shard(
        output, tokens, tokenizer=tokenizer, dataset=dataset_name, shard=shard, stream_end=(end, stream), text_version=text,
        sources=(sources, end.source_names),
    )


def train_tokenizer_job(spec: Mapping[str, Any], dataset_spec: Mapping[str, Any], output: PathLike) -> None:
    """Train a byte-level BPE tokenizer on the train-split documents of a dataset (never held-out text)."""
    from neuron_census.data.bpe import train_bpe_tokenizer
    from neuron_census.data.corpus import corpus_texts

    texts = corpus_texts(dataset_spec, Path("."), int(spec["max_chars"]))
    train_bpe_tokenizer(texts, int(spec["vocab_size"]), Path(output))


def train_job(
    run_name: str,
    run: Mapping[str, Any],
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    shards: Sequence[PathLike],
    output: PathLike,
    threads: int = 1,
) -> None:
    """Train one OPT run on the given token shards; checkpoints land in `output`/step-N. It trains in a hidden
    sibling that becomes `output` when done: Snakemake deletes a failed job's outputs, not that folder, so a
    rerun resumes from its resume state (unless saved with other trajectory settings)."""
    import shutil

    import torch

    from neuron_census.data.tokenization import load_tokenizer
    from neuron_census.training.train import TrainConfig, resumable, train_opt

    torch.set_num_threads(max(1, threads))
    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    tokens = stacked_shards(shards, tokenizer, f"train run '{run_name}'")
    fields = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in run.items() if k in fields})
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError(f"train run '{run_name}': tokenizer '{tokenizer_name}' needs a BOS and an EOS token")
    output = Path(output)
    work = output.with_name(f".{output.name}.partial")  # outside the output, which Snakemake may delete
    if work.exists() and not resumable(work, config):
        print(f"train run '{run_name}': discarding {work}: it holds no resume state of these settings", file=sys.stderr)
        shutil.rmtree(work)
    train_opt(
        tokens, config, work, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
        pad_id=1,  # OPT's padding id, kept by the pipeline's BPE tokenizers; packed sequences are never padded
        tokenizer_dir=Path(tokenizer_spec["path"]) if tokenizer_spec.get("source") == "local" else None,
    )
    if output.exists():
        shutil.rmtree(output)
    os.replace(work, output)


def capture_job(model: ModelJob, shard_path: PathLike, output: PathLike) -> None:
    """Capture one (model, dataset, shard) into one zarr store, written as capture hands layers over (by a
    writer thread unless `write_behind` is false) into a temporary that becomes the output only when the job
    succeeds. Offloaded weights and kept hidden states live in a temporary folder removed when the job ends."""
    from neuron_census.capture.engine import capture_tokens
    from neuron_census.capture.layer_states import written_behind
    from neuron_census.capture.placement import Placement, temporary_folder
    from neuron_census.capture.settings import CaptureSettings, resolve_layers
    from neuron_census.capture.store import writing_store

    model_name = model.name
    placement = Placement.from_config(model.settings)
    capture_settings = CaptureSettings.from_config(model.settings)
    with temporary_folder(placement.offload_dir) as folder:
        tokenizer, loaded, device, dtype = model.load(placement, folder)
        adapter = loaded.adapter
        tokens, shard_attrs = model.read_shard(shard_path, tokenizer)
        shard = int(shard_attrs["shard"])
        layers = resolve_layers(capture_settings.layers, adapter.n_layers, model_name)
        ngram_layers = capture_settings.ngram_layers
        outside = [] if isinstance(ngram_layers, str) else sorted({int(x) for x in ngram_layers} - set(layers))
        if outside:  # their n-gram columns would be empty; hub models: the config alone could not show this at parse time
            raise ValueError(f"model '{model_name}': capture.ngram_layers {outside} are not among the analysed layers {list(layers)}")
        report_statistics_memory(model_name, capture_settings, adapter, layers, tokens.shape, device, placement)
        attrs = {
            "model": model_name,
            "datasets": [shard_attrs["dataset"]],
            "sources": [f"{shard_attrs['dataset']}/{shard}"],
            "layers": list(layers),
            "n_layers_total": adapter.n_layers,
            "n_neurons": adapter.n_neurons,
            "seq_len": int(tokens.shape[1]),
            "vocab_size": adapter.vocab_size,
            "tokenizer": model.tokenizer_name,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "fire_rule": capture_settings.fire_rule,
            "activation": adapter.activation,
            "has_bos": bool(shard_attrs["has_bos"]),
            "text_versions": {shard_attrs["dataset"]: shard_attrs.get("text_version")},
            "top_k": capture_settings.top_k,
            "dtype": str(dtype).removeprefix("torch."),
            "strategy": placement.strategy,
        }
        with writing_store(output, attrs) as store, written_behind(store, bool(model.capture["write_behind"])) as sink:
            capture_tokens(
                loaded.model, adapter, tokens, model_name=model_name, first_seq_id=shard * int(shard_attrs["n_sequences"]),
                has_bos=bool(shard_attrs["has_bos"]), settings=capture_settings, device=device, placement=placement,
                offload_dir=folder, sink=sink,
            )


def report_statistics_memory(
    model_name: str,
    settings: CaptureSettings,
    adapter: Any,
    layers: Sequence[int],
    tokens_shape: tuple[int, int],
    device: torch.device,
    placement: Placement,
) -> None:
    """Say on stderr how much device memory the statistics can take, and warn if that exceeds what is free
    (only a warning: the bound is reached only when every neuron's tables are full)."""
    import torch

    from neuron_census.accumulators import Geometry, describe_bound, statistics_memory

    n_seq, seq_len = tokens_shape
    geometry = Geometry(layers, adapter.n_neurons, seq_len, adapter.vocab_size, adapter.n_layers)
    layerwise = placement.strategy == "layerwise"
    memory = statistics_memory(settings, geometry, layerwise=layerwise, n_tokens=n_seq * seq_len)
    bounds = {name: bound.device for name, bound in memory.items()}
    host = {name: bound.host for name, bound in memory.items()}
    print(f"capture '{model_name}': statistics on {device} {describe_bound(bounds)}", file=sys.stderr)
    print(f"capture '{model_name}': statistics in host memory {describe_bound(host)}", file=sys.stderr)
    needed = sum(bounds.values())
    if device.type == "cuda" and needed > (free := torch.cuda.mem_get_info(device)[0]):
        advice = "" if layerwise else "capture.strategy: layerwise (one layer's statistics on the GPU) or "
        print(
            f"warning: capture '{model_name}': the statistics can grow to {needed / 1e9:.1f} GB, more than the "
            f"{free / 1e9:.1f} GB free on {device}; if it runs out of memory, use {advice}smaller "
            "capture.token_capacity / ngram_capacity",
            file=sys.stderr,
        )


def merge_job(inputs: Sequence[PathLike], output: PathLike, threads: int = 1) -> None:
    """Merge shard stores, on `threads` threads (the summaries' sorts)."""
    import torch

    from neuron_census.capture.store import merge_store_files

    torch.set_num_threads(max(1, threads))
    merge_store_files(inputs, output)


def stats_job(
    model_name: str,
    inputs: Sequence[PathLike],
    tokenizer_name: str,
    tokenizer_spec: Mapping[str, Any],
    analysis: Mapping[str, Any],
    stats_out: PathLike,
    rates_out: PathLike,
) -> None:
    """Activation statistics of one model from its merged stores (one per capture dataset), a layer at a time.

    Only one layer's states are in memory at once (for OPT-66b, 0.6 GB of position counts instead of 39 GB).
    Positional neurons are found on the stores of `analysis.positional.datasets` only, when it names some.
    """
    from neuron_census.analyses.tables import REQUIRED_FOR_STATS, STATS_ACCUMULATORS, AnalysisSettings, stats_tables_by_layer
    from neuron_census.capture.store import merged_attrs, merged_layer_state
    from neuron_census.data.tokenization import load_tokenizer

    readers = store_readers(inputs, REQUIRED_FOR_STATS, f"model '{model_name}''s neuron statistics")
    attrs = merged_attrs(readers)
    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    if attrs["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(f"stores of model '{model_name}' were captured with another tokenizer than '{tokenizer_name}'")
    names = [name for name in STATS_ACCUMULATORS if name in readers[0].names]
    datasets = analysis.get("positional", {}).get("datasets")  # positional neurons: on these datasets' stores only
    positional = readers if datasets is None else [r for r in readers if set(r.attrs["datasets"]) <= set(datasets)]
    if not positional:
        raise ValueError(f"model '{model_name}': no capture store of positional dataset(s) {sorted(datasets)}")

    def layer_states(slot: int) -> dict[str, Any]:
        return {
            name: merged_layer_state(positional if name == "position_fire_count" else readers, name, slot) for name in names
        }

    settings = AnalysisSettings.from_config(analysis)
    stats, rates = stats_tables_by_layer(model_name, attrs, layer_states, settings, tokenizer.token_strings())
    write_parquet(stats, stats_out)
    write_parquet(rates, rates_out)


def vocab_job(model: ModelJob, stores: Sequence[PathLike], output: PathLike, fired_output: PathLike) -> None:
    """Vocabulary projections of the captured layers' value vectors with each neuron's weight statistics, and
    the scores of every token each neuron fired on in the merged stores (trigger suppression averages them).
    Unless capture keeps the model resident, the decoder layers stay where capture keeps them (CPU or disk)
    and only the unembedding path goes to the device."""
    from neuron_census.analyses.vocab import fired_pairs, vocab_tables
    from neuron_census.analyses.weights import weight_columns
    from neuron_census.capture.placement import Placement, place_outside_layers, temporary_folder
    from neuron_census.capture.store import merged_attrs, merged_layer_state

    readers = store_readers(stores, ["token_fire_count"], f"model '{model.name}''s trigger scores")
    attrs = merged_attrs(readers)
    layers, n_neurons = [int(layer) for layer in attrs["layers"]], int(attrs["n_neurons"])

    def fired(layer: int) -> tuple[np.ndarray, np.ndarray]:
        return fired_pairs(merged_layer_state(readers, "token_fire_count", layers.index(layer))["keys"], n_neurons)

    settings = {**schema_defaults("analysis/vocab"), **model.capture}
    resident = settings["strategy"] == "resident"
    placement = Placement() if resident else Placement.from_config({**settings, "strategy": "layerwise"})
    with temporary_folder(placement.offload_dir) as folder:
        tokenizer, loaded, device, _ = model.load(placement, folder)
        if not resident:
            place_outside_layers(loaded.model, loaded.adapter.decoder_layers(), device)
        table, scores = vocab_tables(
            loaded.adapter, tokenizer.token_strings(), fired, layers=layers, top_n=int(settings["top_n"]),
            apply_final_norm=bool(settings["final_norm"]),
        )
        weights = weight_columns(loaded.adapter, layers, processing=str(settings["weights"]))
    write_parquet(table.join(weights, on=["layer", "neuron"], how="left", maintain_order="left"), output)
    write_parquet(scores, fired_output)


def tables_job(
    stats: PathLike,
    vocab: PathLike,
    fired: PathLike,
    neurons_out: PathLike,
    layers_out: PathLike,
    roles: Mapping[str, Any] | None = None,
    study: Sequence[PathLike] = (),
    probing: PathLike | None = None,
) -> None:
    """neurons.parquet (activation statistics joined with vocabulary projections, weight statistics, roles
    in vocabulary space and the trigger scores of detected tokens) and layers.parquet. `roles`: the
    config's `analysis.roles` thresholds. `study`: for the reference of a universal-neurons study, its
    universal, entropy_neurons, attention_scores and attention_paths tables, joined per neuron. `probing`:
    for a probed model, the features each neuron is a single-neuron probe for (probe_features.parquet)."""
    from neuron_census.analyses.tables import layer_table, with_probe_columns, with_study_columns
    from neuron_census.analyses.vocab import with_vocab
    from neuron_census.analyses.weights import vocab_roles

    neurons = with_vocab(pl.read_parquet(stats), pl.read_parquet(vocab), pl.read_parquet(fired))
    neurons = neurons.with_columns(vocab_role=vocab_roles(neurons, **{**schema_defaults("analysis/roles"), **(roles or {})}))
    if study:
        neurons = with_study_columns(neurons, *(pl.read_parquet(path) for path in study))
    if probing is not None:
        neurons = with_probe_columns(neurons, pl.read_parquet(probing))
    write_parquet(neurons, neurons_out)
    write_parquet(layer_table(neurons, int(neurons["n_layers_total"][0])), layers_out)


def figure_job(
    figure: str,
    tables: Mapping[str, Sequence[PathLike]],
    style: Mapping[str, Any],
    outputs: Sequence[PathLike],
    csv_output: PathLike | None = None,
    analysis: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Draw one paper figure from its models' tables (each kind concatenated in the figure's model order).

    `analysis`: the config's analysis settings, for labels that name a threshold (style key `analysis`).
    `labels`: how the figure names each model (`config.model_label`); the CSV keeps the models' names."""
    import importlib

    from neuron_census.plots import figures
    from neuron_census.plots.registry import FIGURES

    spec = FIGURES[figure]
    frames = {kind: pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed") for kind, paths in tables.items()}
    module = importlib.import_module(f"neuron_census.{spec.module}")
    drawing = {**spec.defaults, **style, "analysis": dict(analysis or {})}
    labels = dict(labels or {})
    if drawing.get("model") is not None:
        drawing["model"] = labels.get(drawing["model"], drawing["model"])
    # legends and titles read the `model` column
    labelled = {
        kind: frame.with_columns(pl.col("model").replace(labels)) if labels and "model" in frame.columns else frame
        for kind, frame in frames.items()
    }
    figures.save_figure(getattr(module, spec.function)(labelled, drawing), outputs)
    if spec.csv is not None and csv_output is not None:
        frame = getattr(module, spec.csv)(frames[spec.tables[0]])
        with atomic_path(csv_output) as tmp:
            frame.write_csv(tmp)


def report_job(
    entries: Sequence[Mapping[str, str]],
    title: str,
    output: PathLike,
    config: Mapping[str, Any] | None = None,
    neurons: Mapping[str, PathLike] | None = None,
    atlases: Mapping[str, PathLike] | None = None,
) -> None:
    """A self-contained HTML page: a summary row per model of `neurons` (model -> its neurons.parquet), each
    linking to its atlas where `atlases` has one, then every figure (embedded PNG) and its caption (captions
    name the thresholds they read from `config`: its `analysis` and `figures` sections)."""
    from neuron_census.analyses.kinds import model_summary
    from neuron_census.report import render_report

    root = Path(output).parent
    summaries = {model: model_summary(pl.read_parquet(path)) for model, path in (neurons or {}).items()}
    links = {model: Path(os.path.relpath(path, root)).as_posix() for model, path in (atlases or {}).items()}
    html = render_report(entries, title, config, summaries, links, root)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
