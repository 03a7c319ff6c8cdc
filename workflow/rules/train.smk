"""Train OPT-architecture models on the bundled corpus, with checkpoints (Voita et al. Sec. 5.4)."""


rule train:
    input:
        tokenizer=lambda w: tokenizer_inputs(config["train"][w.run]["tokenizer"]),
        shards=lambda w: [
            path
            for dataset in config["train"][w.run]["datasets"]
            for path in shard_paths(config["train"][w.run]["tokenizer"], dataset)
        ],
    output:
        directory("results/train/{run}"),
    params:
        run=lambda w: canonical(config["train"][w.run]),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, config["train"][w.run]["tokenizer"])),
    threads: lambda w: job_threads(config)
    priority: lambda w: config["train"][w.run]["steps"]  # the longest runs first: they are the DAG's longest path
    resources:
        gpu=1,
    log:
        "results/logs/train/{run}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/train.py"
