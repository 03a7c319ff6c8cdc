"""neuron-census: text -> token shards -> streaming accumulators -> tables -> figures -> report."""

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a full config (e.g. a preset) is given with --configfile;
# --config KEY=VALUE overrides apply on top of either.
if not workflow.config_settings.configfiles:
    workflow.configfile(f"{workflow.basedir}/config/config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/universal.smk"
include: "workflow/rules/subupdates.smk"
include: "workflow/rules/probing.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/atlas.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand("results/{model}/{table}.parquet", model=MODELS, table=["neurons", "layers"]),
        expand("results/{model}/{table}.parquet", model=list(config["universal"]), table=sorted(STUDY_TABLES["universal"])),
        expand("results/{model}/{table}.parquet", model=list(config["subupdates"]), table=sorted(STUDY_TABLES["subupdates"])),
        expand("results/{model}/{table}.parquet", model=list(config["steering"]), table=sorted(STUDY_TABLES["steering"])),
        expand("results/{model}/{table}.parquet", model=list(config["probing"]), table=sorted(STUDY_TABLES["probing"])),
        expand("results/figures/{figure}.{ext}", figure=FIGURES, ext=["png", "pdf"]),
        expand("results/atlas/{model}", model=ATLAS_MODELS),
        "results/report.html",
    default_target: True
