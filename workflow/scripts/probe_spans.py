"""Snakemake adapter: the labelled spans of every probing feature of one model."""

from neuron_census.jobs.probing import probe_spans_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    probe_spans_job(
        model_name=snakemake.wildcards.model,  # noqa: F821 (injected by Snakemake)
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        shards=list(snakemake.input.shards),  # noqa: F821
        spans_out=snakemake.output.spans,  # noqa: F821
        samples_out=snakemake.output.samples,  # noqa: F821
    )
