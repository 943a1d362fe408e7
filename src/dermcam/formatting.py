"""Number formatting shared by the CLI and the library's sentences."""

from __future__ import annotations


def num(v, fmt: str = ".2f", missing: str = "n/a") -> str:
    """``v`` formatted with ``fmt``; ``missing`` for None, NaN or a non-number."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return missing
    return missing if v != v else format(v, fmt)
