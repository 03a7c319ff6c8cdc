"""One neuron's page: every section an analysis has data for, none shown empty. Pure: rows in, HTML out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import numpy as np

from neuron_census.analyses.kinds import neuron_kinds, present

STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:auto;padding:1em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
    "tr:nth-child(even){background:#f4f4f4}.ctx{font-family:monospace;white-space:pre}"
    "mark{background:#fd6;font-weight:bold}.kind{display:inline-block;margin:2px;padding:1px 6px;border-radius:3px;background:#dde8f5}"
    ".tok{font-family:monospace;white-space:pre;background:#eee;margin:1px;padding:0 2px}"
)

PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ model }} L{{ layer }} N{{ neuron }}</title><style>{{ style }}</style></head>
<body><p><a href="../index.html">{{ model }} neuron index</a></p>
<h1>{{ model }}: layer {{ layer }}, neuron {{ neuron }}</h1>
<p id="kinds">{% for kind in kinds %}<span class="kind">{{ kind }}</span>{% else %}no kind found{% endfor %}</p>
<section id="activity"><h2>Activity</h2><table>
{% for name, value in activity %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}
</table>{% if rate_svg %}<h3>Firing rate by position</h3>{{ rate_svg | safe }}{% endif %}</section>
{% if detectors %}<section id="detectors"><h2>Detector</h2><table>
{% for name, items in detectors %}<tr><th>{{ name }}</th><td>{% for item in items %}<span class="tok">{{ item }}</span>{% endfor %}</td></tr>{% endfor %}
</table></section>{% endif %}
{% if examples %}<section id="examples"><h2>Top activating examples</h2><table><tr><th>activation</th><th>where</th><th>context</th></tr>
{% for e in examples %}<tr><td>{{ "%.3g" | format(e.activation) }}</td><td>{{ e.dataset }} {{ e.seq }}:{{ e.position }}</td>
<td class="ctx">{% for t in e.context %}{% if loop.index0 == e.focus %}<mark>{{ t }}</mark>{% else %}{{ t }}{% endif %}{% endfor %}</td></tr>{% endfor %}
</table></section>{% endif %}
{% if vocab %}<section id="vocab"><h2>Value vector in vocabulary space</h2><table>
{% for name, pairs in vocab %}<tr><th>{{ name }}</th><td>{% for token, score in pairs %}<span class="tok">{{ token }}</span> {{ "%.3g" | format(score) }} {% endfor %}</td></tr>{% endfor %}
</table></section>{% endif %}
{% if universal %}<section id="universal"><h2>Universality</h2><table>
{% for name, value in universal.summary %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% if universal.matches %}<h3>Best partner in each other model</h3><table><tr><th>model</th><th>neuron</th><th>correlation</th><th>baseline</th></tr>
{% for m in universal.matches %}<tr><td>{{ m.other }}</td><td>L{{ m.match_layer }} N{{ m.match_neuron }}</td><td>{{ "%.3f" | format(m.max_corr) }}</td><td>{{ "%.3f" | format(m.baseline) }}</td></tr>{% endfor %}
</table>{% endif %}</section>{% endif %}
{% if subupdates %}<section id="subupdates"><h2>Dominant sub-updates</h2><p>{{ subupdates.count }} predictions where this neuron's sub-update is among the dominant ones.</p><table><tr><th>score</th><th>context</th><th>promotes</th></tr>
{% for s in subupdates.examples %}<tr><td>{{ "%.3g" | format(s.score) }}</td><td class="ctx">{{ s.context }}</td><td>{{ "yes" if s.promotes else "no" }}</td></tr>{% endfor %}
</table></section>{% endif %}
{% if probes %}<section id="probing"><h2>Sparse probing</h2><p>A k = 1 probe on this neuron reads (test F1 {{ "%.3f" | format(probes.f1) }} at best):</p>
<p>{% for feature in probes.features %}<span class="kind">{{ feature }}</span>{% endfor %}</p></section>{% endif %}
</body></html>
""")


def rate_svg(rates: np.ndarray, width: int = 480, height: int = 90) -> str:
    """The firing rate by position as an inline SVG line (positions left to right, rate 0 to 1 bottom to top)."""
    rates = np.asarray(rates, dtype=float)
    if rates.size < 2:
        return ""
    x = np.linspace(0, width, rates.size)
    y = height - np.clip(np.nan_to_num(rates), 0, 1) * height
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    return (
        f'<svg class="rates" width="{width}" height="{height + 16}" role="img" aria-label="firing rate by position">'
        f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>'
        f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{points}"/>'
        f'<text x="0" y="{height + 13}" font-size="11">position 1</text>'
        f'<text x="{width}" y="{height + 13}" font-size="11" text-anchor="end">{rates.size}</text></svg>'
    )


def neuron_page(
    model: str,
    row: Mapping[str, Any],
    examples: Sequence[Mapping[str, Any]] = (),
    rates: np.ndarray | None = None,
    matches: Sequence[Mapping[str, Any]] = (),
    subupdates: Mapping[str, Any] | None = None,
) -> str:
    """The page of one neuron of `model`: `row` its neurons.parquet row (columns a model lacks are simply
    absent), its top examples, firing rate per counted position, best partners in other models and dominant
    sub-updates (count and examples)."""
    activity = [(name, value) for name, value in (
        ("firing frequency", f"{row['fire_freq']:.4g}" if present(row, "fire_freq") else None),
        ("tokens counted", row.get("n_tokens")),
        ("activation mean / std", f"{row['act_mean']:.3g} / {row['act_std']:.3g}" if present(row, "act_mean") else None),
        ("activation min / max", f"{row['act_min']:.3g} / {row['act_max']:.3g}" if present(row, "act_min") else None),
        ("mutual information with position", f"{row['position_mi']:.3g}" if present(row, "position_mi") else None),
        ("positional type", f"{row['positional_type']} ({'strong' if row.get('positional_strong') else 'weak'})" if row.get("positional") else None),
    ) if value is not None]
    detectors = [(name, list(row.get(key) or [])) for name, key in (("detected tokens", "detected_token_strings"), ("detected bigrams", "detected_bigrams")) if row.get(key)]
    vocab = [
        (name, list(zip(row[tokens], row[scores])))
        for name, tokens, scores in (("promoted", "vocab_top_tokens", "vocab_top_scores"), ("suppressed", "vocab_bottom_tokens", "vocab_bottom_scores"))
        if row.get(tokens)
    ]
    summary = [(name, f"{row[key]:.3f}" if isinstance(row[key], float) else row[key]) for name, key in (
        ("best correlation with another model", "max_corr"), ("excess over the random baseline", "excess_corr"),
        ("family", "family"), ("its feature", "best_feature"), ("variance reduction", "best_vr"),
    ) if present(row, key)]
    universal = {"summary": summary, "matches": list(matches)} if summary or matches else None
    probes = {"features": list(row["probe_features"]), "f1": row["probe_f1"]} if row.get("probe_features") else None
    return PAGE.render(
        model=model, layer=row["layer"], neuron=row["neuron"], style=STYLE, kinds=neuron_kinds(row), activity=activity,
        rate_svg=rate_svg(rates) if rates is not None else "", detectors=detectors, examples=list(examples), vocab=vocab,
        universal=universal, subupdates=subupdates if subupdates and subupdates.get("count") else None, probes=probes,
    )
