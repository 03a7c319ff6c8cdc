"""Snakemake adapter: capture one (model, dataset, shard) into an accumulator store."""

from neuron_census.jobs.census import capture_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    capture_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        shard_path=snakemake.input.shard,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
