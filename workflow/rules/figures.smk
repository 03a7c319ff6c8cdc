"""One rule per paper figure, from tables only: restyling a figure reruns just that rule."""

for _figure in FIGURE_SPECS:  # a figure left out of `all` (`draw: false`) can still be asked for

    rule:
        name:
            _figure
        input:
            **figure_tables(_figure),
        output:
            **figure_outputs(_figure),
        params:
            figure=_figure,
            kinds=list(FIGURE_SPECS[_figure].tables),
            style=figure_style(_figure),
            labels=canonical({model: model_label(config, model) for model in figure_models(_figure)}),
            analysis={  # named in Fig. 2's axis label; drawn in the universal-neuron figures
                "ngram_coverage": config["analysis"]["ngram_coverage"],
                "universal_thresholds": {model: study["threshold"] for model, study in config["universal"].items()},
                "roles": config["analysis"]["roles"],  # drawn in vocab_roles
            },
        log:
            f"results/logs/figures/{_figure}.log",
        conda:
            "../../envs/neuron-census.yaml"
        script:
            "../scripts/figure.py"
