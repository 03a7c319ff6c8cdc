"""Snakemake adapter: entropy neurons of a study reference's last layer, by intervention."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.universal import entropy_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    entropy_job(
        ModelJob.from_rule(job),
        study=job.params.study,
        weights=job.params.weights,
        shard_path=job.input.shard,
        curves_out=job.output.curves,
        neurons_out=job.output.neurons,
    )
