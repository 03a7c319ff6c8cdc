"""Snakemake adapter: correlations of one (reference model, dataset, shard, block of layer pairs)."""

from neuron_census.jobs.universal import correlation_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    correlation_job(
        reference=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        models=snakemake.params.models,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        block=snakemake.wildcards.block,  # noqa: F821
        shard_path=snakemake.input.shard,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
