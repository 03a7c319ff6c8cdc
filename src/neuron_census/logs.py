"""Job logs and job errors.

Everything a job writes to stderr (progress bars, warnings) also goes to its log file. A job that fails
on bad input (a wrong value, a missing or damaged file, non-finite activations, memory) prints one line
naming the culprit and exits with status 1; the traceback goes to the log file only. Any other exception
is a bug and keeps its traceback on the terminal.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

PREFIX = "neuron-census: error: "


def memory_errors() -> tuple[type[BaseException], ...]:
    """MemoryError, and torch's out-of-memory error once torch is imported (a job that never imported torch,
    such as a figure, cannot raise it, and need not pay for importing it)."""
    torch = sys.modules.get("torch")
    return (MemoryError,) if torch is None else (MemoryError, torch.OutOfMemoryError)


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


def one_line(error: BaseException) -> str:
    """The error's message on one line (third-party messages can span several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if isinstance(error, memory_errors()):
        text = f"out of memory ({text}); lower capture.batch_size or pick another capture.strategy"
    return text


@contextmanager
def job_log(logs: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Run a job body with stderr copied to its first log file (kept on success and failure alike); bad input
    ends it with one line and exit status 1."""
    previous, log = sys.stderr, None
    if logs:
        try:
            Path(logs[0]).parent.mkdir(parents=True, exist_ok=True)
            log = Path(logs[0]).open("w", encoding="utf-8")
        except OSError as error:  # a read-only or misplaced log folder: say so instead of a traceback
            print(f"{PREFIX}cannot write the job's log {logs[0]}: {error.strerror or error}", file=sys.stderr)
            sys.exit(1)
        sys.stderr = _Tee(sys.__stderr__, log)  # type: ignore[assignment]
    try:
        yield
    # bad input: our own checks raise ValueError, FileNotFoundError or FloatingPointError; Hugging Face raises
    # OSError for models and files it cannot find; and running out of memory
    except (ValueError, OSError, FloatingPointError, *memory_errors()) as error:
        if log is not None:
            log.write(traceback.format_exc())
        print(PREFIX + one_line(error), file=sys.stderr)
        sys.exit(1)
    finally:
        sys.stderr = previous
        if log is not None:
            log.close()
