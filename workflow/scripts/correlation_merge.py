"""Snakemake adapter: combine the shards of one block of correlations."""

from neuron_census.jobs import correlation_merge_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    correlation_merge_job(inputs=list(snakemake.input), output=snakemake.output[0])  # noqa: F821
