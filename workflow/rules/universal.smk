"""Universal neurons (Gurnee et al. 2024): per reference model, correlations with other models (e.g. other
seeds) per (shard, block of layer pairs), their exact merge per block, then the best-match tables with
each neuron's activation properties and weight statistics."""


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
    threads: 8
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
        "../scripts/correlation_merge.py"


rule universal_tables:
    input:
        blocks=lambda w: [
            f"results/universal/{w.model}/{universal_dataset(w.model)}/block-{block}.zarr"
            for block in correlation_blocks(w.model)
        ],
        model=lambda w: model_inputs(w.model),
    output:
        matches="results/{model}/best_matches.parquet",
        universal="results/{model}/universal.parquet",
    params:
        study=lambda w: canonical(universal_study(w.model)),
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        weights=config["analysis"]["vocab"]["weights"],
    threads: 8
    log:
        "results/logs/universal_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/universal_tables.py"
