"""The Snakemake DAG end to end on a tiny config, lint, dry runs of the presets, and rerun planning."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from scipy import stats

from neuron_census.data.corpus import read_token_shard
from neuron_census.jobs import FIGURES
from neuron_census.testing.planted import designed_tokens, get_recipe
from neuron_census.capture.store import merge_stores, read_store

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# The tiny DAG's model jobs spend their seconds importing torch, not computing: run them on one thread each,
# so that two run at once on two cores (a third less time for the tiny DAG than one at a time on both).
ONE_THREAD_EACH = ("--set-threads", "capture=1", "vocab_projection=1", "train=1")


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None, threads: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run Snakemake in `workdir`; runs that execute jobs (`--cores`) give model jobs one thread each, and
    the rules in `threads` ("rule=N") their own."""
    threads = (*ONE_THREAD_EACH, *threads) if "--cores" in args else ()
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *threads, *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group, so a test may kill the whole run
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
    census_figures = [figure for figure in FIGURES if "universal" not in FIGURES[figure].tables]
    assert report.count("&#x27;planted&#x27; is built in code: neurons of known roles") == sum(
        1 for figure in census_figures if "planted" in (tiny["figures"].get(figure, {}).get("models") or ["planted"])
    )
    study_figures = [figure for figure in FIGURES if "universal" in FIGURES[figure].tables]
    assert report.count("&#x27;planted-seed-a&#x27; is built in code with other models of its family") == len(study_figures) == 3
    csv = pl.read_csv(tiny_run / "results" / "figures" / "fig5_detector_projections.csv")
    assert csv.filter(pl.col("model") == "planted").height == len(planted("token_detector"))


def test_tiny_dag_finds_exactly_the_planted_universal_neurons(tiny_run: Path):
    """The planted seed family through the whole DAG: the copied neurons are the universal ones, each matched
    to its copy in both other models."""
    from neuron_census.testing.planted_seeds import FAMILY_LAYERS, FAMILY_POSITIONS, FAMILY_VOCAB, build_seed_family

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
    assert other["capture"] == 8 and other["correlation"] == 2 and "train" not in other and "tokenize" not in other


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
    import os

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
    snakemake(workdir, "--configfile", str(tmp_path / "inputs.yaml"), "--cores", "2", target)

    rewrite(text, (" ".join(words[(3 * i) % 11] for i in range(200)) + "\n").encode())
    assert plan()["tokenize"] == 1
    grown = plan(n_shards=2)
    assert grown["tokenize"] == 2 and grown["capture"] == 2
    path = tmp_path / "inputs.yaml"
    path.write_text(yaml.safe_dump({**config, "datasets": {"text": {**config["datasets"]["text"], "n_shards": 2}}}))
    snakemake(workdir, "--configfile", str(path), "--cores", "2", target)
    shards = [read_token_shard(workdir / f"results/tokens/words/text/shard-{i}.zarr")[0] for i in (0, 1)]
    new_text = [(3 * i) % 11 + 2 for i in range(200)]  # word ids of the edited text
    np.testing.assert_array_equal(np.concatenate(shards)[:, 1:].reshape(-1), new_text[: 2 * 4 * 15])


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
    import os

    wiki.write_bytes(lzma.compress(lzma.decompress(wiki.read_bytes()).replace(b"the", b"a")))
    os.utime(wiki, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plan = planned_jobs(snakemake(workdir, "--configfile", str(TINY), "-n").stdout)
    assert plan["train_tokenizer"] == 1 and plan["tokenize"] >= 1 and plan["train"] == 1
    assert plan.get("capture", 0) == 4  # mini and mini-step3 (2 shards each); planted and stories260k read no corpus


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("preset", sorted((ROOT / "config" / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_dry_run(preset: Path, tmp_path: Path):
    workdir = new_workdir(tmp_path)
    output = snakemake(workdir, "--configfile", str(preset), "-n").stdout
    plan = planned_jobs(output)
    assert plan["capture"] >= 1 and plan["fig1a_dead_neurons"] == 1
    trains = preset.stem == "opt-train-125m"  # Figs. 10 and 11 compare trained models: drawn only then
    assert ("fig10_positional_nopos" in plan, "fig11_positional_training" in plan) == (trains, trains)
    if preset.stem == "opt-family":
        assert_capture_requests(output)


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
    assert plan["train"] == 5 and plan["capture"] == 16 and plan["report"] == 1  # planted models: their own 2 shards
    assert plan["vocab_projection"] == 8 and all(plan[figure] == 1 for figure in FIGURES)  # not of models compared only
    assert plan["correlation"] == 4 and plan["universal_tables"] == 2  # two studies of two shards
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    training = {"fig10_positional_nopos", "fig11_positional_training"}  # the training experiment: trained models only
    # Gurnee et al.'s figures: the studies' reference models, the planted one first
    universal = {f for f in FIGURES if "universal" in FIGURES[f].tables} | {"vocab_roles"}
    assert {f for f in FIGURES if "planted" in default["figures"][f]["models"]} == set(FIGURES) - training - universal
    assert all(default["figures"][f]["models"][0] == "planted-seed-a" for f in universal)


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


TABLES = ("neurons.parquet", "layers.parquet", "position_rates.parquet")


def table_hashes(workdir: Path) -> dict[str, str]:
    """SHA-256 of every model's tables, by path below results/."""
    results = workdir / "results"
    return {
        str(path.relative_to(results)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(results.glob("*/*.parquet"))
        if path.name in TABLES
    }


def killed_run(workdir: Path, kill_at: str, *targets: str, scope: str = "process") -> str:
    """Run the tiny DAG with a job SIGKILLed at `kill_at` (neuron_census.testing.failpoints); return its output."""
    env = {"NEURON_CENSUS_KILL_AT": kill_at, "NEURON_CENSUS_KILL_SCOPE": scope}
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
