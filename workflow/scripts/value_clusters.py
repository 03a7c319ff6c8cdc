"""Snakemake adapter: value vectors clustered by their vocabulary projections, per layer."""

from neuron_census.logs import job_log
from neuron_census.jobs.subupdates import value_clusters_job

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    value_clusters_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        n_clusters=snakemake.params.clusters,  # noqa: F821
        vocab=snakemake.params.vocab,  # noqa: F821
        assigned_out=snakemake.output.assigned,  # noqa: F821
        clusters_out=snakemake.output.clusters,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
