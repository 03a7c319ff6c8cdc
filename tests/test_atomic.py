"""Atomic outputs under SIGKILL: nothing finished-looking is left, and the next writer cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from neuron_census.atomic import HOST, atomic_path

WRITER = """
import sys
from pathlib import Path
from neuron_census.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    Path(tmp).write_text("complete")
"""


def test_a_writer_killed_before_the_rename_leaves_only_a_hidden_temporary(tmp_path: Path):
    final = tmp_path / "table.parquet"
    killed = subprocess.run(
        [sys.executable, "-c", WRITER, str(final)],
        env={**os.environ, "NEURON_CENSUS_KILL_AT": f"publish:{final}"},
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert not final.exists()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".table.parquet.tmp-{HOST}-")
    assert left.read_text() == "complete"  # written, but never published

    subprocess.run([sys.executable, "-c", WRITER, str(final)], check=True)  # the rerun
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_temporaries_of_live_or_remote_writers_are_kept(tmp_path: Path):
    final = tmp_path / "out.txt"
    live = tmp_path / f".out.txt.tmp-{HOST}-{os.getppid()}"  # the process that started this test is alive
    remote = tmp_path / ".out.txt.tmp-othernode-12345"  # may still be running on another machine
    dead = tmp_path / f".out.txt.tmp-{HOST}-{2**22 + 17}"  # above Linux's pid limit: no such process
    for path in (live, remote, dead):
        path.write_text("partial")
    with atomic_path(final) as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, live.name, remote.name])


def test_the_failpoint_matches_point_and_subject_only(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NEURON_CENSUS_KILL_AT", "publish:*/other.txt")
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("done")
    monkeypatch.setenv("NEURON_CENSUS_KILL_AT", "train-step:3")
    with atomic_path(tmp_path / "other.txt") as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", "out.txt"]
