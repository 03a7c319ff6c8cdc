"""Third-party errors reduced to the one line a user needs, inside our own messages that name the culprit."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message (library messages often span several), else its type."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
