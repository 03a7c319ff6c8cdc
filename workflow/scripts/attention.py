"""Snakemake adapter: attention-deactivation scores and path ablations of a study reference."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.universal import attention_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    attention_job(
        ModelJob.from_rule(job),
        study=job.params.study,
        shard_path=job.input.shard,
        scores_out=job.output.scores,
        paths_out=job.output.paths,
    )
