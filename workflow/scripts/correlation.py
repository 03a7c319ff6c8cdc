"""Snakemake adapter: correlations of one (reference model, dataset, shard, block of layer pairs)."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.universal import correlation_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    correlation_job(
        ModelJob.from_rule(job, spec=job.params.models[job.wildcards.model]), models=job.params.models, study=job.params.study,
        block=job.wildcards.block, shard_path=job.input.shard, output=job.output[0],
    )
