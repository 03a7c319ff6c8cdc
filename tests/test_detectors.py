"""The three-step n-gram detector rule against a direct loop over neurons and items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuron_census.detectors import DetectorSettings, SparseCounts, ngram_detectors


def slow_detectors(counts: dict[int, dict[int, int]], fires: list[int], occurs: dict[int, int], s: DetectorSettings):
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
        kept = [(i, c) for i, c in ordered if occurs.get(i, 0) > 0 and c >= s.ngram_fire_rate * occurs[i] - 1e-9]
        if sum(c for _, c in kept) >= math.ceil(fires[group] * s.detector_coverage - 1e-9):
            result[group] = [i for i, _ in kept]
    return result


@pytest.mark.parametrize("seed", range(6))
def test_detectors_match_the_rule(seed):
    rng = np.random.default_rng(seed)
    n_groups, n_items = 40, 30
    occurs = {i: int(rng.integers(1, 12)) for i in range(n_items) if rng.random() < 0.9}
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
    )
    expected = slow_detectors(counts, fires, occurs, settings)
    assert got == expected
    assert 0 < len(expected) < n_groups  # the case mix exercises both outcomes
