"""Accumulator stores: round trip, merge rules, and refusal of torn or corrupted stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neuron_census.atomic import atomic_path
import zarr

from neuron_census.accumulators import merge_states
from neuron_census.capture.store import merge_store_files, read_store, write_store
from conftest import merge_stores


def attrs(dataset: str = "d", shard: int = 0, **extra) -> dict:
    base = {
        "model": "m",
        "datasets": [dataset],
        "sources": [f"{dataset}/{shard}"],
        "layers": [0, 1],
        "n_layers_total": 2,
        "n_neurons": 3,
        "seq_len": 4,
        "vocab_size": 5,
        "tokenizer_fingerprint": "abc",
        "fire_rule": "preactivation",
        "has_bos": True,
        "top_k": 2,
    }
    return base | extra


def states(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "fire_count": {"counts": rng.integers(0, 9, (2, 3)), "tokens": np.array([12, 12])},
        "token_fire_count": {
            "keys": np.array([1, 4, 7]) + seed,
            "counts": np.array([1, 2, 3]),
            "vocab_size": np.array([16]),
            "n_neurons": np.array([4]),
            "capacity": np.array([0]),
        },
    }


def test_round_trip(tmp_path: Path):
    write_store(tmp_path / "s.zarr", attrs(), states(0))
    got_attrs, got = read_store(tmp_path / "s.zarr")
    assert got_attrs["layers"] == [0, 1] and got_attrs["complete"] is True
    np.testing.assert_array_equal(got["fire_count"]["counts"], states(0)["fire_count"]["counts"])
    np.testing.assert_array_equal(got["token_fire_count"]["keys"], [1, 4, 7])


def test_merge_sums_and_coalesces(tmp_path: Path):
    write_store(tmp_path / "a.zarr", attrs(shard=0), states(0))
    write_store(tmp_path / "b.zarr", attrs(shard=1), states(3))
    merged_attrs, merged = merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert merged_attrs["sources"] == ["d/0", "d/1"]
    np.testing.assert_array_equal(
        merged["fire_count"]["counts"], states(0)["fire_count"]["counts"] + states(3)["fire_count"]["counts"]
    )
    assert merged["token_fire_count"]["keys"].tolist() == [1, 4, 7, 10]
    assert merged["token_fire_count"]["counts"].tolist() == [1, 2 + 1, 3 + 2, 3]


def wide_states(seed: int) -> dict:
    """States with a summed array large enough for zarr to chunk its first axis, and a top-k to fold."""
    rng = np.random.default_rng(seed)
    values = np.sort(rng.normal(size=(2, 2, 3)), axis=1)[:, ::-1].copy()
    return states(seed) | {
        "position_fire_count": {"counts": rng.integers(0, 4, (13, 3072)), "tokens": np.full(13, 4)},
        "top_k": {"values": values, "seq": np.full((2, 2, 3), seed), "pos": np.tile([[0], [1]], (2, 1, 3))},
    }


@pytest.mark.parametrize(("block_bytes", "write_behind"), [(1, True), (1 << 28, True), (1, False)])
def test_merge_store_files_equals_the_merge_in_memory(tmp_path: Path, block_bytes: int, write_behind: bool):
    """The shard merge sums counts a block of chunk rows at a time and folds the rest one store at a time
    (each merged layer written by a writer thread, or not)."""
    paths = [tmp_path / f"{shard}.zarr" for shard in range(5)]
    for shard, path in enumerate(paths):
        write_store(path, attrs(shard=shard), wide_states(shard))
    assert zarr.open_group(paths[0], mode="r")["position_fire_count"]["counts"].chunks[0] < 13  # several blocks
    merge_store_files(paths, tmp_path / "merged.zarr", block_bytes=block_bytes, write_behind=write_behind)
    got_attrs, got = read_store(tmp_path / "merged.zarr")
    want_attrs, want = merge_stores(paths)
    assert got_attrs["sources"] == want_attrs["sources"] == [f"d/{shard}" for shard in range(5)]
    assert sorted(got) == sorted(want)
    for name, state in want.items():
        for key, array in state.items():
            np.testing.assert_array_equal(got[name][key], array, err_msg=f"{name}/{key}")
    expected = sum(wide_states(shard)["position_fire_count"]["counts"] for shard in range(5))
    np.testing.assert_array_equal(got["position_fire_count"]["counts"], expected)
    at_once = merge_states([read_store(path)[1] for path in paths])  # folding changes nothing here (no pruning)
    for name, state in at_once.items():
        for key, array in state.items():
            np.testing.assert_array_equal(got[name][key], array, err_msg=f"{name}/{key}")


def test_merge_store_files_refuses_a_mismatch_and_leaves_nothing(tmp_path: Path):
    write_store(tmp_path / "a.zarr", attrs(), wide_states(0))
    odd = wide_states(1)
    odd["position_fire_count"]["counts"] = odd["position_fire_count"]["counts"][:12]
    write_store(tmp_path / "b.zarr", attrs(shard=1), odd)
    with pytest.raises(ValueError, match=r"b\.zarr: position_fire_count/counts has shape \(12, 3072\)"):
        merge_store_files([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "merged.zarr")
    assert not (tmp_path / "merged.zarr").exists()
    with pytest.raises(ValueError, match="counted twice"):
        merge_store_files([tmp_path / "a.zarr", tmp_path / "a.zarr"], tmp_path / "merged.zarr")


def test_merge_refuses_incompatible_or_overlapping(tmp_path: Path):
    write_store(tmp_path / "a.zarr", attrs(), states(0))
    write_store(tmp_path / "b.zarr", attrs(shard=1, layers=[0]), states(0))
    write_store(tmp_path / "c.zarr", attrs(), states(0))
    with pytest.raises(ValueError, match="'layers' differs"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    with pytest.raises(ValueError, match="counted twice"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "c.zarr"])


def test_shards_of_two_versions_of_a_text_are_never_merged(tmp_path: Path):
    """Each capture store records the version of its dataset's text; stores of one dataset and two versions
    are refused, stores of two datasets keep both versions."""
    write_store(tmp_path / "a.zarr", attrs(shard=0, text_versions={"d": "v1"}), states(0))
    write_store(tmp_path / "b.zarr", attrs(shard=1, text_versions={"d": "v2"}), states(1))
    write_store(tmp_path / "c.zarr", attrs(dataset="e", text_versions={"e": "v2"}), states(1))
    with pytest.raises(ValueError, match=r"b\.zarr: its shard of dataset 'd' was read from another version"):
        merge_store_files([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "merged.zarr")
    assert not (tmp_path / "merged.zarr").exists()
    merged, _ = merge_stores([tmp_path / "a.zarr", tmp_path / "c.zarr"])
    assert merged["text_versions"] == {"d": "v1", "e": "v2"}


def test_truncated_store_is_refused(tmp_path: Path):
    path = tmp_path / "s.zarr"
    write_store(path, attrs(), states(0))
    for chunk in (path / "fire_count" / "counts" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(chunk.read_bytes()[:3])
    with pytest.raises(ValueError, match=r"s\.zarr is corrupted"):
        read_store(path)


def test_store_without_completion_mark_is_refused(tmp_path: Path):
    path = tmp_path / "s.zarr"
    write_store(path, attrs(), states(0))
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["complete"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a complete accumulator store"):
        read_store(path)


def test_failed_write_leaves_nothing(tmp_path: Path):
    final = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "partial").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_store(final, attrs(), states(0))
    shutil.rmtree(final)


def test_chunks_of_arrays_written_a_layer_at_a_time():
    """A layer per chunk along the appended axis, the next axis cut to keep chunks within 16 MB."""
    from neuron_census.capture.store import APPEND_CHUNK, APPEND_CHUNK_BYTES, _append_chunks

    assert _append_chunks((1, 2048, 36864), 0, 8) == (1, 56, 36864)  # OPT-66b per-position counts
    assert 56 * 36864 * 8 <= APPEND_CHUNK_BYTES < 57 * 36864 * 8
    assert _append_chunks((1, 32, 3072), 0, 4) == (1, 32, 3072)  # top-k of OPT-125m: one layer, 393 kB
    assert _append_chunks((2, 1, 3072), 1, 8) == (2, 1, 3072)  # n-gram denominators, appended along axis 1
    assert _append_chunks((5_000_000,), 0, 8) == (APPEND_CHUNK,)
