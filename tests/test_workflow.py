"""The Snakemake DAG end to end on a tiny config: what it finds, and what a change to it reruns."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from scipy import stats
from workflow_runs import ROOT, TABLES, TINY, new_workdir, planned_jobs, snakemake

from neuron_census.data.corpus import read_token_shard
from neuron_census.plots.registry import FIGURES, figure_study
from neuron_census.testing.planted import designed_tokens, get_recipe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = new_workdir(tmp_path_factory.mktemp("tiny"))
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2")
    return workdir


def test_tiny_dag_recovers_every_planted_role(tiny_run: Path):
    """The whole DAG on the census recipe's designed data finds exactly the planted neurons of every kind."""
    recipe = get_recipe("census")
    neurons = pl.read_parquet(tiny_run / "results" / "planted" / "neurons.parquet")
    shards = sorted((tiny_run / "results" / "tokens" / "planted" / "designed").glob("shard-*.zarr"))
    tokens = np.concatenate([read_token_shard(s)[0] for s in shards])
    np.testing.assert_array_equal(tokens, designed_tokens("census"))

    def found(column: str) -> set[tuple[int, int]]:
        return {(r["layer"], r["neuron"]) for r in neurons.filter(pl.col(column)).iter_rows(named=True)}

    def planted(role: str) -> set[tuple[int, int]]:
        return {(n.layer, n.neuron) for n in recipe.all_neurons() if n.role == role}

    assert found("dead") == planted("dead")
    assert found("token_detector") == planted("token_detector")
    assert found("bigram_detector") == planted("bigram_detector")
    assert found("positional") == planted("positional")
    for neuron in recipe.all_neurons():
        row = neurons.filter((pl.col("layer") == neuron.layer) & (pl.col("neuron") == neuron.neuron)).row(0, named=True)
        assert row["fire_count"] == int(neuron.fires(tokens)[:, 1:].sum()), neuron
        if neuron.role == "positional":
            assert (row["positional_type"], row["positional_strong"]) == (neuron.positional_type, neuron.positional_strong)
        if neuron.role == "token_detector":
            assert sorted(row["detected_tokens"]) == sorted(neuron.tokens)
            assert row["suppresses_trigger"] == bool(neuron.suppresses)
    assert neurons["n_tokens"].unique().to_list() == [tokens.shape[0] * (tokens.shape[1] - 1)]
    report = (tiny_run / "results" / "report.html").read_text()
    assert "exceeds 0.05 nats" in report and "{{" not in report  # captions rendered with the config's thresholds
    # every figure that draws the planted model closes its caption saying what it is
    tiny = yaml.safe_load(TINY.read_text())
    census_figures = [figure for figure in FIGURES if figure_study(figure) is None]
    assert report.count("&#x27;planted&#x27; is built in code: neurons of known roles") == sum(
        1 for figure in census_figures if "planted" in (tiny["figures"].get(figure, {}).get("models") or ["planted"])
    )
    study_figures = [figure for figure in FIGURES if figure_study(figure) == "universal"]
    census_seed_a = [figure for figure in census_figures if "planted-seed-a" in (tiny["figures"].get(figure, {}).get("models") or ["planted-seed-a"])]
    assert report.count("&#x27;planted-seed-a&#x27; is built in code with other models of its family") == len(study_figures) + len(census_seed_a)
    csv = pl.read_csv(tiny_run / "results" / "figures" / "fig5_detector_projections.csv")
    assert csv.filter(pl.col("model") == "planted").height == len(planted("token_detector"))


