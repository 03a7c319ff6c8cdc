"""Snakemake adapter: draw one paper figure from per-layer tables."""

from neuron_census.jobs import figure_job
from neuron_census.logs import tee_stderr

tee_stderr(snakemake.log)  # noqa: F821 (injected by Snakemake)

figure_job(
    figure=snakemake.params.figure,  # noqa: F821 (injected by Snakemake)
    layer_tables=list(snakemake.input),  # noqa: F821
    style=snakemake.params.style,  # noqa: F821
    outputs=[snakemake.output.png, snakemake.output.pdf],  # noqa: F821
)
