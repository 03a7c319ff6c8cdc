"""Fig. 5 of Voita et al. (2023): token detectors, what their value vectors promote and suppress.

The figure is a rendered table of a few examples chosen deterministically from the `neurons` table, with a
subtitle counting how many of all token detectors suppress their own triggers (definition in
`neuron_census.analyses.vocab`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import polars as pl
from matplotlib.figure import Figure

from neuron_census.plots.figures import _style, model_order, with_columns
from neuron_census.data.tokenization import escape_token

TABLE_COLUMNS: tuple[str, ...] = ("model", "layer:neuron", "detected tokens", "top promoted", "top suppressed")
ROW_SCALE = 1.3  # table rows are this much taller than matplotlib's default
# matplotlib sizes a table row for its default 10 pt text (1.2 line heights), whatever font is set later
ROW_INCHES = 10.0 / 72.0 * 1.2 * ROW_SCALE
TITLE_INCHES = 0.8  # two lines of title and the figure's margins

PROJECTION_FRAME_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.Utf8(),
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "detected_tokens": pl.Utf8(),
    "promoted": pl.Utf8(),
    "suppressed": pl.Utf8(),
    "trigger_z": pl.Float64(),
    "suppresses_trigger": pl.Boolean(),
}

# Columns detector_projection_frame reads from the neurons table; a model without them reads as nulls.
_NEURON_COLUMNS: dict[str, pl.DataType] = {
    "model": pl.Utf8(),
    "layer": pl.Int64(),
    "neuron": pl.Int64(),
    "token_detector": pl.Boolean(),
    "detected_token_strings": pl.List(pl.Utf8),
    "suppresses_trigger": pl.Boolean(),
    "trigger_z": pl.Float64(),
    "vocab_top_tokens": pl.List(pl.Utf8),
    "vocab_top_scores": pl.List(pl.Float64),
    "vocab_bottom_tokens": pl.List(pl.Utf8),
    "vocab_bottom_scores": pl.List(pl.Float64),
}


def format_entries(tokens: Sequence[str] | None, scores: Sequence[float] | None, n_show: int) -> str | None:
    """The first n_show tokens as `tok (1.23) | tok (0.5)`, or without scores when none are given. Scores
    keep three significant digits: value vectors of small models score in thousandths."""
    if tokens is None:
        return None
    shown = [escape_token(t) for t in list(tokens)[:n_show]]
    if scores is not None:
        shown = [f"{token} ({score:.3g})" for token, score in zip(shown, scores)]
    return " | ".join(shown)


def detector_projection_frame(neurons: pl.DataFrame, n_show: int = 5) -> pl.DataFrame:
    """Fig. 5's data: per token detector its tokens, top promoted and suppressed tokens, and trigger_z.

    Sorted by model (legend order), layer, neuron; columns and dtypes PROJECTION_FRAME_SCHEMA; the string
    columns are null where the neuron has no vocabulary projection.
    """
    frame = with_columns(neurons, _NEURON_COLUMNS).cast(_NEURON_COLUMNS)
    frame = frame.filter(pl.col("token_detector").fill_null(False))
    models = model_order(frame)  # sorted by legend order, not by name
    legend_order = pl.col("model").replace_strict(models, range(len(models)), default=len(models), return_dtype=pl.Int64)
    frame = frame.sort(legend_order, "layer", "neuron", maintain_order=True)
    texts = {"detected_tokens": [format_entries(t, None, n_show) for t in frame["detected_token_strings"].to_list()]}
    for name, side in (("promoted", "top"), ("suppressed", "bottom")):
        tokens, scores = frame[f"vocab_{side}_tokens"].to_list(), frame[f"vocab_{side}_scores"].to_list()
        texts[name] = [format_entries(t, s, n_show) for t, s in zip(tokens, scores)]
    return frame.with_columns(
        [pl.Series(name, values, dtype=pl.Utf8) for name, values in texts.items()]
    ).select(pl.col(name).cast(dtype) for name, dtype in PROJECTION_FRAME_SCHEMA.items())


def pick_examples(frame: pl.DataFrame, n_examples: int) -> pl.DataFrame:
    """Up to n_examples rows of a detector_projection_frame, spread over its (model, layer) groups.

    Round-robin over the groups in the frame's order (model legend order, then layer), lowest neuron first
    inside a group; the picked rows keep the frame's order.
    """
    if n_examples <= 0 or frame.is_empty():
        return frame.head(0)
    ranked = frame.with_row_index("_row").with_columns(
        _turn=pl.int_range(pl.len()).over("model", "layer"),
        _group=pl.col("_row").min().over("model", "layer"),
    )
    picked = ranked.sort("_turn", "_group").head(n_examples).sort("_row")
    return picked.drop("_row", "_turn", "_group")


def suppression_summary(frame: pl.DataFrame) -> str:
    """`x of y token detectors suppress their triggers`, over detectors with a known answer."""
    known = frame["suppresses_trigger"].drop_nulls()
    text = f"{int(known.sum())} of {known.len()} token detectors suppress their triggers"
    unknown = frame.height - known.len()
    return f"{text} ({unknown} without a projection)" if unknown else text


def _mathtext_safe(text: str | None) -> str:
    """Cell text shown literally: token strings may hold `$`, which matplotlib would read as math."""
    return "-" if text is None else text.replace("$", r"\$")


def table_cells(examples: pl.DataFrame) -> list[list[str]]:
    """The table's text, one row per example, columns as TABLE_COLUMNS."""
    return [
        [_mathtext_safe(model), f"{layer}:{neuron}", *(_mathtext_safe(t) for t in texts)]
        for model, layer, neuron, *texts in examples.select(
            "model", "layer", "neuron", "detected_tokens", "promoted", "suppressed"
        ).iter_rows()
    ]


