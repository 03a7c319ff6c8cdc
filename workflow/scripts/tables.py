"""Snakemake adapter: neurons.parquet and layers.parquet of one model."""

from neuron_census.jobs.census import tables_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    tables_job(
        stats=snakemake.input.stats,  # noqa: F821 (injected by Snakemake)
        vocab=snakemake.input.vocab,  # noqa: F821
        fired=snakemake.input.fired,  # noqa: F821
        neurons_out=snakemake.output.neurons,  # noqa: F821
        layers_out=snakemake.output.layers,  # noqa: F821
        roles=snakemake.params.roles,  # noqa: F821
        study=list(snakemake.input.study),  # noqa: F821
        probing=next(iter(snakemake.input.probing), None),  # noqa: F821
    )
