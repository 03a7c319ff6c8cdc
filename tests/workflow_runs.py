"""Running Snakemake on the project's Snakefile from tests: a work directory, a run, its planned jobs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
TABLES = ("neurons.parquet", "layers.parquet", "position_rates.parquet")  # every census model's
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
# The tiny DAG's model jobs spend their seconds importing torch, not computing: run them on one thread each,
# so that two run at once on two cores (a third less time for the tiny DAG than one at a time on both).
ONE_THREAD_EACH = (
    "--set-threads", "capture=1", "vocab_projection=1", "train=1", "correlation=1", "neuron_properties=1",
    "entropy_interventions=1", "attention_interventions=1", "universal_tables=1", "subupdate_lens=1", "value_clusters=1",
    "steering=1",
)


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
