"""Snakemake adapter: one model's probing tables from its per-layer sweeps."""

from neuron_census.jobs.probing import probe_tables_job
from neuron_census.logs import job_log

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    probe_tables_job(
        layers=list(snakemake.input),  # noqa: F821 (injected by Snakemake)
        threshold=snakemake.params.threshold,  # noqa: F821
        probes_out=snakemake.output.probes,  # noqa: F821
        neurons_out=snakemake.output.neurons,  # noqa: F821
        features_out=snakemake.output.features,  # noqa: F821
    )
