"""Snakemake adapter: early exit of one model's predictions, by the cluster-overlap rule and by probes."""

from neuron_census.jobs.subupdates import early_exit_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    early_exit_job(
        predictions=snakemake.input.predictions,  # noqa: F821 (injected by Snakemake)
        subupdates=snakemake.input.subupdates,  # noqa: F821
        value_clusters=snakemake.input.value_clusters,  # noqa: F821
        vectors=snakemake.input.vectors,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        table_out=snakemake.output.table,  # noqa: F821
        summary_out=snakemake.output.summary,  # noqa: F821
    )
