"""Snakemake adapter: best_matches.parquet and universal.parquet of one reference model."""

from neuron_census.jobs.universal import universal_tables_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    universal_tables_job(
        reference=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        blocks=list(snakemake.input.blocks),  # noqa: F821
        properties=snakemake.input.properties,  # noqa: F821
        features=snakemake.input.features,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        weights=snakemake.params.weights,  # noqa: F821
        matches_out=snakemake.output.matches,  # noqa: F821
        universal_out=snakemake.output.universal,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
