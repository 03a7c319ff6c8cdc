"""Every paper figure: the module and function that draw it, the per-model tables it reads, and its
section of the report. Adding a figure is an entry here and its drawing function; its rule follows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FigureSpec:
    """Where a paper figure's drawing function lives and which per-model tables it reads."""

    module: str
    function: str
    tables: tuple[str, ...]
    category: str  # the report's section
    csv: str | None = None  # a function returning the figure's data as a table, written next to it
    drawn_table: bool = False  # the drawing is a table: the report shows its CSV as an HTML table instead
    defaults: Mapping[str, Any] = field(default_factory=dict)  # style values the config may override


FIGURES: dict[str, FigureSpec] = {
    "fig1a_dead_neurons": FigureSpec("plots.figures", "plot_dead_neurons", ("layers",), "Dead neurons"),
    "fig1b_fire_frequency": FigureSpec("plots.figures", "plot_fire_frequency", ("layers",), "Dead neurons"),
    **{
        f"fig2_{name}_coverage": FigureSpec(
            "plots.ngrams", "plot_ngram_coverage", ("neurons", "layers"), "N-gram coverage", defaults={"order": order}
        )
        for order, name in ((1, "unigram"), (2, "bigram"), (3, "trigram"))
    },
    "fig3a_token_detectors": FigureSpec("plots.ngrams", "plot_token_detectors", ("layers",), "Token detectors"),
    "fig3b_detected_tokens": FigureSpec("plots.ngrams", "plot_detected_tokens", ("layers",), "Token detectors"),
    "fig4_new_tokens": FigureSpec("plots.ngrams", "plot_new_tokens", ("layers",), "Token detectors"),
    "fig5_detector_projections": FigureSpec(
        "plots.vocab", "plot_detector_projections", ("neurons",), "Token detectors", csv="detector_projection_frame", drawn_table=True
    ),
    "fig7_positional_examples": FigureSpec(
        "plots.positional", "plot_positional_examples", ("position_rates",), "Positional neurons"
    ),
    "fig8_positional_neurons": FigureSpec(
        "plots.positional", "plot_positional_neurons", ("neurons", "layers"), "Positional neurons"
    ),
    "fig9_oscillatory_ranges": FigureSpec(
        "plots.positional", "plot_oscillatory_ranges", ("position_rates",), "Positional neurons"
    ),
    **{
        name: FigureSpec("plots.positional", "plot_positional_neurons", ("neurons", "layers"), "Training experiment")
        for name in ("fig10_positional_nopos", "fig11_positional_training")
    },
    "universal_correlations": FigureSpec(
        "plots.universal", "plot_universal_correlations", ("universal",), "Universal neurons", defaults={"figsize": [10.0, 3.5]}
    ),
    "universal_by_layer": FigureSpec("plots.universal", "plot_universal_by_layer", ("universal",), "Universal neurons"),
    "universal_properties": FigureSpec(
        "plots.universal", "plot_universal_properties", ("universal",), "Universal neurons", defaults={"figsize": [9.0, 4.0]}
    ),
    "universal_families": FigureSpec(
        "plots.universal", "plot_universal_families", ("universal",), "Universal neurons", defaults={"figsize": [11.0, 3.8]}
    ),
    "entropy_neurons": FigureSpec(
        "plots.roles", "plot_entropy_neurons", ("entropy", "entropy_neurons"), "Entropy neurons", defaults={"figsize": [10.0, 3.5]}
    ),
    "attention_deactivation": FigureSpec(
        "plots.roles", "plot_attention_deactivation", ("attention_scores", "attention_paths"), "Attention-deactivation neurons",
        defaults={"figsize": [10.0, 3.8]},
    ),
    "vocab_roles": FigureSpec("plots.roles", "plot_vocab_roles", ("neurons",), "Prediction and suppression neurons", defaults={"figsize": [12.0, 3.8]}),
    "kind_overlaps": FigureSpec(
        "plots.kinds", "plot_kind_overlaps", ("neurons",), "Across the papers", csv="kind_overlap_frame", defaults={"figsize": [12.0, 5.5]}
    ),
    "saturation_layers": FigureSpec("plots.subupdates", "plot_saturation_layers", ("predictions",), "FFN sub-updates"),
    "subupdate_roles": FigureSpec(
        "plots.subupdates", "plot_subupdate_roles", ("subupdate_layers",), "FFN sub-updates", defaults={"figsize": [10.0, 3.8]}
    ),
    "concept_clusters": FigureSpec(
        "plots.subupdates", "plot_concept_clusters", ("clusters",), "FFN sub-updates", defaults={"figsize": [12.0, 3.8]}
    ),
    "subupdate_examples": FigureSpec(
        "plots.subupdates", "plot_subupdate_examples", ("predictions", "subupdates"), "FFN sub-updates",
        defaults={"figsize": [12.0, 4.5], "n_examples": 3, "n_subupdates": 3}, csv="example_predictions_frame", drawn_table=True,
    ),
    "early_exit_accuracy": FigureSpec("plots.subupdates", "plot_early_exit", ("early_exit",), "FFN sub-updates", defaults={"figsize": [10.0, 4.0]}),
    "steering_effect": FigureSpec("plots.subupdates", "plot_steering", ("steering_summary",), "FFN sub-updates", defaults={"figsize": [10.0, 3.8]}),
    "probe_f1_by_k": FigureSpec("plots.probing", "plot_probe_f1_by_k", ("probes",), "Sparse probing", defaults={"figsize": [24.0, 3.5]}),
    "probe_best_single": FigureSpec("plots.probing", "plot_probe_best_single", ("probe_neurons",), "Sparse probing", defaults={"figsize": [14.0, 3.2]}),
    "probe_methods": FigureSpec("plots.probing", "plot_probe_methods", ("probes",), "Sparse probing", defaults={"figsize": [12.0, 4.0]}),
    "probe_precision_recall": FigureSpec(
        "plots.probing", "plot_probe_precision_recall", ("probe_neurons",), "Sparse probing", defaults={"figsize": [10.0, 4.0]}
    ),
    "monosemantic_neurons": FigureSpec(
        "plots.probing", "plot_monosemantic_neurons", ("probe_neurons",), "Sparse probing", defaults={"figsize": [9.0, 6.0], "max_rows": 20},
        csv="monosemantic_frame", drawn_table=True,
    ),
}

# tables that only the models of a study section (`universal`, `subupdates`, `steering`, `probing`) have: their figures draw those
STUDY_TABLES = {
    "universal": frozenset({"universal", "best_matches", "entropy", "entropy_neurons", "attention_scores", "attention_paths"}),
    "subupdates": frozenset({"predictions", "subupdates", "subupdate_layers", "value_clusters", "clusters", "early_exit", "early_exit_summary"}),
    "steering": frozenset({"steering", "steering_summary"}),
    "probing": frozenset({"probes", "probe_neurons", "probe_features"}),
}


def figure_study(figure: str) -> str | None:
    """The study section whose tables a figure draws (None: the census tables every model has)."""
    tables = set(FIGURES[figure].tables)
    return next((study for study, names in STUDY_TABLES.items() if names & tables), None)
