"""Snakemake adapter: train a byte-level BPE tokenizer on a dataset's documents."""

from neuron_census.jobs.census import train_tokenizer_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    train_tokenizer_job(
        spec=snakemake.params.spec,  # noqa: F821 (injected by Snakemake)
        dataset_spec=snakemake.params.dataset,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
    )
