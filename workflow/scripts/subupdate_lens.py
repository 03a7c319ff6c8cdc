"""Snakemake adapter: the logit lens and the dominant sub-updates of one model at cut sequences."""

from neuron_census.logs import job_log
from neuron_census.jobs.subupdates import subupdate_lens_job

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    subupdate_lens_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        shards=list(snakemake.input.shards),  # noqa: F821
        lens_out=snakemake.output.lens,  # noqa: F821
        subupdates_out=snakemake.output.subupdates,  # noqa: F821
        vectors_out=snakemake.output.vectors,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
