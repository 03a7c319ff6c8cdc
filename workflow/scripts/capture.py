"""Snakemake adapter: capture one (model, dataset, shard) into an accumulator store."""

from neuron_census.jobs.census import capture_job
from neuron_census.jobs.common import ModelJob
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    capture_job(ModelJob.from_rule(job), shard_path=job.input.shard, output=job.output[0])
