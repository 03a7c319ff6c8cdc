"""The HTML report: a summary row per model linking to its atlas, then every figure with its caption (and its
CSV's first rows, neurons linked to their atlas pages), in one file."""


rule report:
    input:
        figures=expand("results/figures/{figure}.png", figure=FIGURES),
        captions=[workflow.source_path(f"../report/{figure}.rst") for figure in FIGURES],
        csvs=[f"results/figures/{figure}.csv" for figure in FIGURES if FIGURE_SPECS[figure].csv is not None],
        neurons=expand("results/{model}/neurons.parquet", model=MODELS),
        atlases=expand("results/atlas/{model}", model=ATLAS_MODELS),
    output:
        "results/report.html",
    params:
        names=FIGURES,
        csv_names=[figure for figure in FIGURES if FIGURE_SPECS[figure].csv is not None],
        models=MODELS,
        atlas_models=ATLAS_MODELS,
        notes=[planted_note(figure) for figure in FIGURES],
        title=config["report"]["title"],
        caption_config=canonical({key: config[key] for key in ("analysis", "figures")}),  # captions name thresholds
    log:
        "results/logs/report.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/report.py"
