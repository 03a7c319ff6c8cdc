"""A self-contained HTML report: every figure embedded as PNG, with its caption."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2


def _caption_html(text: str) -> str:
    paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(' '.join(p.split()))}</p>" for p in paragraphs)


def render_caption(template: str, config: Mapping[str, Any]) -> str:
    """A caption's text: captions are Jinja2 templates reading `snakemake.config`, as Snakemake's own
    `--report` renders them, so both reports name the configured thresholds. A key the given `config`
    lacks is an error, not an empty gap in the text."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    return environment.from_string(template).render(snakemake=SimpleNamespace(config=config))


def render_report(entries: Sequence[Mapping[str, str]], title: str, config: Mapping[str, Any] | None = None) -> str:
    """`entries`: dicts with `name`, `png` (path), `caption` (path to a caption template) and optionally
    `note` (text closing the caption); `config`: what the captions may read of the workflow's config
    (`analysis` and `figures`)."""
    sections = []
    for entry in entries:
        image = base64.b64encode(Path(entry["png"]).read_bytes()).decode("ascii")
        caption = _caption_html(render_caption(Path(entry["caption"]).read_text(encoding="utf-8"), config or {}))
        if entry.get("note"):
            caption += f"<p class=note>{html.escape(entry['note'])}</p>"
        sections.append(
            f'<section id="{html.escape(entry["name"])}"><h2>{html.escape(entry["name"])}</h2>'
            f'<img alt="{html.escape(entry["name"])}" src="data:image/png;base64,{image}">'
            f"<div class=caption>{caption}</div></section>"
        )
    toc = "".join(f'<li><a href="#{html.escape(e["name"])}">{html.escape(e["name"])}</a></li>' for e in entries)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
        "img{max-width:100%}.caption{color:#333}.note{font-style:italic}section{margin-bottom:3em}"
        f"</style></head><body><h1>{html.escape(title)}</h1><ul>{toc}</ul>{''.join(sections)}</body></html>\n"
    )
