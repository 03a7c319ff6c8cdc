"""A self-contained HTML report: a summary row per model (linking to its neuron atlas), then every figure
embedded as PNG with its caption and, where the figure has a CSV, its first rows as a table whose neurons
link to their atlas pages."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import polars as pl

from neuron_census.analyses.kinds import SUMMARY_KEYS


def render_caption(template: str, config: Mapping[str, Any]) -> str:
    """A caption's text: captions are Jinja2 templates reading `snakemake.config`, as Snakemake's own
    `--report` renders them, so both reports name the configured thresholds. A key the given `config`
    lacks is an error, not an empty gap in the text."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    return environment.from_string(template).render(snakemake=SimpleNamespace(config=config))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.3g}"
    return html.escape("" if value is None else str(value))


def summary_table(summaries: Mapping[str, Mapping[str, Any]], atlases: Mapping[str, str]) -> str:
    """The models' summary rows (`analyses.kinds.model_summary`), each model linking to its atlas index."""
    present = {key for summary in summaries.values() for key in summary}
    columns = [key for key in SUMMARY_KEYS if key in present] + sorted(present - set(SUMMARY_KEYS))
    rows = []
    for model, summary in summaries.items():
        name = html.escape(model)
        if model in atlases:
            name = f'<a href="{html.escape(atlases[model])}/index.html">{name}</a>'
        rows.append(f"<tr><td>{name}</td>" + "".join(f"<td>{_cell(summary.get(c, ''))}</td>" for c in columns) + "</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", *columns])
    return f"<table class=summary><tr>{head}</tr>{''.join(rows)}</table>"


def csv_table(path: str | Path, atlases: Mapping[str, str], root: Path, max_rows: int = 25) -> str:
    """A figure's CSV, its first `max_rows` rows, as an HTML table; a (model, layer, neuron) row links to the
    neuron's atlas page where it has one (`root`: the report's folder, where atlas paths start)."""
    frame = pl.read_csv(path, infer_schema_length=10_000)
    linked = {"model", "layer", "neuron"} <= set(frame.columns)
    rows = []
    for row in frame.head(max_rows).iter_rows(named=True):
        cells = {c: _cell(v) for c, v in row.items()}
        if linked and row["model"] in atlases:
            page = f"{atlases[row['model']]}/neurons/L{row['layer']}-N{row['neuron']}.html"
            if (root / page).is_file():
                cells["neuron"] = f'<a href="{html.escape(page)}">{cells["neuron"]}</a>'
        rows.append("<tr>" + "".join(f"<td>{cells[c]}</td>" for c in frame.columns) + "</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    more = f"<p class=note>The first {max_rows} of {frame.height} rows; all in {html.escape(Path(path).name)}.</p>" if frame.height > max_rows else ""
    return f"<table class=data><tr>{head}</tr>{''.join(rows)}</table>{more}"


def render_report(
    entries: Sequence[Mapping[str, str]],
    title: str,
    config: Mapping[str, Any] | None = None,
    summaries: Mapping[str, Mapping[str, Any]] | None = None,
    atlases: Mapping[str, str] | None = None,
    root: str | Path = ".",
) -> str:
    """`entries`: dicts with `name`, `png` (path), `caption` (path to a caption template) and optionally
    `note` (text closing the caption), `csv` (path), `category` (its group in the contents) and
    `table_only` (the figure draws a table: the CSV's rows replace the picture); `config`: what the captions may read of the
    workflow's config (`analysis` and `figures`); `summaries`: a summary per model; `atlases`: model ->
    its atlas folder, relative to `root`, the folder the report is written to."""
    atlases = dict(atlases or {})
    sections = []
    for entry in entries:
        image = base64.b64encode(Path(entry["png"]).read_bytes()).decode("ascii")
        text = render_caption(Path(entry["caption"]).read_text(encoding="utf-8"), config or {})
        caption = "".join(f"<p>{html.escape(' '.join(p.split()))}</p>" for p in text.split("\n\n") if p.strip())
        if entry.get("note"):
            caption += f"<p class=note>{html.escape(entry['note'])}</p>"
        table = csv_table(entry["csv"], atlases, Path(root)) if entry.get("csv") else ""
        picture = f'<img alt="{html.escape(entry["name"])}" src="data:image/png;base64,{image}">'
        if table and entry.get("table_only"):  # a drawing of a table: the table itself, its neurons linked
            picture, table = table, ""
        sections.append(
            f'<section id="{html.escape(entry["name"])}"><h2>{html.escape(entry["name"])}</h2>'
            f"{picture}<div class=caption>{caption}</div>{table}</section>"
        )
    summary = ""
    if summaries:
        summary = "<h2>Models</h2>" + summary_table(summaries, atlases)
        if atlases:
            summary += "<p>Each model's name opens its neuron atlas: every neuron, filtered by kind, with a page per flagged neuron.</p>"
    groups: dict[str, list[str]] = {}
    for e in entries:
        groups.setdefault(e.get("category") or "Figures", []).append(f'<a href="#{html.escape(e["name"])}">{html.escape(e["name"])}</a>')
    toc = "".join(f"<li>{html.escape(group)}: {', '.join(links)}</li>" for group, links in groups.items())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
        "img{max-width:100%}.caption{color:#333}.note{font-style:italic}section{margin-bottom:3em}"
        "table{border-collapse:collapse;font-size:small}td,th{padding:2px 6px;text-align:left}tr:nth-child(even){background:#f4f4f4}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{summary}<ul>{toc}</ul>{''.join(sections)}</body></html>\n"
    )
