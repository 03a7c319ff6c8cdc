"""Snakemake adapter: attention-deactivation scores and path ablations of a study reference."""

from neuron_census.jobs.universal import attention_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    attention_job(
        reference=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        model_spec=snakemake.params.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        shard_path=snakemake.input.shard,  # noqa: F821
        scores_out=snakemake.output.scores,  # noqa: F821
        paths_out=snakemake.output.paths,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
