"""Per-model tables: activation statistics, vocabulary projections of the weights, and their join."""


rule neuron_stats:
    input:
        lambda w: [f"results/capture/{w.model}/{dataset}/merged.zarr" for dataset in model_datasets(config, w.model)],
    output:
        stats="results/{model}/stats.parquet",
        rates="results/{model}/position_rates.parquet",
    params:
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        analysis=canonical({k: v for k, v in config["analysis"].items() if k not in ("vocab", "roles")}),
    log:
        "results/logs/neuron_stats/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/stats.py"


rule vocab_projection:
    input:
        stores=lambda w: [f"results/capture/{w.model}/{dataset}/merged.zarr" for dataset in model_datasets(config, w.model)],
        model=lambda w: model_inputs(w.model),
    output:
        vocab="results/{model}/vocab.parquet",
        fired="results/{model}/fired_token_scores.parquet",
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(vocab_settings(w.model)),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "vocab_projection")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "vocab_projection")["runtime"],
    log:
        "results/logs/vocab_projection/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/vocab.py"


rule neuron_tables:
    input:
        stats="results/{model}/stats.parquet",
        vocab="results/{model}/vocab.parquet",
        fired="results/{model}/fired_token_scores.parquet",
        study=lambda w: study_tables(w.model),
        probing=lambda w: [f"results/{w.model}/probe_features.parquet"] if w.model in config["probing"] else [],
    output:
        neurons="results/{model}/neurons.parquet",
        layers="results/{model}/layers.parquet",
    params:
        roles=canonical(config["analysis"]["roles"]),
    log:
        "results/logs/neuron_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/tables.py"
