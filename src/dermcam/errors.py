"""User-facing errors: one line naming the file (or option), the problem and what to do; the
CLI prints it without a traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path


class DermcamError(Exception):
    """An error caused by the user's input, with a one-line message."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


def first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 120 characters of it): a library's
    exception, quoted inside one of dermcam's one-line errors."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
