"""Atomic creation of output files and directories.

Every job writes to a temporary sibling and renames it into place only once it is complete,
so a job killed mid-write never leaves something at the final path that looks finished.
Temporaries are hidden (`.name.tmp-HOST-PID`). One left by a killed writer on this machine (its process
is gone) is removed by the next writer of the same path; one from another machine of a cluster is left
alone, since its writer may still be running there.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neuron_census.failpoints import failpoint


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


HOST = socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def dead_temporaries(final: Path) -> list[Path]:
    """Temporaries of `final` whose writer was a process of this machine that no longer runs."""
    dead = []
    for path in sorted(final.parent.glob(f".{final.name}.tmp-{HOST}-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(path)
    return dead


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` when the block succeeds.

    Works for files and directories (e.g. zarr stores). On error the temporary is removed and
    any previous `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in dead_temporaries(final):
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{HOST}-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {final}")
        failpoint("publish", final)
        _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
