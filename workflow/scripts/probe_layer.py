"""Snakemake adapter: the probe sweep of every feature at one layer of one model."""

from pathlib import Path

from neuron_census.jobs.probing import probe_layer_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    stores = list(snakemake.input.stores)  # noqa: F821 (injected by Snakemake)
    # results/probing/<model>/<dataset>/spans.parquet and .../<dataset>/samples/shard-<i>.zarr
    parts = [(spans, [s for s in stores if Path(s).parent.parent == Path(spans).parent]) for spans in snakemake.input.spans]  # noqa: F821
    probe_layer_job(
        model_name=snakemake.wildcards.model,  # noqa: F821
        layer=int(snakemake.wildcards.layer),  # noqa: F821
        study=snakemake.params.study,  # noqa: F821
        parts=parts,
        output=snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
