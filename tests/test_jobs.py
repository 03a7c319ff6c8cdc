"""Job-level checks that sit between the package and the workflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuron_census.corpus import write_token_shard
from neuron_census.jobs import read_shard_for
from neuron_census.tokenization import load_tokenizer


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
    modules = ["jobs", "logs", "figures", "plots_vocab", "plots_positional", "plots_ngrams", "report", "corpus", "planted"]
    code = "; ".join(
        [f"import neuron_census.{name}" for name in modules]
        + ["import sys", "loaded = sorted(m for m in ('torch', 'transformers') if m in sys.modules)", "print(loaded)"]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
