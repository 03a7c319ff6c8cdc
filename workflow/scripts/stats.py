"""Snakemake adapter: activation statistics and positional firing rates of one model."""

from neuron_census.jobs.census import stats_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    stats_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        inputs=list(snakemake.input),  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        analysis=snakemake.params.analysis,  # noqa: F821
        stats_out=snakemake.output.stats,  # noqa: F821
        rates_out=snakemake.output.rates,  # noqa: F821
    )
