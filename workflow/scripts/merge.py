"""Snakemake adapter: sum the shard stores of one (model, dataset)."""

from neuron_census.jobs.census import merge_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    merge_job(inputs=list(snakemake.input), output=snakemake.output[0], threads=snakemake.threads)  # noqa: F821
