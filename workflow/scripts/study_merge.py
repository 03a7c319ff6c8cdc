"""Snakemake adapter: combine the shards of one study store (a block of correlations, or the properties)."""

from neuron_census.jobs.universal import study_merge_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    study_merge_job(inputs=list(snakemake.input), output=snakemake.output[0])  # noqa: F821
