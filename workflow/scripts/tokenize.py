"""Snakemake adapter: one token shard of (tokenizer, dataset)."""

from neuron_census.jobs.census import tokenize_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    tokenize_job(
        tokenizer_name=snakemake.wildcards.tok,  # noqa: F821 (injected by Snakemake)
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        dataset_name=snakemake.wildcards.dataset,  # noqa: F821
        dataset_spec=snakemake.params.dataset,  # noqa: F821
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        previous=snakemake.input.previous[0] if snakemake.input.previous else None,  # noqa: F821
    )
