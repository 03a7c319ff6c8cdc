"""Snakemake adapter: entropy neurons of a study reference's last layer, by intervention."""

from neuron_census.jobs.universal import entropy_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    entropy_job(
        reference=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        weights=snakemake.params.weights,  # noqa: F821
        shard_path=snakemake.input.shard,  # noqa: F821
        curves_out=snakemake.output.curves,  # noqa: F821
        neurons_out=snakemake.output.neurons,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
