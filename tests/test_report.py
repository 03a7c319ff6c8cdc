"""Figure captions name the configured thresholds, in this report as in Snakemake's own."""

from __future__ import annotations

import copy
from pathlib import Path

import jinja2
import pytest
import yaml

from neuron_census.config import validate_config
from neuron_census.plots.registry import FIGURES
from neuron_census.report import render_caption

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT / "workflow" / "report"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default_config() -> dict:
    return validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA)


def caption(figure: str, config: dict) -> str:
    return render_caption((CAPTIONS / f"{figure}.rst").read_text(), config)


@pytest.mark.parametrize("figure", list(FIGURES))
def test_every_caption_renders_with_the_default_config(figure):
    text = caption(figure, default_config())
    assert text.strip() and "{" not in text and "}" not in text


def test_captions_name_the_configured_thresholds():
    config = default_config()
    assert "at least 95% (`analysis.ngram_coverage`)" in caption("fig2_unigram_coverage", config)
    assert "by at most 5 tokens" in caption("fig3a_token_detectors", config)
    assert "exceeds 0.05 nats" in caption("fig7_positional_examples", config)
    assert "at least 0.5." in caption("fig9_oscillatory_ranges", config)
    changed = copy.deepcopy(config)
    changed["analysis"]["ngram_coverage"] = 0.9
    changed["analysis"]["detectors"] |= {"max_ngrams": 3, "fire_rate": 0.8, "coverage": 0.975}
    changed["analysis"]["positional"]["min_mi"] = 0.1
    changed["figures"]["fig9_oscillatory_ranges"]["threshold"] = 0.25
    assert "at least 90% (`analysis.ngram_coverage`)" in caption("fig2_unigram_coverage", changed)
    detectors = " ".join(caption("fig3a_token_detectors", changed).split())
    assert "by at most 3 tokens" in detectors and "at least 80% of the times" in detectors
    assert "at least 97.5% of its firings" in detectors
    assert "exceeds 0.1 nats" in caption("fig7_positional_examples", changed)
    assert "at least 0.25." in caption("fig9_oscillatory_ranges", changed)
    assert "the share that no lower layer detects" in " ".join(caption("fig4_new_tokens", config).split())
    changed["figures"]["fig4_new_tokens"]["values"] = "count"
    assert "how many no lower layer detects" in " ".join(caption("fig4_new_tokens", changed).split())


def test_a_caption_reading_a_missing_setting_fails():
    with pytest.raises(jinja2.UndefinedError):
        caption("fig7_positional_examples", {"analysis": {}})
