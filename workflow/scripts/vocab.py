"""Snakemake adapter: vocabulary projections of one model's value vectors."""

from neuron_census.jobs.census import vocab_job
from neuron_census.jobs.common import ModelJob
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    vocab_job(ModelJob.from_rule(job), stores=job.input.stores, output=job.output.vocab, fired_output=job.output.fired)
