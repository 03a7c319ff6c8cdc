"""Opt-in: the tiny DAG through a real single-node SLURM cluster with profiles/slurm (about 10 minutes).

Runs with NEURON_CENSUS_SLURM_TEST=1, as root on Debian/Ubuntu: profiles/slurm/local-cluster.sh
apt-installs slurm-wlm, slurmdbd, munge and mariadb-server and rewrites /etc/slurm. NEURON_CENSUS_SLURM_KEEP=1
leaves the cluster running afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "profiles" / "slurm"

pytestmark = pytest.mark.skipif(
    os.environ.get("NEURON_CENSUS_SLURM_TEST") != "1",
    reason="set NEURON_CENSUS_SLURM_TEST=1 to run the tiny DAG through a local SLURM cluster",
)


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs root on a Debian/Ubuntu machine (apt-get)")
    subprocess.run([str(SLURM / "local-cluster.sh"), "start"], check=True, timeout=900)
    yield
    if os.environ.get("NEURON_CENSUS_SLURM_KEEP") != "1":
        subprocess.run([str(SLURM / "local-cluster.sh"), "stop"], check=False, timeout=180)


def test_tiny_dag_through_slurm(slurm_cluster, tmp_path: Path):
    """Every job of the tiny DAG is an sbatch job that completes (sacct); the report, figures and planted
    neurons come out as on a local run (local-test.sh checks them and exits non-zero on any failure)."""
    env = {**os.environ, "LOCAL_TEST_CPUS_PER_TASK": os.environ.get("LOCAL_TEST_CPUS_PER_TASK", "1")}
    result = subprocess.run(
        [str(SLURM / "local-test.sh"), str(tmp_path / "census-slurm")],
        capture_output=True, text=True, timeout=1800, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.rstrip().endswith("PASS"), result.stdout
    done, submitted = map(int, re.search(r"sacct: (\d+)/(\d+) COMPLETED", result.stdout).groups())
    assert done == submitted > 0
    assert re.search(r"gpu=\d+", result.stdout), result.stdout  # the GPU rules went to partition gpu
