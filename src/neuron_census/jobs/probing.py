"""What the rules of sparse probing (`workflow/rules/probing.smk`, Gurnee et al. 2023) call: read inputs,
call the package, write outputs atomically.

Data path: the study's token shards -> labelled spans per feature (`probe_spans`) -> each span's mean
activation of every analysed neuron, from a capture with the `samples` accumulator (`probe_samples`, one
per shard, through `capture_job`) -> a probe sweep per layer (`probe_layer`) -> the model's tables
(`probe_tables`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from neuron_census.jobs.common import PathLike, read_shard_for, store_readers, write_for_model, write_parquet

FEATURE_KEYS = ("position_bins", "skip", "min_span", "source_units", "positive_share", "limit", "seed", "min_per_class")
PROBE_KEYS = ("methods", "ks", "max_mip_k", "candidates", "time_limit", "seed", "test_share", "max_iter")
SPAN_STUDY_KEYS = ("sequences", "families", "groups", "words", "compounds", "pos", *FEATURE_KEYS)  # what probe_spans reads
SPAN_KEYS = ("seq", "start", "end")


def feature_settings(study: Mapping[str, Any]) -> Any:
    from neuron_census.analyses.probe_features import FeatureSettings

    chosen = {key: study[key] for key in FEATURE_KEYS if key in study}
    if chosen.get("position_bins") is not None:
        chosen["position_bins"] = tuple(chosen["position_bins"])
    if "source_units" in chosen:
        chosen["source_units"] = tuple(chosen["source_units"])
    return FeatureSettings(**chosen)


def probe_settings(study: Mapping[str, Any]) -> Any:
    from neuron_census.analyses.probing import ProbeSettings

    chosen = {key: study[key] for key in PROBE_KEYS if key in study and study[key] is not None}
    for key in ("methods", "ks"):
        if key in chosen:
            chosen[key] = tuple(chosen[key])
    return ProbeSettings(**chosen)


def word_forms(tokenizer: Any, word: str) -> list[tuple[int, ...]]:
    """The token ids a word reads as in text: alone and after a space (BPE's " word"), each without the
    whitespace-only pieces a tokenizer may put first (sentencepiece's lone "▁"); a word that encodes to the
    unknown token or to nothing is refused."""
    texts = tokenizer.token_texts()
    forms: list[tuple[int, ...]] = []
    for text in (word, " " + word):
        ids = list(tokenizer.encode(text))
        while ids and not texts[ids[0]].strip():
            ids.pop(0)
        if ids and tuple(ids) not in forms:
            forms.append(tuple(ids))
    unknown = getattr(tokenizer.backend, "token_to_id", lambda _: None)("<unk>")
    if not forms or any(unknown is not None and unknown in form for form in forms):
        raise ValueError(f"probing word {word!r} is not in the vocabulary of tokenizer '{tokenizer.name}'")
    return forms


def study_features(tokenizer: Any, study: Mapping[str, Any]) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...]]], dict[str, list[tuple[int, ...]]]]:
    """The study's compound bigrams (each word in its mid-text form, after a space) and word sets, as ids."""
    bigrams = [tuple(word_forms(tokenizer, word)[-1] for word in pair) for pair in study.get("compounds", [])]
    word_sets = {name: [form for word in words for form in word_forms(tokenizer, word)] for name, words in study.get("words", {}).items()}
    return bigrams, word_sets


def probe_spans_job(
    model_name: str, tokenizer_name: str, tokenizer_spec: Mapping[str, Any], study: Mapping[str, Any], shards: Sequence[PathLike],
    spans_out: PathLike, samples_out: PathLike,
) -> None:
    """Every feature's balanced spans over the study's first `sequences` sequences (global sequence ids, as
    the capture numbers them), and the distinct spans the capture keeps samples of."""
    from neuron_census.analyses.probe_features import balanced_spans, feature_family, feature_spans
    from neuron_census.data.corpus import read_token_sources
    from neuron_census.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name, tokenizer_spec)
    settings = feature_settings(study)
    bigrams, word_sets = study_features(tokenizer, study)
    texts = tokenizer.token_texts()
    pos_sources = study.get("pos") or ()
    tag_words = None
    if pos_sources:
        from neuron_census.data.part_of_speech import english_tagger

        tag_words = english_tagger()
    frames, left = [], study.get("sequences")
    for path in shards:
        tokens, attrs = read_shard_for(path, tokenizer, f"model '{model_name}'")
        first_seq = int(attrs["shard"]) * int(attrs["n_sequences"])
        if left is not None:
            tokens = tokens[:left]
            left -= len(tokens)
        labelled = read_token_sources(path)
        sources, names = (None, ()) if labelled is None else (labelled[0][: len(tokens)], labelled[1])
        spans = feature_spans(tokens, sources, names, texts, settings, bigrams, study.get("groups"), word_sets, pos_sources, tag_words)
        frames.append(spans.with_columns(pl.col("seq") + first_seq))
        if left is not None and left <= 0:
            break
    spans = pl.concat(frames)
    families = set(study.get("families", ()))
    if families:
        kept = [feature for feature in spans["feature"].unique().to_list() if feature_family(feature) in families]
        spans = spans.filter(pl.col("feature").is_in(kept))
    balanced, dropped = balanced_spans(spans, settings.positive_share, settings.limit, settings.seed, settings.min_per_class)
    if dropped:
        print(
            f"probing '{model_name}': {len(dropped)} features have fewer than {settings.min_per_class} positives or negatives and are left out: {', '.join(dropped)}",
            file=sys.stderr,
        )
    if balanced.is_empty():
        raise ValueError(f"probing '{model_name}': no feature has both positives and negatives in the study's tokens")
    write_for_model(balanced, model_name, spans_out)
    distinct = balanced.select(SPAN_KEYS).unique().sort(SPAN_KEYS).with_columns(label=pl.lit(0, dtype=pl.Int64))
    write_parquet(distinct, samples_out)


def layer_samples(stores: Sequence[PathLike], layer: int) -> tuple[pl.DataFrame, np.ndarray, int]:
    """The kept spans (seq, start, end, row) and their samples [spans, N] of one layer over the study's
    sample stores, and the model's layer count."""
    from neuron_census.capture.store import merged_layer_state

    readers = store_readers(stores, ["samples"], "sparse probing")
    layers = [int(x) for x in readers[0].attrs["layers"]]
    if layer not in layers:
        raise ValueError(f"sparse probing of layer {layer}: the sample stores hold layers {layers}")
    state = merged_layer_state(readers, "samples", layers.index(layer))
    index = pl.DataFrame({key: state[key].astype(np.int64) for key in SPAN_KEYS}).with_row_index("row")
    return index, np.asarray(state["values"][0], dtype=np.float32), int(readers[0].attrs["n_layers_total"])


def probe_layer_job(
    model_name: str, layer: int, study: Mapping[str, Any], parts: Sequence[tuple[PathLike, Sequence[PathLike]]], output: PathLike,
    threads: int = 1,
) -> None:
    """The probe sweep of every feature at one layer, one row per (feature, method, k), over `parts`: per
    dataset its spans and its sample stores, a feature's spans pooled over the datasets. BLAS and OpenMP get
    the job's `threads`: small fits gain nothing from more, and jobs side by side would oversubscribe the
    cores (3-4x slower, benchmarks/probe_fit.py)."""
    from threadpoolctl import threadpool_limits

    from neuron_census.analyses.probe_features import feature_family
    from neuron_census.analyses.probing import TABLE_SCHEMA, probe_sweep, split_rows

    settings = probe_settings(study)
    with threadpool_limits(threads):
        table, values, n_layers = labelled_samples(model_name, layer, parts)
        frames = []
        for (feature,), group in table.sort("feature", maintain_order=True).group_by("feature", maintain_order=True):
            y = group["label"].to_numpy().astype(bool)
            if min(int(y.sum()), int((~y).sum())) < 2:  # a split needs two of each class
                print(f"probing '{model_name}' layer {layer}: feature {feature!r} has fewer than 2 spans of a class and is left out", file=sys.stderr)
                continue
            x = values[group["row"].to_numpy()]
            train, test = split_rows(y, settings)
            swept = probe_sweep(x[train], y[train], x[test], y[test], settings)
            frames.append(swept.select(pl.lit(feature).alias("feature"), pl.lit(feature_family(feature)).alias("family"), pl.all()))
    swept = pl.concat(frames) if frames else pl.DataFrame(schema={"feature": pl.Utf8, "family": pl.Utf8, **TABLE_SCHEMA})
    out = swept.select(
        pl.col("feature"), pl.col("family"), pl.lit(layer, dtype=pl.Int64).alias("layer"),
        pl.lit(n_layers, dtype=pl.Int64).alias("n_layers"), pl.exclude("feature", "family"),
    )
    write_for_model(out, model_name, output)


def labelled_samples(model_name: str, layer: int, parts: Sequence[tuple[PathLike, Sequence[PathLike]]]) -> tuple[pl.DataFrame, np.ndarray, int]:
    """Every dataset's spans (feature, label, row) with their samples [rows, N] at one layer, pooled, and the
    model's layer count; spans without a sample (beyond capture.sample_limit) are left out and counted."""
    tables, blocks, offset, n_layers = [], [], 0, 0
    for spans, stores in parts:
        index, values, n_layers = layer_samples(stores, layer)
        table = pl.read_parquet(spans).join(index, on=list(SPAN_KEYS), how="left", maintain_order="left")
        missing = table["row"].null_count()
        if missing:
            print(f"probing '{model_name}' layer {layer}: {missing} spans of {spans} have no sample (beyond sample_limit) and are left out", file=sys.stderr)
        tables.append(table.drop_nulls("row").select("feature", "label", pl.col("row").cast(pl.Int64) + offset))
        blocks.append(values)
        offset += len(values)
    return pl.concat(tables), np.concatenate(blocks), n_layers


def probe_tables_job(
    layers: Sequence[PathLike], threshold: float, probes_out: PathLike, neurons_out: PathLike, features_out: PathLike
) -> None:
    """The model's sweep table (every layer); its best single neurons per (feature, layer), marked
    monosemantic at test F1 >= threshold; and per neuron the features some k = 1 probe on it reads at that
    F1 (what neurons.parquet joins)."""
    from neuron_census.analyses.probing import best_neuron_per_layer, probe_neuron_features

    probes = pl.concat([pl.read_parquet(path) for path in layers]).sort("layer", maintain_order=True)
    write_parquet(probes, probes_out)
    best = best_neuron_per_layer(probes).join(
        probes.select("feature", "family", "layer", "n_layers").unique(["feature", "layer"]), on=["feature", "layer"], how="left"
    )
    model = probes["model"][0] if len(probes) else ""
    best = best.select(
        pl.lit(model).alias("model"), "feature", "family", "layer", "n_layers", "method", "neuron", "f1", "precision", "recall",
        monosemantic=pl.col("f1") >= threshold,
    )
    write_parquet(best, neurons_out)
    write_parquet(probe_neuron_features(probes, threshold), features_out)
