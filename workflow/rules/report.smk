"""The HTML report: every figure with its caption, in one self-contained file."""


rule report:
    input:
        figures=expand("results/figures/{figure}.png", figure=FIGURES),
        captions=[workflow.source_path(f"../report/{figure}.rst") for figure in FIGURES],
    output:
        "results/report.html",
    params:
        names=FIGURES,
        notes=[planted_note(figure) for figure in FIGURES],
        title=config["report"]["title"],
        caption_config=canonical({key: config[key] for key in ("analysis", "figures")}),  # captions name thresholds
    log:
        "results/logs/report.log",
    conda:
        "../../envs/neuron-census.yaml"
    script:
        "../scripts/report.py"
