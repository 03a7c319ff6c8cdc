"""Snakemake adapter: vocabulary projections of one model's value vectors."""

from neuron_census.jobs.census import vocab_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    vocab_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        stores=snakemake.input.stores,  # noqa: F821
        output=snakemake.output.vocab,  # noqa: F821
        fired_output=snakemake.output.fired,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
