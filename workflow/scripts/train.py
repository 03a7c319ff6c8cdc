"""Snakemake adapter: train one OPT-architecture run with checkpoints."""

from neuron_census.jobs.census import train_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    train_job(
        run_name=snakemake.wildcards.run,  # noqa: F821 (injected by Snakemake)
        run=snakemake.params.run,  # noqa: F821
        tokenizer_name=snakemake.params.run["tokenizer"],  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        shards=list(snakemake.input.shards),  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
