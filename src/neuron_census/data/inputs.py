"""What a job reads, as files Snakemake can see and as a fingerprint of them.

A job reruns when what it read changes only if Snakemake knows what it read. A folder is no good as an
input (its mtime does not change when a file in it is rewritten in place), so rules list the files of model
and tokenizer folders and of text datasets one by one, and carry a fingerprint of them (path, size and
modification time of each) as a parameter: an edited file reruns what depends on it even when its new
modification time is older than the outputs (a copy that keeps times, a checkout of an older version).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


def folder_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files of a model or tokenizer folder (not its subfolders, not hidden files), sorted; the folder
    itself when it does not exist, so Snakemake names it as the missing input."""
    path = Path(folder)
    if not path.is_dir():
        return [str(folder)]
    return sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def files_fingerprint(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over (path, size, modification time in ns) of each file; a missing file counts as absent."""
    described = []
    for path in paths:
        try:
            status = os.stat(path)
            described.append([str(path), status.st_size, status.st_mtime_ns])
        except OSError:
            described.append([str(path), None, None])
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]
