"""Per-neuron and per-layer tables of each model, from the merged stores of the capture datasets."""


rule neuron_tables:
    input:
        expand("results/capture/{{model}}/{dataset}/merged.zarr", dataset=CAPTURE_DATASETS),
    output:
        neurons="results/{model}/neurons.parquet",
        layers="results/{model}/layers.parquet",
    log:
        "results/logs/neuron_tables/{model}.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/tables.py"