def test_tiny_dag_finds_exactly_the_planted_universal_neurons(tiny_run: Path):
    """The planted seed family through the whole DAG: the copied neurons are the universal ones, each matched
    to its copy in both other models."""
    from neuron_census.testing.planted_seeds import (
        FAMILY_LAYERS,
        FAMILY_POSITIONS,
        FAMILY_VOCAB,
        build_seed_family,
    )

    family = build_seed_family(3, n_layers=FAMILY_LAYERS, vocab=FAMILY_VOCAB, max_positions=FAMILY_POSITIONS)
    universal = pl.read_parquet(tiny_run / "results" / "planted-seed-a" / "universal.parquet")
    assert universal.height == 3 * 256 and universal["model"].unique().to_list() == ["planted-seed-a"]
    assert set(universal.filter("universal").select("layer", "neuron").iter_rows()) == set(family.universal)
    matches = pl.read_parquet(tiny_run / "results" / "planted-seed-a" / "best_matches.parquet")
    others = {"planted-seed-b": "b", "planted-seed-c": "c"}
    for row in matches.iter_rows(named=True):
        if (row["layer"], row["neuron"]) in family.universal:
            partner = family.partners[others[row["other"]]][row["layer"], row["neuron"]]
            assert (row["match_layer"], row["match_neuron"]) == partner and row["max_corr"] > 0.9999
    (dead,) = family.dead
    assert universal.filter(pl.col("layer") == dead[0], pl.col("neuron") == dead[1])["max_corr"].to_list() == [0.0]
    # families: exactly the planted token-, position- and context-family neurons, each with its feature
    features = pl.read_parquet(tiny_run / "results" / "universal" / "planted-seed-a" / "designed" / "features.parquet")
    names = {("token", tuple(row["tokens"] or ())): row["feature"] for row in features.filter(pl.col("kind") == "token").iter_rows(named=True)}
    names |= {("position", row["below"]): row["feature"] for row in features.filter(pl.col("kind") == "position").iter_rows(named=True)}
    names |= {("context", row["source"]): row["feature"] for row in features.filter(pl.col("kind") == "context").iter_rows(named=True)}
    assert features.filter(pl.col("kind") == "context")["source"].to_list() == ["body", "opening"]
    expected = {cell: names[kind, (value,) if kind == "token" else value] for cell, (kind, value) in family.families.items()}
    found = {(row["layer"], row["neuron"]): row["family"] for row in universal.drop_nulls("family").iter_rows(named=True)}
    assert found == expected and sorted(kind for kind, _ in family.families.values()) == ["context", "position", "token"]
    # the entropy neuron, and no other
    found = pl.read_parquet(tiny_run / "results" / "planted-seed-a" / "entropy_neurons.parquet")
    assert set(found.filter("entropy_neuron").select("layer", "neuron").iter_rows()) == {family.entropy}
    # the attention-deactivation neuron, and no other
    paths = pl.read_parquet(tiny_run / "results" / "planted-seed-a" / "attention_paths.parquet")
    assert [tuple(row) for row in paths.filter("deactivates").select("layer", "neuron", "head_layer", "head").iter_rows()] == [family.deactivation]
    # activation properties over the same tokens, against the reference model's pre-activations
    shards = sorted((tiny_run / "results" / "tokens" / "planted" / "designed").glob("shard-*.zarr"))
    tokens = torch.from_numpy(np.concatenate([read_token_shard(s)[0] for s in shards]))
    model = family.models["a"]
    preacts = []
    hooks = [layer.fc1.register_forward_hook(lambda _m, _a, out: preacts.append(out)) for layer in model.model.decoder.layers]
    with torch.no_grad():
        model(input_ids=tokens)
    for hook in hooks:
        hook.remove()
    x = torch.stack(preacts).reshape(FAMILY_LAYERS, *tokens.shape, 256)[:, :, 1:].reshape(FAMILY_LAYERS, -1, 256).double().numpy()  # BOS dropped
    got = universal.sort("layer", "neuron")
    np.testing.assert_allclose(got["act_freq"].to_numpy(), (x > 0).mean(axis=1).reshape(-1))
    np.testing.assert_allclose(got["pre_mean"].to_numpy(), x.mean(axis=1).reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["pre_var"].to_numpy(), x.var(axis=1).reshape(-1), rtol=1e-4)
    np.testing.assert_allclose(got["pre_skew"].to_numpy(), stats.skew(x, axis=1).reshape(-1), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["pre_kurtosis"].to_numpy(), stats.kurtosis(x, axis=1, fisher=False).reshape(-1), rtol=1e-3)


