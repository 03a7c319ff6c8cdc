"""Snakemake adapter: sum the shard stores of one (model, dataset).

Guarded by `__main__`: a large merge folds layers in spawned processes, which import this script again."""

from neuron_census.jobs import merge_job
from neuron_census.logs import job_log

if __name__ == "__main__":
    with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
        merge_job(  # the threshold is read from the config, not a param: changing it reruns nothing
            inputs=list(snakemake.input),  # noqa: F821
            output=snakemake.output[0],  # noqa: F821
            threads=snakemake.threads,  # noqa: F821
            parallel_min_bytes=int(snakemake.config["merge"]["parallel_min_mb"] * 2**20),  # noqa: F821
        )
