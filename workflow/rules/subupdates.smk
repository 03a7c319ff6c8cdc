"""FFN sub-updates in vocabulary space (Geva et al. 2022): per studied model, the logit lens and the dominant
sub-updates of every layer at cut sequences of its tokens (one model-reading job), then their labels against
the value vectors' vocabulary projections and their shares per layer (tables only)."""


rule subupdate_lens:
    input:
        shards=lambda w: subupdate_shards(w.model),
        model=lambda w: model_inputs(w.model),
    output:
        lens="results/subupdates/{model}/lens.parquet",
        subupdates="results/subupdates/{model}/subupdates.parquet",
        vectors=directory("results/subupdates/{model}/vectors.zarr"),
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: canonical({k: v for k, v in subupdate_study(w.model).items() if k not in ("clusters", "early_exit")}),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/subupdate_lens/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/subupdate_lens.py"


rule subupdate_tables:
    input:
        lens="results/subupdates/{model}/lens.parquet",
        subupdates="results/subupdates/{model}/subupdates.parquet",
        vocab="results/{model}/vocab.parquet",
    output:
        predictions="results/{model}/predictions.parquet",
        subupdates="results/{model}/subupdates.parquet",
        layers="results/{model}/subupdate_layers.parquet",
    log:
        "results/logs/subupdate_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/subupdate_tables.py"


rule value_clusters:
    input:
        model=lambda w: model_inputs(w.model),
    output:
        assigned="results/{model}/value_clusters.parquet",
        clusters="results/{model}/clusters.parquet",
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        clusters=lambda w: subupdate_study(w.model)["clusters"],
        vocab=canonical({k: config["analysis"]["vocab"][k] for k in ("final_norm", "top_n")}),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "vocab_projection")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "vocab_projection")["runtime"],
    log:
        "results/logs/value_clusters/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/value_clusters.py"


rule early_exit:
    input:
        predictions="results/{model}/predictions.parquet",
        subupdates="results/{model}/subupdates.parquet",
        value_clusters="results/{model}/value_clusters.parquet",
        vectors="results/subupdates/{model}/vectors.zarr",
    output:
        table="results/{model}/early_exit.parquet",
        summary="results/{model}/early_exit_summary.parquet",
    params:
        settings=lambda w: canonical(subupdate_study(w.model)["early_exit"]),
    log:
        "results/logs/early_exit/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/early_exit.py"


rule steering:
    input:
        shards=lambda w: steering_shards(w.model),
        model=lambda w: model_inputs(w.model),
        vocab="results/{model}/vocab.parquet",
        prompts=lambda w: config["steering"][w.model]["prompts"],
    output:
        generations="results/{model}/steering.parquet",
        summary="results/{model}/steering_summary.parquet",
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        study=lambda w: canonical(config["steering"][w.model]),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/steering/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/steering.py"
