"""Snakemake adapter: one model's neuron atlas."""

from itertools import accumulate

from neuron_census.jobs.atlas import atlas_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    datasets, counts = snakemake.params.datasets, snakemake.params.n_shards  # noqa: F821
    shards, ends = list(snakemake.input.shards), list(accumulate(counts))  # noqa: F821
    atlas_job(
        model_name=snakemake.wildcards.model,  # noqa: F821
        tokenizer_name=snakemake.params.tokenizer_name,  # noqa: F821
        tokenizer_spec=snakemake.params.tokenizer,  # noqa: F821
        stores=dict(zip(datasets, snakemake.input.stores)),  # noqa: F821
        shards={name: shards[end - n : end] for name, n, end in zip(datasets, counts, ends)},
        neurons=snakemake.input.neurons,  # noqa: F821
        settings=snakemake.params.settings,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        matches=snakemake.input.get("matches"),  # noqa: F821
        subupdates=snakemake.input.get("subupdates"),  # noqa: F821
        predictions=snakemake.input.get("predictions"),  # noqa: F821
    )
