"""The Snakemake DAG end to end on a tiny config, lint, dry runs of the presets, and rerun planning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from neuron_census.corpus import read_token_shard
from neuron_census.planted import get_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def new_workdir(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "resources").symlink_to(ROOT / "resources")
    return tmp


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from the job stats table a dry run prints."""
    jobs: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^([A-Za-z_][\w]*)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = new_workdir(tmp_path_factory.mktemp("tiny"))
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2")
    return workdir


def test_tiny_dag_recovers_planted_dead_neurons(tiny_run: Path):
    recipe = get_recipe("basic")
    neurons = pl.read_parquet(tiny_run / "results" / "planted" / "neurons.parquet")
    dead = {(r["layer"], r["neuron"]) for r in neurons.filter(pl.col("dead")).iter_rows(named=True)}
    assert dead == {(n.layer, n.neuron) for n in recipe.all_neurons() if n.kind == "never"}
    # exact fire counts from the shards the pipeline wrote
    shards = sorted((tiny_run / "results" / "tokens" / "planted" / "random").glob("shard-*.zarr"))
    assert len(shards) == 2
    tokens = np.concatenate([read_token_shard(s)[0] for s in shards])
    assert (tokens[:, 0] == 0).all()  # BOS
    for neuron in recipe.all_neurons():
        expected = int(neuron.fires(tokens)[:, 1:].sum())
        row = neurons.filter((pl.col("layer") == neuron.layer) & (pl.col("neuron") == neuron.neuron))
        assert row["fire_count"].item() == expected, neuron
    assert neurons["n_tokens"].unique().to_list() == [tokens.shape[0] * (tokens.shape[1] - 1)]


def test_tiny_dag_writes_every_table_figure_and_the_report(tiny_run: Path):
    results = tiny_run / "results"
    for model, n_layers, n_neurons in [("planted", 3, 8), ("stories260k", 5, 172), ("mini", 2, 64)]:
        layers = pl.read_parquet(results / model / "layers.parquet")
        assert layers["layer"].to_list() == list(range(n_layers))
        assert layers["n_neurons"].unique().to_list() == [n_neurons]
        assert {"layer", "rel_depth", "dead_frac", "mean_fire_freq_alive"} <= set(layers.columns)
        neurons = pl.read_parquet(results / model / "neurons.parquet")
        assert neurons.height == n_layers * n_neurons
        documented = (ROOT / "config" / "README.md").read_text()
        for column in [*layers.columns, *neurons.columns]:
            assert f"`{column}`" in documented, f"column {column} is not documented in config/README.md"
        assert {"layer", "neuron", "n_tokens", "fire_count", "fire_freq", "dead"} <= set(neurons.columns)
    for figure in ("fig1a_dead_neurons", "fig1b_fire_frequency"):
        assert (results / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
        assert (results / "figures" / f"{figure}.pdf").read_bytes()[:4] == b"%PDF"
    report = (results / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2
    assert "never fires" in report
    checkpoints = sorted(p.name for p in (results / "train" / "mini").glob("step-*"))
    assert checkpoints == ["step-3", "step-6"]


def test_restyling_a_figure_plans_only_that_figure_and_the_report(tiny_run: Path, tmp_path: Path):
    config = yaml.safe_load(TINY.read_text())
    assert planned_jobs(snakemake(tiny_run, "--configfile", str(TINY), "-n").stdout) == {}
    config["figures"]["fig1a_dead_neurons"]["figsize"] = [6.0, 4.0]
    restyled = tmp_path / "restyled.yaml"
    restyled.write_text(yaml.safe_dump(config))
    plan = planned_jobs(snakemake(tiny_run, "--configfile", str(restyled), "-n").stdout)
    assert plan == {"all": 1, "fig1a_dead_neurons": 1, "report": 1}


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("preset", sorted((ROOT / "config" / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_dry_run(preset: Path, tmp_path: Path):
    workdir = new_workdir(tmp_path)
    plan = planned_jobs(snakemake(workdir, "--configfile", str(preset), "-n").stdout)
    assert plan["capture"] >= 1 and plan["fig1a_dead_neurons"] == 1


def test_default_config_dry_run(tmp_path: Path):
    workdir = new_workdir(tmp_path)
    plan = planned_jobs(snakemake(workdir, "-n").stdout)
    assert plan["train"] == 2 and plan["capture"] == 6 and plan["report"] == 1


def test_bad_config_stops_with_one_line(tmp_path: Path):
    workdir = new_workdir(tmp_path)
    config = yaml.safe_load(TINY.read_text())
    config["capture"]["batch_sise"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--configfile", str(bad), "-n", check=False)
    assert result.returncode != 0
    assert "config error at 'capture': Additional properties are not allowed ('batch_sise' was unexpected)" in (
        result.stdout + result.stderr
    )
    assert not (workdir / "results").exists()
