"""One rule per paper figure, from tables only: restyling a figure reruns just that rule."""


rule fig1a_dead_neurons:
    input:
        lambda w: expand("results/{model}/layers.parquet", model=figure_models("fig1a_dead_neurons")),
    output:
        png=report("results/figures/fig1a_dead_neurons.png", caption="../report/fig1a_dead_neurons.rst", category="Dead neurons"),
        pdf="results/figures/fig1a_dead_neurons.pdf",
    params:
        figure="fig1a_dead_neurons",
        style=figure_style("fig1a_dead_neurons"),
    log:
        "results/logs/figures/fig1a_dead_neurons.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/figure.py"


rule fig1b_fire_frequency:
    input:
        lambda w: expand("results/{model}/layers.parquet", model=figure_models("fig1b_fire_frequency")),
    output:
        png=report("results/figures/fig1b_fire_frequency.png", caption="../report/fig1b_fire_frequency.rst", category="Dead neurons"),
        pdf="results/figures/fig1b_fire_frequency.pdf",
    params:
        figure="fig1b_fire_frequency",
        style=figure_style("fig1b_fire_frequency"),
    log:
        "results/logs/figures/fig1b_fire_frequency.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/figure.py"
