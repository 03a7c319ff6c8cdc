"""Named points where a test can have the running process killed, to prove that jobs survive SIGKILL.

`NEURON_CENSUS_KILL_AT=<point>:<glob>` makes the process SIGKILL itself (no cleanup, no exit handlers, as the
kernel's OOM killer or a cluster's preemption would) the first time it reaches `<point>` with a subject that
matches `<glob>`. Points: `publish` (an atomic output is fully written but not yet renamed into place; the
subject is its final path) and `train-step` (a training step is done; the subject is the step number).
With `NEURON_CENSUS_KILL_SCOPE=group` the whole process group dies instead (the workflow manager included,
as when a machine is lost); with `NEURON_CENSUS_KILL_SIGNAL=SIGTERM` the process is sent SIGTERM, as a
cluster does before its time limit. Unset, a failpoint costs one environment lookup.
"""

from __future__ import annotations

import fnmatch
import os
import signal


def failpoint(point: str, subject: object) -> None:
    """Signal this process (or its group) if `NEURON_CENSUS_KILL_AT` names this point and subject."""
    wanted = os.environ.get("NEURON_CENSUS_KILL_AT")
    if not wanted:
        return
    name, _, pattern = wanted.partition(":")
    if name != point or not fnmatch.fnmatch(str(subject), pattern or "*"):
        return
    sent = signal.Signals[os.environ.get("NEURON_CENSUS_KILL_SIGNAL", "SIGKILL")]
    if os.environ.get("NEURON_CENSUS_KILL_SCOPE") == "group":
        os.killpg(os.getpgid(0), sent)
    os.kill(os.getpid(), sent)
