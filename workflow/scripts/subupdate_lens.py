"""Snakemake adapter: the logit lens and the dominant sub-updates of one model at cut sequences."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.subupdates import subupdate_lens_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    subupdate_lens_job(
        ModelJob.from_rule(job),
        study=job.params.study,
        shards=list(job.input.shards),
        lens_out=job.output.lens,
        subupdates_out=job.output.subupdates,
        vectors_out=job.output.vectors,
    )
