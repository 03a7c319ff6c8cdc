"""Snakemake adapter: a study reference's activation properties and feature sums over one shard."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.universal import neuron_properties_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    neuron_properties_job(
        ModelJob.from_rule(job),
        study=job.params.study,
        features=job.input.features,
        shard_path=job.input.shard,
        output=job.output[0],
    )
