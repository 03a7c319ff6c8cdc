"""The neuron atlas: per model, an index of every neuron and a page for each chosen one, from its tables,
stores and token shards (no model is loaded)."""


rule atlas:
    input:
        unpack(lambda w: atlas_extras(w.model)),
        stores=lambda w: [f"results/capture/{w.model}/{dataset}/merged.zarr" for dataset in model_datasets(config, w.model)],
        shards=lambda w: [shard for dataset in model_datasets(config, w.model) for shard in shard_paths(model_tokenizer(config, w.model), dataset)],
        neurons="results/{model}/neurons.parquet",
    output:
        directory("results/atlas/{model}"),
    params:
        datasets=lambda w: model_datasets(config, w.model),
        n_shards=lambda w: [config["datasets"][dataset]["n_shards"] for dataset in model_datasets(config, w.model)],
        tokenizer_name=lambda w: model_tokenizer(config, w.model),
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, model_tokenizer(config, w.model))),
        settings=canonical({key: value for key, value in config["atlas"].items() if key != "models"}),
    log:
        "results/logs/atlas/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/atlas.py"
