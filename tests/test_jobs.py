"""Job-level checks that sit between the package and the workflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuron_census.data.corpus import write_token_shard
from neuron_census.jobs.common import ModelJob, read_shard_for
from neuron_census.data.tokenization import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def test_shards_of_another_tokenizer_are_refused(tmp_path: Path):
    words = load_tokenizer("planted", {"source": "words", "words": ["a", "b", "c"]})
    other = load_tokenizer("other", {"source": "words", "words": ["a", "b", "d"]})
    tokens = np.array([[0, 2, 3, 4], [0, 4, 3, 2]], dtype=np.int32)
    write_token_shard(tmp_path / "s.zarr", tokens, tokenizer=words, dataset="d", shard=0)
    got, attrs = read_shard_for(tmp_path / "s.zarr", words, "model 'm'")
    np.testing.assert_array_equal(got, tokens)
    assert attrs["tokenizer"] == "planted"
    with pytest.raises(ValueError, match=r"made with tokenizer 'planted', not with model 'm' tokenizer 'other'"):
        read_shard_for(tmp_path / "s.zarr", other, "model 'm'")


def test_jobs_without_a_model_do_not_import_torch():
    """Figures, the report and tokenizing (planted data included) start in a fraction of torch's import time:
    restyling a figure reruns a job that needs none of it."""
    modules = ["jobs", "logs", "plots.figures", "plots.vocab", "plots.positional", "plots.ngrams", "report", "data.corpus", "testing.planted"]
    code = "; ".join(
        [f"import neuron_census.{name}" for name in modules]
        + ["import sys", "loaded = sorted(m for m in ('torch', 'transformers') if m in sys.modules)", "print(loaded)"]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_reading_the_workflow_does_not_import_torch():
    """Every Snakemake run and dry run parses the Snakefile and checks the config first: the modules it imports
    and the checks of the default config and the presets start without torch (seconds per invocation)."""
    modules = ["config", "data.corpus", "data.inputs", "jobs.census", "jobs.probing", "testing.planted"]
    configs = [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "presets").glob("*.yaml"))]
    code = "; ".join(
        [f"import neuron_census.{name}" for name in modules]
        + ["import sys, yaml", "from neuron_census.config import validate_config"]
        + [f"validate_config(yaml.safe_load(open({str(path)!r})), {str(SCHEMA)!r})" for path in configs]
        + ["print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_table_jobs_do_not_import_transformers():
    """The jobs that join tables (neuron_tables; the studies' tables) read analyses that also take a model
    adapter, but never import the model layer: transformers' import costs several seconds a job."""
    modules = [f"analyses.{name}" for name in ("tables", "vocab", "weights", "kinds", "universal", "families", "attention", "concepts", "subupdates")]
    code = "; ".join(
        [f"import neuron_census.{name}" for name in modules]
        + ["import sys", "print(sorted(m for m in ('transformers', 'accelerate') if m in sys.modules))"]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_positional_neurons_are_found_on_their_own_datasets(tmp_path: Path):
    """`analysis.positional.datasets`: position statistics from those datasets' stores only (as if they were
    the only capture datasets), every other statistic from all of them."""
    import polars as pl

    from neuron_census.jobs.census import capture_job, stats_job
    from neuron_census.testing.planted import census_tokens, get_recipe, planted_words

    recipe = get_recipe("census")
    spec, tokenizer_spec = {"source": "planted", "recipe": "census"}, {"source": "words", "words": planted_words(recipe)}
    tokenizer = load_tokenizer("planted", tokenizer_spec)
    tokens = census_tokens(recipe)
    rng = np.random.default_rng(0)
    shuffled = tokens.copy()  # the same tokens at other positions: other position statistics
    shuffled[:, 1:] = rng.permuted(tokens[:, 1:], axis=1)
    stores = {}
    for dataset, rows in (("designed", tokens[:20]), ("shuffled", shuffled[20:40])):
        write_token_shard(tmp_path / f"{dataset}.tokens.zarr", rows, tokenizer=tokenizer, dataset=dataset, shard=0)
        stores[dataset] = tmp_path / f"{dataset}.zarr"
        settings = {"device": "cpu", "dtype": "float32", "batch_size": 10}
        capture_job(ModelJob("planted", spec, "planted", tokenizer_spec, settings), tmp_path / f"{dataset}.tokens.zarr", stores[dataset])

    def stats(inputs: list[Path], label: str, positional: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
        out = (tmp_path / f"{label}.stats.parquet", tmp_path / f"{label}.rates.parquet")
        stats_job("planted", inputs, "planted", tokenizer_spec, {"positional": positional}, *out)
        return pl.read_parquet(out[0]), pl.read_parquet(out[1])

    both, both_rates = stats([stores["designed"], stores["shuffled"]], "both", {})
    chosen, chosen_rates = stats([stores["designed"], stores["shuffled"]], "chosen", {"datasets": ["designed"]})
    alone, alone_rates = stats([stores["designed"]], "alone", {})
    positional_columns = [c for c in alone.columns if c.startswith("positional") or c == "position_mi"]
    assert positional_columns and not both_rates.equals(alone_rates)  # the choice matters on this data
    assert chosen_rates.equals(alone_rates)
    assert chosen.select(positional_columns).equals(alone.select(positional_columns))
    assert chosen.drop(positional_columns).equals(both.drop(positional_columns))
    partly, partly_rates = stats([stores["designed"]], "partly", {"datasets": ["designed", "wiki"]})
    assert partly_rates.equals(alone_rates)  # the positional datasets this model was captured on
    with pytest.raises(ValueError, match=r"no capture store of positional dataset\(s\) \['code', 'wiki'\]"):
        stats([stores["designed"]], "missing", {"datasets": ["wiki", "code"]})


def test_training_tokens_are_stacked_narrow(tmp_path: Path):
    """A run's shards in one uint16 array (vocabularies up to 65,536 ids), equal to their concatenation."""
    from neuron_census.jobs.common import stacked_shards

    words = load_tokenizer("planted", {"source": "words", "words": ["a", "b", "c"]})
    first = np.array([[0, 2, 3, 4], [0, 4, 3, 2]], dtype=np.int32)
    second = np.array([[0, 3, 3, 3]], dtype=np.int32)
    for shard, tokens in enumerate((first, second)):
        write_token_shard(tmp_path / f"s{shard}.zarr", tokens, tokenizer=words, dataset="d", shard=shard)
    stacked = stacked_shards([tmp_path / "s0.zarr", tmp_path / "s1.zarr"], words, "train run 'r'")
    assert stacked.dtype == np.uint16
    np.testing.assert_array_equal(stacked, np.concatenate([first, second]))
    write_token_shard(tmp_path / "long.zarr", np.zeros((1, 5), dtype=np.int32), tokenizer=words, dataset="d", shard=2)
    with pytest.raises(ValueError, match=r"train run 'r': token shards of different seq_len \[4, 5\]"):
        stacked_shards([tmp_path / "s0.zarr", tmp_path / "long.zarr"], words, "train run 'r'")
    with pytest.raises(ValueError, match=r"token shard .*missing.zarr is unreadable"):
        stacked_shards([tmp_path / "missing.zarr"], words, "train run 'r'")


def test_figures_name_models_by_their_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Legends read the models' labels (a planted model says it is built in code), not their names."""
    import polars as pl

    from neuron_census.plots import figures
    from neuron_census.jobs.census import figure_job

    layers = pl.DataFrame({"model": ["p", "p"], "layer": [0, 1], "rel_depth": [0.0, 0.5], "dead_frac": [0.1, 0.2],
                           "n_layers_total": [2, 2]})
    layers.write_parquet(tmp_path / "layers.parquet")
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, outputs: drawn.append(fig))
    figure_job("fig1a_dead_neurons", {"layers": [tmp_path / "layers.parquet"]}, {}, [tmp_path / "f.png"],
               labels={"p": "p (built in code, known neurons)"})
    legend = [text.get_text() for text in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["p (built in code, known neurons)"]
