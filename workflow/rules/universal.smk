"""Universal neurons (Gurnee et al. 2024): per reference model, correlations with other models (e.g. other
seeds) per (shard, block of layer pairs) and the reference's activation properties and family features per
shard, their exact merges, then the tables: best matches, universality, properties, families, weights."""


rule correlation:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{w.dataset}/shard-{w.shard}.zarr",
        models=lambda w: [path for name in universal_models(w.model) for path in model_inputs(name)],
    output:
        directory("results/universal/{model}/{dataset}/shard-{shard}/block-{block}.zarr"),
    params:
        models=lambda w: canonical({name: resolved_model_spec(config, name) for name in universal_models(w.model)}),
        models_version=lambda w: input_version([p for name in universal_models(w.model) for p in model_inputs(name)]),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: study_settings(w.model),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/correlation/{model}/{dataset}/shard-{shard}/block-{block}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/correlation.py"


rule correlation_merge:
    input:
        lambda w: [
            f"results/universal/{w.model}/{w.dataset}/shard-{i}/block-{w.block}.zarr"
            for i in range(config["datasets"][w.dataset]["n_shards"])
        ],
    output:
        directory("results/universal/{model}/{dataset}/block-{block}.zarr"),
    log:
        "results/logs/correlation_merge/{model}/{dataset}/block-{block}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/study_merge.py"


rule token_features:
    input:
        lambda w: [
            f"results/tokens/{model_tokenizer(config, w.model)}/{w.dataset}/shard-{i}.zarr"
            for i in range(config["datasets"][w.dataset]["n_shards"])
        ],
    output:
        "results/universal/{model}/{dataset}/features.parquet",
    params:
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        study=lambda w: canonical({"token_groups": universal_study(w.model)["token_groups"]}),
    log:
        "results/logs/token_features/{model}/{dataset}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/token_features.py"


rule neuron_properties:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{w.dataset}/shard-{w.shard}.zarr",
        features="results/universal/{model}/{dataset}/features.parquet",
        model=lambda w: model_inputs(w.model),
    output:
        directory("results/universal/{model}/{dataset}/shard-{shard}/properties.zarr"),
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: canonical({k: universal_study(w.model)[k] for k in ("activation", "drop_newlines")}),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/neuron_properties/{model}/{dataset}/shard-{shard}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/neuron_properties.py"


rule properties_merge:
    input:
        lambda w: [
            f"results/universal/{w.model}/{w.dataset}/shard-{i}/properties.zarr"
            for i in range(config["datasets"][w.dataset]["n_shards"])
        ],
    output:
        directory("results/universal/{model}/{dataset}/properties.zarr"),
    log:
        "results/logs/properties_merge/{model}/{dataset}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/study_merge.py"


rule universal_tables:
    input:
        blocks=lambda w: [
            f"results/universal/{w.model}/{universal_dataset(w.model)}/block-{block}.zarr"
            for block in correlation_blocks(w.model)
        ],
        properties=lambda w: f"results/universal/{w.model}/{universal_dataset(w.model)}/properties.zarr",
        features=lambda w: f"results/universal/{w.model}/{universal_dataset(w.model)}/features.parquet",
        model=lambda w: model_inputs(w.model),
    output:
        matches="results/{model}/best_matches.parquet",
        universal="results/{model}/universal.parquet",
    params:
        study=lambda w: canonical({k: universal_study(w.model)[k] for k in ("threshold", "rotation_seed", "family_threshold")}),
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        weights=config["analysis"]["vocab"]["weights"],
    threads: lambda w: job_threads(config, w.model)
    log:
        "results/logs/universal_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/universal_tables.py"


rule entropy_interventions:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{universal_dataset(w.model)}/shard-0.zarr",
        model=lambda w: model_inputs(w.model),
    output:
        curves="results/{model}/entropy.parquet",
        neurons="results/{model}/entropy_neurons.parquet",
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: canonical({k: universal_study(w.model)[k] for k in ("entropy",)}),
        weights=config["analysis"]["vocab"]["weights"],
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/entropy_interventions/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/entropy.py"


rule attention_interventions:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{universal_dataset(w.model)}/shard-0.zarr",
        model=lambda w: model_inputs(w.model),
    output:
        scores="results/{model}/attention_scores.parquet",
        paths="results/{model}/attention_paths.parquet",
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: canonical({k: universal_study(w.model)[k] for k in ("attention",)}),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/attention_interventions/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/attention.py"
