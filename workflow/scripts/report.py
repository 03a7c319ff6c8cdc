"""Snakemake adapter: the HTML report."""

from neuron_census.jobs.census import report_job
from neuron_census.logs import job_log
from neuron_census.plots.registry import FIGURES

with job_log(snakemake.log):  # noqa: F821 (injected by Snakemake)
    csvs = dict(zip(snakemake.params.csv_names, snakemake.input.csvs))  # noqa: F821
    report_job(
        entries=[
            {"name": name, "png": png, "caption": caption, "note": note, "csv": csvs.get(name), "category": FIGURES[name].category,
             "table_only": FIGURES[name].drawn_table}
            for name, png, caption, note in zip(
                snakemake.params.names, snakemake.input.figures, snakemake.input.captions, snakemake.params.notes  # noqa: F821
            )
        ],
        title=snakemake.params.title,  # noqa: F821
        config=snakemake.params.caption_config,  # noqa: F821
        output=snakemake.output[0],  # noqa: F821
        neurons=dict(zip(snakemake.params.models, snakemake.input.neurons)),  # noqa: F821
        atlases=dict(zip(snakemake.params.atlas_models, snakemake.input.atlases)),  # noqa: F821
    )
