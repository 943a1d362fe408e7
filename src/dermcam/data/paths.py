"""Path safety: nothing named in a data file may escape its data root."""

from __future__ import annotations

import re
from pathlib import Path

from dermcam.errors import DermcamError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def check_id(image_id: str, source: str | Path) -> str:
    """Return ``image_id`` if it is a plain file stem; else raise naming ``source``."""
    image_id = str(image_id).strip()
    if not image_id:
        raise DermcamError("empty image id", source)
    if "/" in image_id or "\\" in image_id or ".." in image_id or not _ID_RE.match(image_id):
        raise DermcamError(
            f"image id {image_id!r} is not a plain file name (no path separators, '..' "
            "or leading dots allowed)", source)
    return image_id


def safe_join(root: str | Path, relative: str | Path, source: str | Path) -> Path:
    """Join ``relative`` under ``root``, refusing absolute paths, ``..`` and symlinks out;
    ``source`` (the file the path came from) is named in the error."""
    root_resolved = Path(root).resolve()
    rel = Path(str(relative).strip())
    if rel.is_absolute() or ".." in rel.parts or "\\" in str(relative):
        raise DermcamError(f"path {str(relative)!r} escapes the data folder {root}", source)
    candidate = Path(root) / rel
    resolved = candidate.resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise DermcamError(
            f"path {str(relative)!r} resolves outside the data folder {root} "
            "(symbolic links out of the data folder are refused)", source)
    return candidate
