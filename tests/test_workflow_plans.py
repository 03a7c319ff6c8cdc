"""Snakemake on small configs of their own: lint, dry runs of the presets and the default, rerun planning
after changed inputs, refused inputs, wildcards that would leave their folders."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import merge_stores
from workflow_runs import ROOT, SNAKEMAKE, TINY, new_workdir, planned_jobs, snakemake

from neuron_census.capture.store import read_store
from neuron_census.data.corpus import read_token_shard
from neuron_census.plots.registry import FIGURES, figure_study
from neuron_census.testing.planted import get_recipe


def test_adding_a_shard_captures_only_that_shard(tmp_path: Path):
    """One more shard: its tokens and capture, then the merge and what depends on it; nothing else."""
    workdir = new_workdir(tmp_path / "shards")
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {"planted": config["models"]["planted"]}
    config["tokenizers"] = {"planted": config["tokenizers"]["planted"]}
    config["datasets"] = {
        "rand": {"source": "random_tokens", "seq_len": 32, "sequences_per_shard": 6, "n_shards": 1, "seed": 3}
    }
    config["capture"]["datasets"] = ["rand"]
    config["figures"] = {}
    config.pop("train", None)
    config.pop("universal")
    config.pop("subupdates", None)
    config.pop("steering", None)
    config.pop("atlas", None)
    target = "results/planted/neurons.parquet"

    def run(n_shards: int, *args: str) -> subprocess.CompletedProcess[str]:
        config["datasets"]["rand"]["n_shards"] = n_shards
        path = tmp_path / f"shards-{n_shards}.yaml"
        path.write_text(yaml.safe_dump(config))
        return snakemake(workdir, "--configfile", str(path), *args, target, threads=("merge=2",))

    run(1, "--cores", "2")
    captures = workdir / "results" / "capture" / "planted" / "rand"
    first = (captures / "shard-0.zarr" / "zarr.json").stat().st_mtime_ns
    tokens_before = pl.read_parquet(workdir / target)["n_tokens"][0]

    plan = run(2, "-n")
    assert planned_jobs(plan.stdout) == {
        "tokenize": 1, "capture": 1, "merge": 1, "neuron_stats": 1, "vocab_projection": 1, "neuron_tables": 1
    }
    shards = re.findall(r"output: results/(?:tokens|capture)/\S+/(shard-\d+)\.zarr", plan.stdout)
    assert shards == ["shard-1", "shard-1"]  # the new token shard and its capture, nothing earlier

    run(2, "--cores", "2")
    assert (captures / "shard-0.zarr" / "zarr.json").stat().st_mtime_ns == first  # shard 0 was not recaptured
    assert pl.read_parquet(workdir / target)["n_tokens"][0] == 2 * tokens_before
    _, merged = read_store(captures / "merged.zarr")
    _, in_memory = merge_stores([captures / "shard-0.zarr", captures / "shard-1.zarr"])
    assert sorted(merged) == sorted(in_memory)
    for name, state in in_memory.items():
        for key, array in state.items():
            np.testing.assert_array_equal(merged[name][key], array, err_msg=f"{name}/{key}")


def test_changed_inputs_rerun_what_read_them_and_nothing_else(tmp_path: Path):
    """A local model's weights rewritten in place and a `files` dataset's text edited, also with modification
    times older than the results: each reruns the jobs that read it, and only those. With the text edited and a
    shard added at once, both shards are remade from the new text (a chain never mixes two versions)."""

    from neuron_census.testing.planted import build_planted_model, planted_words

    workdir = new_workdir(tmp_path / "inputs")
    words = planted_words(get_recipe("basic"))
    build_planted_model("basic").save_pretrained(workdir / "model")
    text = workdir / "text.txt"
    text.write_text(" ".join(words[i % 7] for i in range(200)) + "\n")
    config = {
        "tokenizers": {"words": {"source": "words", "words": words}},
        "datasets": {"text": {"source": "files", "paths": ["text.txt"], "seq_len": 16, "sequences_per_shard": 4,
                              "n_shards": 1, "min_document_chars": 1}},
        "models": {"local": {"source": "local", "path": "model", "tokenizer": "words"}},
        "capture": {"datasets": ["text"], "batch_size": 4, "top_k": 2},
        "figures": {},
    }
    target = "results/local/neurons.parquet"

    def plan(**datasets: object) -> dict[str, int]:
        path = tmp_path / "inputs.yaml"
        path.write_text(yaml.safe_dump({**config, "datasets": {"text": {**config["datasets"]["text"], **datasets}}}))
        return planned_jobs(snakemake(workdir, "--configfile", str(path), "-n", target).stdout)

    def rewrite(path: Path, data: bytes) -> None:
        """New content, with a modification time older than every result (as a copy keeping times gives)."""
        before = path.stat()
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))

    (tmp_path / "inputs.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--configfile", str(tmp_path / "inputs.yaml"), "--cores", "2", target)
    assert plan() == {}
    weights = workdir / "model" / "model.safetensors"
    rewrite(weights, weights.read_bytes())
    assert plan() == {"capture": 1, "merge": 1, "neuron_stats": 1, "vocab_projection": 1, "neuron_tables": 1}

    rewrite(text, (" ".join(words[(3 * i) % 11] for i in range(200)) + "\n").encode())
    assert plan()["tokenize"] == 1
    grown = plan(n_shards=2)
    assert grown["tokenize"] == 2 and grown["capture"] == 2
    path = tmp_path / "inputs.yaml"
    path.write_text(yaml.safe_dump({**config, "datasets": {"text": {**config["datasets"]["text"], "n_shards": 2}}}))
    shard_paths = [f"results/tokens/words/text/shard-{i}.zarr" for i in (0, 1)]
    snakemake(workdir, "--configfile", str(path), "--cores", "2", *shard_paths)  # what the check below reads
    shards = [read_token_shard(workdir / shard)[0] for shard in shard_paths]
    new_text = [(3 * i) % 11 + 2 for i in range(200)]  # word ids of the edited text
    np.testing.assert_array_equal(np.concatenate(shards)[:, 1:].reshape(-1), new_text[: 2 * 4 * 15])


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def assert_capture_requests(output: str) -> None:
    """Capture jobs of the OPT preset request each model's memory and time (the SLURM profile leaves them
    to the config)."""
    requested: dict[str, set[tuple[int, int]]] = {}
    for block in output.split("\nrule ")[1:]:
        if not block.startswith("capture:"):
            continue
        model = re.search(r"wildcards: model=([\w.-]+)", block).group(1)
        resources = re.search(r"resources: (.*)", block).group(1)
        mem_mb, runtime = (int(re.search(rf"\b{key}=(\d+)", resources).group(1)) for key in ("mem_mb", "runtime"))
        requested.setdefault(model, set()).add((mem_mb, runtime))
    assert requested["opt-30b"] == {(120000, 1440)}
    assert requested["opt-66b"] == {(64000, 1440)}
    assert requested["opt-125m"] == {(64000, 720)}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    for rule in ("capture", "vocab_projection"):
        assert not {"mem_mb", "runtime"} & set(profile["set-resources"][rule]), rule


@pytest.mark.parametrize("preset", sorted((ROOT / "config" / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_dry_run(preset: Path, tmp_path: Path):
    workdir = new_workdir(tmp_path)
    steered = yaml.safe_load(preset.read_text()).get("steering", {})
    for study in steered.values():  # prompts the user provides (RealToxicityPrompts is not fetched)
        (workdir / study["prompts"]).parent.mkdir(parents=True, exist_ok=True)
        (workdir / study["prompts"]).write_text('{"prompt": {"text": "So"}, "challenging": true}\n')
    config = yaml.safe_load(preset.read_text())
    output = snakemake(workdir, "--configfile", str(preset), "-n").stdout
    plan = planned_jobs(output)
    assert plan["capture"] >= 1 and plan["fig1a_dead_neurons"] == 1
    assert plan.get("steering", 0) == len(steered) and ("steering_effect" in plan) == bool(steered)
    probed = config.get("probing", {})  # one sweep per probed layer, a sample capture per (model, dataset, shard)
    assert plan.get("probe_layer", 0) == sum(len(study["layers"]) for study in probed.values())
    assert plan.get("probe_spans", 0) == sum(len(study["datasets"]) for study in probed.values())
    trains = preset.stem == "opt-train-125m"  # Figs. 10 and 11 compare trained models: drawn only then
    assert ("fig10_positional_nopos" in plan, "fig11_positional_training" in plan) == (trains, trains)
    if preset.stem == "opt-family":
        assert_capture_requests(output)


def test_a_figure_not_drawn_is_left_out_of_all_and_the_report_but_can_be_asked_for(tmp_path: Path):
    workdir = new_workdir(tmp_path)
    config = yaml.safe_load(TINY.read_text())
    config["figures"]["fig9_oscillatory_ranges"]["draw"] = False
    path = tmp_path / "no-fig9.yaml"
    path.write_text(yaml.safe_dump(config))
    output = snakemake(workdir, "--configfile", str(path), "-n").stdout
    assert "fig9_oscillatory_ranges" not in planned_jobs(output) and planned_jobs(output)["report"] == 1
    report_inputs = output.split("\nrule report:")[1].split("\n\n")[0]
    assert "fig8_positional_neurons.png" in report_inputs and "fig9" not in report_inputs
    asked = planned_jobs(snakemake(workdir, "--configfile", str(path), "-n", "results/figures/fig9_oscillatory_ranges.png").stdout)
    assert asked["fig9_oscillatory_ranges"] == 1


def test_default_config_dry_run(tmp_path: Path):
    workdir = new_workdir(tmp_path)
    plan = planned_jobs(snakemake(workdir, "-n").stdout)
    # 6 models on the one shard of the corpus, the 2 planted census models on their own 2 shards
    assert plan["train"] == 5 and plan["capture"] == 10 and plan["report"] == 1
    assert plan["vocab_projection"] == 8 and all(plan[figure] == 1 for figure in FIGURES)  # not of models compared only
    assert plan["correlation"] == 3 and plan["universal_tables"] == 2  # the planted study over 2 shards, tiny-gpt2's over 1
    assert plan["subupdate_lens"] == plan["early_exit"] == 2 and plan["steering"] == 1
    # sparse probing: planted (2 layers, 2 shards), tiny-gpt2-seed0 (3 layers) and stories260k (5 layers), one shard each
    assert (plan["probe_spans"], plan["probe_samples"], plan["probe_layer"], plan["probe_tables"]) == (3, 4, 10, 3)
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    training = {"fig10_positional_nopos", "fig11_positional_training"}  # the training experiment: trained models only
    # Gurnee et al.'s figures: the studies' reference models, the planted one first
    universal = {f for f in FIGURES if figure_study(f) == "universal"} | {"vocab_roles"}
    subupdates = {f for f in FIGURES if figure_study(f) in ("subupdates", "steering", "probing")}
    drawn = {f for f in FIGURES if "planted" in (default["figures"].get(f, {}).get("models") or [])}
    assert drawn == set(FIGURES) - training - universal - subupdates
    assert all(default["figures"][f]["models"][0] == "planted-seed-a" for f in universal)
    # a study reference's neurons.parquet joins the study's per-neuron tables; another model's does not wait for them
    study = {"universal_tables": 1, "entropy_interventions": 1, "attention_interventions": 1}
    plan = planned_jobs(snakemake(workdir, "-n", "results/planted-seed-a/neurons.parquet").stdout)
    assert {rule: plan.get(rule) for rule in study} == study and plan["neuron_tables"] == 1 and "probe_tables" not in plan
    # a probed model's neurons.parquet joins the features its single neurons probe for (stories260k: 5 layers)
    plan = planned_jobs(snakemake(workdir, "-n", "results/planted/neurons.parquet", "results/stories260k/neurons.parquet").stdout)
    assert not set(study) & set(plan) and plan["neuron_tables"] == 2
    assert (plan["probe_tables"], plan["probe_layer"], plan["probe_samples"]) == (1, 5, 1)


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


def test_a_job_refusing_bad_input_prints_one_line(tmp_path: Path):
    """Sequences longer than the context of a model whose context the config cannot show (a random-weight
    OPT-125m): the capture job stops with one line and leaves no store."""
    workdir = new_workdir(tmp_path / "long")
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {"opt": {"source": "random", "architecture": "opt-125m", "n_layers": 1, "tokenizer": "planted"}}
    config["tokenizers"] = {"planted": config["tokenizers"]["planted"]}
    config["datasets"] = {"long": {"source": "random_tokens", "seq_len": 2049, "sequences_per_shard": 2, "seed": 0}}
    config["capture"]["datasets"] = ["long"]
    config["figures"] = {}
    config.pop("train")
    config.pop("universal")
    config.pop("subupdates", None)
    config.pop("steering", None)
    config.pop("atlas", None)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--configfile", str(path), "--cores", "1", "results/opt/neurons.parquet", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("neuron-census: error:")]
    assert errors == [
        "neuron-census: error: sequences of 2049 tokens exceed model 'opt' context of 2048 positions "
        "(lower the dataset's seq_len)"
    ], output[-3000:]
    assert "Traceback" not in output
    assert not (workdir / "results" / "capture" / "opt" / "long" / "shard-0.zarr").exists()
    assert "Traceback" in (workdir / "results" / "logs" / "capture" / "opt" / "long" / "shard-0.log").read_text()


def test_wildcards_cannot_escape_their_folders(tmp_path: Path):
    """Names are constrained to [A-Za-z0-9][A-Za-z0-9._-]*: no rule makes a path through '..' or '/'."""
    workdir = new_workdir(tmp_path)
    for target in ("results/../outside/neurons.parquet", "results/planted/../../x/neurons.parquet"):
        result = snakemake(workdir, "--configfile", str(TINY), "-n", target, check=False)
        assert result.returncode != 0
        assert "MissingRuleException" in result.stdout + result.stderr, target
