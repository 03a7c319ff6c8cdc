"""Third-party errors reduced to the one line a user needs, inside our own messages that name the culprit."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message (library messages often span several), else its type."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
