"""Sparse probing (Gurnee et al. 2023): per probed model and dataset, the labelled spans of every feature
from its tokens and each span's mean activation of every probed neuron (a capture keeping only samples, one
job per shard); a probe sweep per layer over the datasets' spans pooled per feature; the model's tables."""


rule probe_spans:
    input:
        shards=lambda w: probing_shards(w.model, w.dataset),
    output:
        spans="results/probing/{model}/{dataset}/spans.parquet",
        samples="results/probing/{model}/{dataset}/sample_spans.parquet",
    params:
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        study=lambda w: canonical({k: probing_study(w.model)[k] for k in SPAN_STUDY_KEYS}),
    log:
        "results/logs/probe_spans/{model}/{dataset}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/probe_spans.py"


rule probe_samples:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{w.dataset}/shard-{w.shard}.zarr",
        model=lambda w: model_inputs(w.model),
        spans="results/probing/{model}/{dataset}/sample_spans.parquet",
    output:
        directory("results/probing/{model}/{dataset}/samples/shard-{shard}.zarr"),
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(probing_capture_settings(w.model, w.dataset)),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/probe_samples/{model}/{dataset}/shard-{shard}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/capture.py"


rule probe_layer:
    input:
        spans=lambda w: [f"results/probing/{w.model}/{dataset}/spans.parquet" for dataset in probing_datasets(w.model)],
        stores=lambda w: probing_stores(w.model),
    output:
        "results/probing/{model}/layer-{layer}.parquet",
    params:
        study=lambda w: canonical({k: probing_study(w.model)[k] for k in PROBE_KEYS}),
    log:
        "results/logs/probe_layer/{model}/layer-{layer}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/probe_layer.py"


rule probe_tables:
    input:
        lambda w: [f"results/probing/{w.model}/layer-{layer}.parquet" for layer in probing_layers(config, w.model)],
    output:
        probes="results/{model}/probes.parquet",
        neurons="results/{model}/probe_neurons.parquet",
        features="results/{model}/probe_features.parquet",
    params:
        threshold=lambda w: probing_study(w.model)["threshold"],
    log:
        "results/logs/probe_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/probe_tables.py"
