"""Snakemake adapter: a study reference's activation properties and feature sums over one shard."""

from neuron_census.jobs.universal import neuron_properties_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    neuron_properties_job(
        reference=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        features=snakemake.input.features,  # noqa: F821
        shard_path=snakemake.input.shard,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
