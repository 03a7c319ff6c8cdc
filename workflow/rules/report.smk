"""The HTML report: every figure with its caption, in one self-contained file."""


rule report:
    input:
        figures=expand("results/figures/{figure}.png", figure=FIGURES),
        captions=expand("workflow/report/{figure}.rst", figure=FIGURES),
    output:
        "results/report.html",
    params:
        names=FIGURES,
        title=config["report"]["title"],
    script:
        "../scripts/report.py"