def test_tiny_dag_reads_the_subupdates_of_stories260k(tiny_run: Path):
    """The sub-update study through the DAG: 12 predictions over every layer, consistent lens columns, the
    chosen sub-updates labelled, their shares per layer, and both figures."""
    results = tiny_run / "results" / "stories260k"
    lens = pl.read_parquet(results / "predictions.parquet")
    n_layers = lens["layer"].max() + 1
    assert lens.height == 12 * n_layers and lens["position"].min() >= 4
    last = lens.filter(pl.col("layer") == n_layers - 1)
    assert (last["top_after"] == last["final_token"]).all() and (last["rank_after"] == 0).all()
    for prediction in range(12):
        rows = lens.filter(pl.col("prediction") == prediction).sort("layer")
        settled = [layer for layer in range(n_layers) if (rows["top_after"][layer:] == rows["final_token"][0]).all()][0]
        assert rows["saturation_layer"].unique().to_list() == [settled]
    subupdates = pl.read_parquet(results / "subupdates.parquet")
    counts = subupdates.group_by("prediction", "layer", "kind").len()["len"].unique().to_list()
    assert counts == [4] and subupdates.height == 12 * n_layers * 8 and subupdates["promotes"].null_count() == 0
    assert subupdates["scoring"].unique().to_list() == ["absolute"]
    shares = pl.read_parquet(results / "subupdate_layers.parquet")
    assert shares.height == 2 * n_layers and (shares["n"] == 48).all()
    for figure in ("saturation_layers", "subupdate_roles", "concept_clusters", "subupdate_examples", "early_exit_accuracy"):
        assert (tiny_run / "results" / "figures" / f"{figure}.png").stat().st_size > 0
    from neuron_census.data.tokenization import load_tokenizer

    texts = load_tokenizer("stories260k", {"source": "local", "path": str(ROOT / "resources/models/stories260K")}).token_texts()
    assert lens["final_text"].to_list() == [texts[token] for token in lens["final_token"].to_list()]
    assert lens["context"].str.len_chars().min() > 0
    assigned = pl.read_parquet(results / "value_clusters.parquet")
    clusters = pl.read_parquet(results / "clusters.parquet")
    assert assigned.height == pl.read_parquet(results / "neurons.parquet").height
    assert clusters.group_by("layer").agg(pl.col("size").sum())["size"].unique().to_list() == [assigned.height // n_layers]
    assert (clusters.group_by("layer").len()["len"] == 64).all()
    # early exit: the job's table equals the methods run here on the DAG's tables, ids gathered row by row
    from neuron_census.analyses.early_exit import EarlyExitSettings, early_exit_table
    from neuron_census.jobs.subupdates import read_vectors

    table = pl.read_parquet(results / "early_exit.parquet")
    cluster_of = {(row["layer"], row["neuron"]): row["cluster"] for row in assigned.iter_rows(named=True)}
    ids = np.zeros((12, n_layers, 4), dtype=np.int64)
    for row in subupdates.filter(pl.col("kind") == "dominant").iter_rows(named=True):
        ids[row["prediction"], row["layer"], row["place"]] = cluster_of[row["layer"], row["neuron"]]
    ordered = lens.sort("prediction", "layer")
    residual, ffn = read_vectors(tiny_run / "results" / "subupdates" / "stories260k" / "vectors.zarr")
    assert residual.shape == ffn.shape == (12, n_layers, residual.shape[2]) and np.abs(ffn).sum() > 0
    expected = early_exit_table(
        ordered["top_after"].to_numpy().reshape(12, n_layers), ordered.filter(pl.col("layer") == 0)["saturation_layer"].to_numpy(),
        ids, residual, ffn, EarlyExitSettings(splits=2, folds=3, top=4),
    )
    assert table.drop("model").equals(expected) and table.height == 5 * 2
    assert table.filter(pl.col("method") == "oracle")["accuracy"].to_list() == [1.0, 1.0]
    summary = pl.read_parquet(results / "early_exit_summary.parquet")
    assert summary["method"].to_list() == ["rule", "residual", "ffn", "both", "oracle"] and (summary["splits"] == 2).all()


def test_tiny_dag_steers_stories260k_by_a_concept(tiny_run: Path):
    """Steering through the DAG: the two value vectors whose top tokens hold the concept's words most are
    set; every prompt gets a continuation of the asked length in both conditions, scored by the lexicon of
    the concept's words; the summary's rates and perplexities follow from them; the figure is drawn."""
    results = tiny_run / "results" / "stories260k"
    generations = pl.read_parquet(results / "steering.parquet")
    summary = pl.read_parquet(results / "steering_summary.parquet")
    assert generations.group_by("condition").len().sort("condition").rows() == [("baseline", 4), ("steered", 4)]
    assert generations["continuation_ids"].list.len().unique().to_list() == [6]
    assert (generations.filter(pl.col("condition") == "baseline")["continuation_ids"] != generations.filter(pl.col("condition") == "steered")["continuation_ids"]).any()
    words = re.compile(r"(?<!\w)(he|him|his)(?!\w)", re.IGNORECASE)
    assert generations["score"].to_list() == [float(bool(words.search(text))) for text in generations["continuation"].to_list()]
    vocab = pl.read_parquet(results / "vocab.parquet")
    from neuron_census.analyses.steering import concept_values
    from neuron_census.data.tokenization import load_tokenizer

    texts = load_tokenizer("stories260k", {"source": "local", "path": str(ROOT / "resources/models/stories260K")}).token_texts()
    chosen = concept_values(vocab, texts, ["he", "him", "his"], 2)
    assert sum(map(len, chosen.values())) == 2 and summary["n_values"].unique().to_list() == [2]
    assert summary["values"].unique().to_list() == [" ".join(f"{layer}:{neurons}" for layer, neurons in chosen.items())]
    for condition in ("baseline", "steered"):
        row = summary.filter(pl.col("condition") == condition)
        assert row["rate"][0] == generations.filter(pl.col("condition") == condition)["score"].mean()
        assert row["perplexity"][0] > 1.0 and row["perplexity_tokens"][0] == 3 * 63
    assert (tiny_run / "results" / "figures" / "steering_effect.png").stat().st_size > 0


ROLE_KINDS = {"dead": "dead", "token_detector": "token detector", "bigram_detector": "bigram detector", "positional": "positional"}


def _page_kinds(page: Path) -> list[str]:
    """The kind labels at the top of a neuron page."""
    line = re.search(r'<p id="kinds">(.*?)</p>', page.read_text(encoding="utf-8"), re.S).group(1)
    return re.findall(r'<span class="kind">(.*?)</span>', line)


def _paged(atlas: Path) -> dict[tuple[int, int], Path]:
    return {tuple(map(int, re.fullmatch(r"L(\d+)-N(\d+)\.html", p.name).groups())): p for p in (atlas / "neurons").glob("*.html")}


def test_tiny_dag_atlas_pages_show_exactly_the_planted_roles(tiny_run: Path):
    """Every planted neuron has a page showing its role, and no page shows a census role that was not planted;
    in the seed family, exactly the copied neurons show as universal (each with its copies as best partners),
    the entropy and attention-deactivation neurons as such, and each family neuron with its family."""
    from markupsafe import escape

    from neuron_census.testing.planted_seeds import FAMILY_LAYERS, FAMILY_POSITIONS, FAMILY_VOCAB, build_seed_family

    planted = {(n.layer, n.neuron): n for n in get_recipe("census").all_neurons()}
    pages = _paged(tiny_run / "results" / "atlas" / "planted")
    assert {cell for cell, n in planted.items() if n.role in ROLE_KINDS} <= set(pages)
    for cell, page in pages.items():
        kinds, neuron = _page_kinds(page), planted.get(cell)
        role = ROLE_KINDS.get(neuron.role) if neuron else None
        assert set(kinds) & set(ROLE_KINDS.values()) == ({role} if role else set()), (cell, kinds)
        if role == "token detector":
            assert ("suppresses its trigger" in kinds) == bool(neuron.suppresses), cell
        if role == "positional":
            assert f"{neuron.positional_type} ({'strong' if neuron.positional_strong else 'weak'})" in page.read_text(), cell
    family = build_seed_family(3, n_layers=FAMILY_LAYERS, vocab=FAMILY_VOCAB, max_positions=FAMILY_POSITIONS)
    pages = _paged(tiny_run / "results" / "atlas" / "planted-seed-a")
    assert {cell for cell, page in pages.items() if "universal" in _page_kinds(page)} == set(family.universal)
    for cell in family.universal:
        text = pages[cell].read_text()
        for model, copy in (("planted-seed-b", "b"), ("planted-seed-c", "c")):
            layer, neuron = family.partners[copy][cell]
            assert f"<td>{model}</td><td>L{layer} N{neuron}</td><td>1.000</td>" in text, (cell, model)
    assert {cell for cell, page in pages.items() if "entropy neuron" in _page_kinds(page)} == {family.entropy}
    assert {cell for cell, page in pages.items() if "attention deactivation" in _page_kinds(page)} == {family.deactivation[:2]}
    universal = pl.read_parquet(tiny_run / "results" / "planted-seed-a" / "universal.parquet").drop_nulls("family")
    for layer, neuron, name in universal.select("layer", "neuron", "family").iter_rows():
        assert f"<tr><th>family</th><td>{escape(name)}</td></tr>" in pages[(layer, neuron)].read_text(), (layer, neuron)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium for a headless browser")
def test_tiny_dag_atlas_in_a_browser(tiny_run: Path):
    """Headless Chromium: the index loads a layer's rows, filters by kind and text from the address, every
    link of the index, of the pages and of the report resolves, and no page logs to the console."""
    import subprocess
    from html.parser import HTMLParser
    from urllib.parse import quote

    atlas = tiny_run / "results" / "atlas" / "planted"
    planted = [n for n in get_recipe("census").all_neurons() if n.role == "token_detector" and n.layer == 0]

    def dom(url: str) -> str:
        done = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert ":CONSOLE" not in done.stderr, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        return done.stdout

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.hrefs: list[str] = []
            self.cells: list[list[str]] = []

        def handle_starttag(self, tag, attrs):
            if tag == "a":
                self.hrefs.append(dict(attrs)["href"])
            if tag == "tr":
                self.cells.append([])

        def handle_data(self, data):
            if self.cells:
                self.cells[-1].append(data)

    def parsed(url: str, base: Path) -> Links:
        """The page's links (each must resolve) and the cells of its neuron table's rows."""
        text, links, table = dom(url), Links(), Links()
        links.feed(text)
        for href in links.hrefs:
            assert href.startswith("#") or (base / href.split("#")[0]).resolve().is_file(), (url, href)
        table.feed(text.split('id="neurons"', 1)[-1] if 'id="neurons"' in text else "")
        links.cells = [cells for cells in table.cells if cells and cells[0].isdigit()]
        return links

    index = atlas.resolve().as_uri() + "/index.html"
    shown = parsed(index + "#layer=0&kind=" + quote("token detector"), atlas)
    assert sorted((int(cells[0]), int(cells[1])) for cells in shown.cells) == sorted((0, n.neuron) for n in planted)
    token = planted[0]
    neurons = pl.read_parquet(tiny_run / "results" / "planted" / "neurons.parquet")
    word = neurons.filter(layer=0, neuron=token.neuron)["detected_token_strings"].to_list()[0][0]
    expected = {
        (row["layer"], row["neuron"]) for row in neurons.iter_rows(named=True)
        if word.lower() in " ".join([*(row["detected_token_strings"] or []), *(row["detected_bigrams"] or [])]).lower()
    }
    found = parsed(index + "#layer=all&q=" + quote(word), atlas)
    assert {(int(cells[0]), int(cells[1])) for cells in found.cells} == expected and expected
    for cell, page in sorted(_paged(atlas).items())[:6] + [((0, token.neuron), atlas / "neurons" / f"L0-N{token.neuron}.html")]:
        parsed(page.resolve().as_uri(), page.parent)
    report = parsed((tiny_run / "results" / "report.html").resolve().as_uri(), tiny_run / "results")
    assert "atlas/planted/index.html" in report.hrefs and f"atlas/planted/neurons/L0-N{token.neuron}.html" in report.hrefs  # fig5's table


def test_restyling_a_figure_plans_only_that_figure_and_the_report(tiny_run: Path, tmp_path: Path):
    config = yaml.safe_load(TINY.read_text())
    assert planned_jobs(snakemake(tiny_run, "--configfile", str(TINY), "-n").stdout) == {}
    config["figures"]["fig1a_dead_neurons"]["figsize"] = [6.0, 4.0]
    # larger cluster requests change nothing that is computed: they plan no job of their own
    config["resources"]["capture"]["mem_mb"] *= 2
    config["models"]["planted"]["resources"] = {"capture": {"runtime": 99}, "vocab_projection": {"mem_mb": 9999}}
    restyled = tmp_path / "restyled.yaml"
    restyled.write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake(tiny_run, "--configfile", str(restyled), "-n").stdout)
    assert plan == {"all": 1, "fig1a_dead_neurons": 1, "report": 1}


