"""Snakemake adapter: sub-updates labelled against the value vectors' projections, and their shares per layer."""

from neuron_census.jobs.subupdates import subupdate_tables_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    subupdate_tables_job(
        lens=snakemake.input.lens,  # noqa: F821 (injected by Snakemake)
        subupdates=snakemake.input.subupdates,  # noqa: F821
        vocab=snakemake.input.vocab,  # noqa: F821
        predictions_out=snakemake.output.predictions,  # noqa: F821
        labelled_out=snakemake.output.subupdates,  # noqa: F821
        layers_out=snakemake.output.layers,  # noqa: F821
    )
