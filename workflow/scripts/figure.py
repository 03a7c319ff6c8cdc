"""Snakemake adapter: draw one paper figure from its models' tables."""

from neuron_census.jobs.census import figure_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    figure_job(
        figure=snakemake.params.figure,  # noqa: F821 (injected by Snakemake)
        tables={kind: list(snakemake.input[kind]) for kind in snakemake.params.kinds},  # noqa: F821
        style=snakemake.params.style,  # noqa: F821
        labels=snakemake.params.labels,  # noqa: F821
        analysis=snakemake.params.analysis,  # noqa: F821
        outputs=[snakemake.output.png, snakemake.output.pdf],  # noqa: F821
        csv_output=snakemake.output.get("csv"),  # noqa: F821
    )