def test_a_detector_threshold_reruns_no_job_that_loads_a_model(tiny_run: Path, tmp_path: Path):
    """Trigger suppression is averaged from the projection job's scores of every fired token, so a detector
    threshold reruns the statistics, tables and figures, and neither a capture nor a projection."""
    config = yaml.safe_load(TINY.read_text())
    config["analysis"]["detectors"] = {"fire_rate": 0.8}
    changed = tmp_path / "detectors.yaml"
    changed.write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake(tiny_run, "--configfile", str(changed), "-n").stdout)
    assert plan["neuron_stats"] == plan["neuron_tables"] > 0 and plan["report"] == 1
    assert not {"train", "tokenize", "capture", "merge", "vocab_projection"} & set(plan)


def test_nested_command_line_overrides_are_typed(tiny_run: Path):
    """`--config capture='{batch_size: 5}'` (the tiny config's own value) plans nothing: 5 arrives as a number,
    not as the string Snakemake parses; another value reruns the captures and what depends on them."""
    same = snakemake(tiny_run, "--configfile", str(TINY), "-n", "--config", "capture={batch_size: 5, top_k: 4}")
    assert planned_jobs(same.stdout) == {}
    other = planned_jobs(snakemake(tiny_run, "--configfile", str(TINY), "-n", "--config", "capture={batch_size: 8}").stdout)
    assert other["capture"] == 10 and other["correlation"] == 2 and "train" not in other and "tokenize" not in other  # 5 census models x 2 shards


