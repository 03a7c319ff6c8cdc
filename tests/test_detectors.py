"""The three-step n-gram detector rule against a direct loop over neurons and items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuron_census.analyses.detectors import DetectorSettings, SparseCounts, ngram_detectors
from neuron_census.accumulators.summaries import summary_slack


def slow_detectors(
    counts: dict[int, dict[int, int]], fires: list[int], occurs: dict[int, int], s: DetectorSettings, slack: float = 0.0
):
    result = {}
    for group, items in counts.items():
        ordered = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))
        target = math.ceil(fires[group] * s.coverage - 1e-9)
        covered, coverage = 0, None
        for k, (_, c) in enumerate(ordered, start=1):
            covered += c
            if covered >= target:
                coverage = k
                break
        if coverage is None or not 1 <= coverage <= s.max_ngrams:
            continue
        at_most = {i: occurs.get(i, 0) + slack for i, _ in ordered}  # occurrences, at most
        kept = [(i, c) for i, c in ordered if at_most[i] > 0 and c >= s.ngram_fire_rate * at_most[i] - 1e-9]
        if sum(c for _, c in kept) >= math.ceil(fires[group] * s.detector_coverage - 1e-9):
            result[group] = [i for i, _ in kept]
    return result


@pytest.mark.parametrize("slack", [0.0, 0.4])
@pytest.mark.parametrize("seed", range(6))
def test_detectors_match_the_rule(seed, slack):
    rng = np.random.default_rng(seed)
    n_groups, n_items = 40, 30
    occurs = {i: int(rng.integers(1, 40)) for i in range(n_items) if rng.random() < 0.9}
    counts: dict[int, dict[int, int]] = {}
    for group in range(n_groups):
        n = int(rng.integers(1, 7))
        chosen = rng.choice(sorted(occurs), size=n, replace=False)
        # mostly full firing on the chosen items, sometimes partial
        counts[group] = {int(i): int(occurs[i] if rng.random() < 0.7 else rng.integers(1, occurs[i] + 1)) for i in chosen}
        if rng.random() < 0.5:  # one firing on an item whose occurrences were never counted
            counts[group][n_items + group] = 1
    fires = [sum(items.values()) for items in counts.values()]
    group = np.array([g for g, items in counts.items() for _ in items])
    item = np.array([i for items in counts.values() for i in items])
    count = np.array([c for items in counts.values() for c in items.values()])
    keys = np.array(sorted(occurs))
    settings = DetectorSettings()
    got = ngram_detectors(
        SparseCounts(group=group, item=item, count=count, fires=np.array(fires), capacity=None),
        (keys, np.array([occurs[k] for k in keys])),
        settings,
        occurrence_slack=slack,
    )
    expected = slow_detectors(counts, fires, occurs, settings, slack)
    assert got == expected
    assert 0 < len(expected) < n_groups  # the case mix exercises both outcomes


def test_pruned_occurrences_make_no_detector_the_true_counts_would_not():
    """A neuron fires on 18 of a bigram's 20 occurrences (90%): not a detector. A pruned summary that kept
    18 of those occurrences would read as 18 of 18 (100%) without its slack, a false detector."""
    settings = DetectorSettings()

    def detects(fired: int, counted: int, slack: float) -> bool:
        counts = SparseCounts(
            group=np.array([0]), item=np.array([7]), count=np.array([fired]), fires=np.array([fired]), capacity=None
        )
        return bool(ngram_detectors(counts, (np.array([7]), np.array([counted])), settings, occurrence_slack=slack))

    assert detects(19, 20, 0.0) and not detects(18, 20, 0.0)  # exact counts: 95% and 90%
    assert detects(18, 18, 0.0)  # the pruned count read as exact: a false detector
    assert not detects(18, 18, summary_slack(total=1000, kept=980, capacity=9))  # slack 2: 18 of at most 20
    assert detects(19, 19, summary_slack(total=1000, kept=990, capacity=9))  # slack 1: 19 of at most 20, 95%


def test_summary_slack():
    assert summary_slack(total=100, kept=100, capacity=4) == 0.0  # nothing pruned
    assert summary_slack(total=100, kept=90, capacity=4) == 2.0
    assert summary_slack(total=100, kept=90, capacity=None) == 0.0  # an exact table
