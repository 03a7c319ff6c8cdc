"""A model's neuron index: one row per neuron, loaded a layer at a time from script files (a page opened from
disk may not fetch files, but may load scripts), filtered and sorted in the browser. Pure: rows in, text out."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from neuron_census.atlas.pages import STYLE

COLUMNS = ("neuron", "fire_freq", "kinds", "detected", "probes", "page")  # one row of a layer's script

INDEX = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ model }}: neuron index</title><style>{{ style }}
th.sort{cursor:pointer;text-decoration:underline dotted}#controls label{margin-right:1em}</style></head>
<body><h1>{{ model }}: neuron index</h1>
<p>{{ n_neurons }} neurons in {{ layers | length }} layers; {{ n_pages }} have a page (every neuron an analysis flags,
at most {{ per_layer }} a layer, and {{ others }} others a layer).</p>
<table id="summary"><tr><th>layer</th><th>neurons</th>{% for kind in kinds %}<th>{{ kind }}</th>{% endfor %}<th>pages</th></tr>
{% for row in summary %}<tr><td>{{ row.layer }}</td><td>{{ row.neurons }}</td>{% for kind in kinds %}<td>{{ row.counts[kind] }}</td>{% endfor %}<td>{{ row.pages }}</td></tr>{% endfor %}
</table>
<div id="controls"><p><label>layer <select id="layer"><option value="">choose</option>{% for layer in layers %}<option value="{{ layer }}">{{ layer }}</option>{% endfor %}<option value="all">all</option></select></label>
<label>kind <select id="kind"><option value="">any</option>{% for kind in kinds %}<option value="{{ kind }}">{{ kind }}</option>{% endfor %}</select></label>
<label>text <input id="q" type="search" placeholder="detected token, feature"></label>
<label><input id="paged" type="checkbox"> with a page</label></p></div>
<p id="status">Choose a layer.</p>
<table id="neurons"><thead><tr><th class="sort" data-key="layer">layer</th><th class="sort" data-key="neuron">neuron</th>
<th class="sort" data-key="fire_freq">firing frequency</th><th>kinds</th><th>detected</th><th>probe features</th></tr></thead><tbody></tbody></table>
<script>
const COLUMNS = {{ columns | tojson }};
const LIMIT = 2000;
const rows = {};
let sortKey = "neuron", sortDown = false;
function atlasRows(layer, data) {
  rows[layer] = data.map(r => Object.assign({layer: layer}, Object.fromEntries(COLUMNS.map((c, i) => [c, r[i]]))));
  render();
}
function wanted() {
  const v = document.getElementById("layer").value;
  return v === "all" ? {{ layers | tojson }} : (v === "" ? [] : [Number(v)]);
}
function load() {
  for (const layer of wanted()) {
    if (rows[layer] || document.getElementById("rows-" + layer)) continue;
    const s = document.createElement("script");
    s.id = "rows-" + layer;
    s.src = "rows/layer-" + layer + ".js";
    document.head.appendChild(s);
  }
  render();
}
function render() {
  const kind = document.getElementById("kind").value, q = document.getElementById("q").value.toLowerCase();
  const paged = document.getElementById("paged").checked;
  let shown = [];
  for (const layer of wanted()) for (const r of rows[layer] || []) {
    if (kind && !r.kinds.split("; ").includes(kind)) continue;
    if (q && !(r.detected + " " + r.probes).toLowerCase().includes(q)) continue;
    if (paged && !r.page) continue;
    shown.push(r);
  }
  shown.sort((a, b) => (a[sortKey] < b[sortKey] ? -1 : a[sortKey] > b[sortKey] ? 1 : a.layer - b.layer || a.neuron - b.neuron) * (sortDown ? -1 : 1));
  const body = document.querySelector("#neurons tbody");
  body.replaceChildren();
  for (const r of shown.slice(0, LIMIT)) {
    const tr = document.createElement("tr");
    const cells = [r.layer, r.neuron, r.fire_freq === null ? "" : r.fire_freq.toPrecision(3), r.kinds, r.detected, r.probes];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 1 && r.page) { const a = document.createElement("a"); a.href = r.page; a.textContent = value; td.appendChild(a); }
      else td.textContent = value;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  const loaded = wanted().every(l => rows[l]);
  document.getElementById("status").textContent = wanted().length === 0 ? "Choose a layer." :
    (loaded ? "" : "loading ... ") + shown.length + " neurons match" + (shown.length > LIMIT ? ", the first " + LIMIT + " shown" : "") + ".";
  const state = new URLSearchParams({layer: document.getElementById("layer").value, kind: kind, q: q, paged: paged ? "1" : ""});
  history.replaceState(null, "", "#" + state.toString());
}
for (const id of ["layer", "kind", "q", "paged"]) document.getElementById(id).addEventListener(id === "q" ? "input" : "change", load);
for (const th of document.querySelectorAll("th.sort")) th.addEventListener("click", () => {
  sortDown = sortKey === th.dataset.key ? !sortDown : th.dataset.key === "fire_freq";
  sortKey = th.dataset.key;
  render();
});
const initial = new URLSearchParams(location.hash.slice(1));
document.getElementById("layer").value = initial.get("layer") || "";
document.getElementById("kind").value = initial.get("kind") || "";
document.getElementById("q").value = initial.get("q") || "";
document.getElementById("paged").checked = initial.get("paged") === "1";
load();
</script></body></html>
""")


def layer_rows_script(layer: int, rows: Sequence[Sequence[Any]]) -> str:
    """The script that hands one layer's rows (in COLUMNS order) to the index."""
    return f"atlasRows({int(layer)}, {json.dumps([list(r) for r in rows], ensure_ascii=False, allow_nan=False)});\n"


def index_page(
    model: str, layers: Sequence[int], kinds: Sequence[str], summary: Sequence[Mapping[str, Any]], n_pages: int, per_layer: int, others: int
) -> str:
    """The index of one model: a summary row per layer (neurons, count of each kind, pages) and the browser
    table whose rows come from `rows/layer-<l>.js`."""
    return INDEX.render(
        model=model, layers=list(layers), kinds=list(kinds), summary=list(summary), n_pages=n_pages, style=STYLE,
        n_neurons=sum(int(row["neurons"]) for row in summary), per_layer=per_layer, others=others, columns=list(COLUMNS),
    )
