"""Job logs: everything a job writes to stderr (progress bars, warnings, errors) also goes to its log file."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


class _Tee:
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return self.streams[0].isatty()


def tee_stderr(logs: Sequence[str | os.PathLike[str]]) -> None:
    """Copy stderr to the job's first log file (kept on success and failure alike)."""
    if not logs:
        return
    path = Path(logs[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr = _Tee(sys.__stderr__, path.open("w", encoding="utf-8"))  # type: ignore[assignment]
