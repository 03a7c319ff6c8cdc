"""Snakemake adapter: value vectors clustered by their vocabulary projections, per layer."""

from neuron_census.jobs.common import ModelJob
from neuron_census.jobs.subupdates import value_clusters_job
from neuron_census.logs import job_log

job = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(job.log):
    value_clusters_job(
        ModelJob.from_rule(job),
        n_clusters=job.params.clusters,
        vocab=job.params.vocab,
        assigned_out=job.output.assigned,
        clusters_out=job.output.clusters,
    )
