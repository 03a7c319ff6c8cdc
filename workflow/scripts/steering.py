"""Snakemake adapter: generations and perplexity of one model with and without its steering values set."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.subupdates import steering_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    steering_job(
        ModelJob.from_rule(job),
        study=job.params.study,
        vocab=job.input.vocab,
        prompts=job.input.prompts,
        shards=list(job.input.shards),
        generations_out=job.output.generations,
        summary_out=job.output.summary,
    )
