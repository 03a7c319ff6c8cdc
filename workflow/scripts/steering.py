"""Snakemake adapter: generations and perplexity of one model with and without its steering values set."""

from neuron_census.logs import job_log
from neuron_census.jobs.subupdates import steering_job

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    steering_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        vocab=snakemake.input.vocab,  # noqa: F821
        prompts=snakemake.input.prompts,  # noqa: F821
        shards=list(snakemake.input.shards),  # noqa: F821
        generations_out=snakemake.output.generations,  # noqa: F821
        summary_out=snakemake.output.summary,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
