"""User-facing errors.

A :class:`DermcamError` carries one line that names the file (or option) and the
problem, and says what to do where that is known. The CLI prints it without a
traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""

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
