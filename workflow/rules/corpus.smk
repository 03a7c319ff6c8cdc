"""Text sources -> fixed-length token shards, one store per (tokenizer, dataset, shard)."""


rule train_tokenizer:
    input:
        text=lambda w: text_files(config["tokenizers"][w.tok]["dataset"]),
    output:
        directory("results/tokenizers/{tok}"),
    params:
        spec=lambda w: canonical(config["tokenizers"][w.tok]),
        dataset=lambda w: canonical(config["datasets"][config["tokenizers"][w.tok]["dataset"]]),
        text_version=lambda w: input_version(text_files(config["tokenizers"][w.tok]["dataset"])),
    log:
        "results/logs/train_tokenizer/{tok}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/train_tokenizer.py"


rule tokenize:
    input:
        tokenizer=lambda w: tokenizer_inputs(w.tok),
        text=lambda w: text_files(w.dataset),
        # a text dataset's shard continues the stream where the previous one ended (no re-reading)
        previous=lambda w: previous_text_shard(w.tok, w.dataset, int(w.shard)),
    output:
        directory("results/tokens/{tok}/{dataset}/shard-{shard}.zarr"),
    params:
        tokenizer=lambda w: canonical(resolved_tokenizer_spec(config, w.tok)),
        tokenizer_version=lambda w: input_version(tokenizer_inputs(w.tok)),
        text_version=lambda w: input_version(text_files(w.dataset)),
        # n_shards is left out: shard i's content does not depend on it, so adding shards reruns no old one
        dataset=lambda w: canonical({k: v for k, v in config["datasets"][w.dataset].items() if k != "n_shards"}),
    log:
        "results/logs/tokenize/{tok}/{dataset}/shard-{shard}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/tokenize.py"
