"""One capture job per (model, dataset, shard); a merge per (model, dataset) sums the shards."""


rule capture:
    input:
        shard=lambda w: f"results/tokens/{model_tokenizer(config, w.model)}/{w.dataset}/shard-{w.shard}.zarr",
        model=lambda w: model_inputs(w.model),
        spans=lambda w: sample_spans(w.model),
    output:
        directory("results/capture/{model}/{dataset}/shard-{shard}.zarr"),
    params:
        model=lambda w: canonical(resolved_model_spec(config, w.model)),
        model_version=lambda w: input_version(model_inputs(w.model)),
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=lambda w: canonical(capture_settings(config, w.model)),
        spans_version=lambda w: input_version(sample_spans(w.model)),
    threads: lambda w: job_threads(config, w.model)
    resources:
        gpu=1,
        mem_mb=lambda w: job_resources(config, w.model, "capture")["mem_mb"],
        runtime=lambda w: job_resources(config, w.model, "capture")["runtime"],
    log:
        "results/logs/capture/{model}/{dataset}/shard-{shard}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/capture.py"


rule merge:
    input:
        lambda w: [
            f"results/capture/{w.model}/{w.dataset}/shard-{i}.zarr"
            for i in range(config["datasets"][w.dataset]["n_shards"])
        ],
    output:
        directory("results/capture/{model}/{dataset}/merged.zarr"),
    log:
        "results/logs/merge/{model}/{dataset}.log",
    threads: 1  # `--set-threads merge=N` (or the SLURM profile): the summaries of large merges sort on N threads
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/merge.py"