def test_an_edited_bundled_corpus_reruns_its_tokenizer_and_shards(tiny_run: Path, tmp_path: Path):
    """The bundled corpus is an input too: editing one of its files retrains the tokenizer trained on it and
    remakes the token shards read from it (a dry run on a copy of the tiny run with a copy of resources/)."""
    workdir = tmp_path / "bundled"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    (workdir / "resources").unlink()
    shutil.copytree(ROOT / "resources", workdir / "resources")  # keeps modification times
    assert planned_jobs(snakemake(workdir, "--configfile", str(TINY), "-n").stdout) == {}
    wiki = workdir / "resources" / "corpus" / "wiki.txt.xz"
    stat = wiki.stat()
    import lzma

    wiki.write_bytes(lzma.compress(lzma.decompress(wiki.read_bytes()).replace(b"the", b"a")))
    os.utime(wiki, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plan = planned_jobs(snakemake(workdir, "--configfile", str(TINY), "-n").stdout)
    assert plan["train_tokenizer"] == 1 and plan["tokenize"] >= 1 and plan["train"] == 1
    assert plan.get("capture", 0) == 4  # mini and mini-step3 (2 shards each); planted and stories260k read no corpus


def table_hashes(workdir: Path) -> dict[str, str]:
    """SHA-256 of every model's tables, by path below results/."""
    results = workdir / "results"
    return {
        str(path.relative_to(results)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(results.glob("*/*.parquet"))
        if path.name in TABLES
    }


def killed_run(workdir: Path, kill_at: str, *targets: str, scope: str = "process") -> str:
    """Run the tiny DAG with a job SIGKILLed at `kill_at` (neuron_census.testing.failpoints); return its output.
    Temporary folders go below `workdir` (a killed job cannot remove its own)."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"NEURON_CENSUS_KILL_AT": kill_at, "NEURON_CENSUS_KILL_SCOPE": scope, "TMPDIR": str(workdir / "tmp")}
    result = snakemake(workdir, "--configfile", str(TINY), "--cores", "2", *targets, check=False, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    if scope == "process":
        assert "died with <Signals.SIGKILL: 9>" in output, output[-3000:]
    return output


def leftovers(workdir: Path) -> list[str]:
    """Hidden temporaries and unfinished training folders below results/."""
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob(".*") if ".tmp-" in p.name or p.name.endswith(".partial"))


def test_killed_jobs_leave_nothing_finished_and_reruns_give_identical_tables(tiny_run: Path, tmp_path: Path):
    """SIGKILL a train, a capture and a merge job mid-write, rerun the same command each time: byte-identical tables.

    This is also the determinism check. It starts from a copy of the first run (`tiny_run`) without the
    training run, one planted capture and everything computed from them, so those are computed a second
    time: the tables of both trained checkpoints and of the planted model must hash exactly as in the first
    run (the token shards and the stories260k tables are kept, which saves a third of the DAG).
    """
    workdir = tmp_path / "killed"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # keeps mtimes
    for computed in (
        "train/mini",
        "capture/mini",
        "capture/mini-step3",
        "capture/planted/designed/shard-1.zarr",
        "capture/planted/designed/merged.zarr",
        "planted",
        "mini",
        "mini-step3",
    ):
        shutil.rmtree(workdir / "results" / computed)
    models = yaml.safe_load(TINY.read_text())["models"]
    targets = [f"results/{model}/{table}" for model, spec in models.items() if spec.get("census", True) for table in TABLES]
    results = workdir / "results"

    # Training killed after step 4: the resume state of checkpoint 3 survives outside the (deleted) output.
    killed_run(workdir, "train-step:4", "results/train/mini")
    assert not (results / "train" / "mini").exists()
    assert json.loads((results / "train" / ".mini.partial" / "resume" / "state.json").read_text())["step"] == 3

    # A capture killed with its store written but not yet renamed into place: nothing at the final path.
    shard = "results/capture/planted/designed/shard-1.zarr"
    killed_run(workdir, f"publish:*{shard}", *targets)
    assert not (workdir / shard).exists()
    assert [p.name for p in (workdir / shard).parent.glob(".shard-1.zarr.tmp-*")]  # hidden, not finished

    # A merge killed, together with Snakemake itself (a lost machine): unlock, then the same command.
    merged = "results/capture/planted/designed/merged.zarr"
    killed_run(workdir, f"publish:*{merged}", *targets, scope="group")
    assert not (workdir / merged).exists()
    locked = snakemake(workdir, "--configfile", str(TINY), "--cores", "2", *targets, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    snakemake(workdir, "--unlock", "--configfile", str(TINY))
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2", *targets)

    assert "train: resuming from step 3 of 6" in (results / "logs" / "train" / "mini.log").read_text()
    assert leftovers(workdir) == []
    hashes = table_hashes(workdir)
    assert len(hashes) == 3 * len([model for model, spec in models.items() if spec.get("census", True)])
    assert hashes == {path: digest for path, digest in table_hashes(tiny_run).items() if path in hashes}
    recomputed = {
        model: (results / model / "neurons.parquet").stat().st_mtime_ns
        > (tiny_run / "results" / model / "neurons.parquet").stat().st_mtime_ns
        for model in ("planted", "mini", "mini-step3", "stories260k")
    }
    assert recomputed == {"planted": True, "mini": True, "mini-step3": True, "stories260k": False}
