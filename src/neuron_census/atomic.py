"""Atomic creation of output files and directories.

Every job writes to a temporary sibling and renames it into place only once it is complete,
so a job killed mid-write never leaves something at the final path that looks finished.
Temporaries are hidden (`.name.tmp-HOST-PID`). One left by a killed writer on this machine (its process
is gone) is removed by the next writer of the same path; one from another machine of a cluster is left
alone, since its writer may still be running there.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neuron_census.testing.failpoints import failpoint


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


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` when the block succeeds.

    Works for files and directories (e.g. zarr stores). On error the temporary is removed and
    any previous `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(final.parent.glob(f".{final.name}.tmp-{HOST}-*")):  # those of dead writers of this machine
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{HOST}-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {final}")
        failpoint("publish", final)
        _remove(final)
        os.replace(tmp, final)
    except BaseException as error:
        _remove(tmp)
        reason = write_failure(error)
        if reason is not None:
            raise OSError(f"cannot write {final}: {reason}") from error
        raise


# What a full disk, a quota, a file size limit or a read-only file system raise on writing.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def write_failure(error: BaseException) -> str | None:
    """Why writing failed, if `error` is the file system refusing a write; else None.

    Python's OSError carries the errno (often without the path); Rust-backed writers (polars' parquet)
    raise their own types with the OS error only in the text."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    for code in (error.errno if isinstance(error, OSError) else None, int(found.group(1)) if found else None):
        if code in WRITE_ERRNOS:
            return f"{os.strerror(code)} (errno {code})"
    return None
