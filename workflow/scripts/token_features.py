"""Snakemake adapter: the token and context features of a study's neuron families."""

from neuron_census.jobs.universal import token_features_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    token_features_job(
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821 (injected by Snakemake)
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        shards=list(snakemake.input),  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
    )