def column_lengths(cells: list[list[str]]) -> list[int]:
    """Characters of the longest text in each column (header included), plus two of padding."""
    return [max(len(text) for text in column) + 2 for column in zip(TABLE_COLUMNS, *cells)]


def table_height(n_rows: int, max_height: float) -> float:
    """Figure height in inches for a table of `n_rows` (and its header; with none, the line saying so) under a
    two-line title: at most `max_height` (the style's), so a few detectors are not centred in white space."""
    return min(max_height, TITLE_INCHES + (n_rows + 1) * ROW_INCHES)


def plot_detector_projections(tables: Mapping[str, pl.DataFrame], style: Mapping[str, Any]) -> Figure:
    """Fig. 5: example token detectors with their top promoted and top suppressed tokens (scores in brackets).

    Style: n_examples (8) rows, n_tokens (3) tokens per cell, title; figsize is the width (a wide one suits the
    table) and the most height: the figure is as tall as its table.
    """
    style = _style(style)
    frame = detector_projection_frame(tables.get("neurons", pl.DataFrame()), n_show=style.get("n_tokens", 3))
    cells = [] if frame.is_empty() else table_cells(pick_examples(frame, style.get("n_examples", 8)))
    width, height = (float(size) for size in style["figsize"])
    fig, ax = plt.subplots(figsize=(width, table_height(len(cells), height)), dpi=style["dpi"], layout="constrained")
    ax.set_axis_off()
    title = style.get("title", "")
    if frame.is_empty():
        ax.text(0.5, 0.5, "no token detectors", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_title(title)
        return fig
    lengths = column_lengths(cells)  # the columns share the width as their texts' lengths do
    table = ax.table(
        cellText=cells, colLabels=list(TABLE_COLUMNS), colWidths=[length / sum(lengths) for length in lengths],
        cellLoc="left", colLoc="left", loc="center",
    )
    table.auto_set_font_size(False)
    # the largest font (at most 8 pt) at which the widest row fits the figure (a character is ~0.6 em wide)
    table.set_fontsize(max(3.0, min(8.0, 0.95 * 72.0 * width / (0.6 * sum(lengths)))))
    table.scale(1.0, ROW_SCALE)
    for (row, _), cell in table.get_celld().items():
        cell.PAD = 0.02
        if row == 0:
            cell.set_text_props(weight="bold")
    subtitle = suppression_summary(frame)
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize="small")
    return fig
