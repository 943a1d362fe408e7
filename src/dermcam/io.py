"""Atomic file writing: every output goes to a temporary name and is renamed into place,
so a crash never leaves a file that looks complete but is not."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
SCHEMA_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, renamed onto it on success (else removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise DermcamError(f"could not write file ({exc.strerror or exc})", path) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_nan(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically; NaN/inf become ``null`` so the file is strict JSON."""
    obj = json.loads(json.dumps(obj, default=_json_default))
    text = json.dumps(_clean_nan(obj), indent=2, allow_nan=False, sort_keys=False)
    return write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DermcamError("file not found", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DermcamError(f"not valid JSON ({exc})", path) from exc


def write_csv(path: str | Path, df) -> Path:
    """Write a DataFrame as CSV atomically (no index, '\\n' line ends)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib Figure atomically, in its suffix's format; a failed write is one line."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: give the figure path a suffix such as .png or .pdf")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=dpi)
    log.debug("wrote %s", path)
    return path


def link_identical(reference: str | Path, folder: str | Path) -> tuple[int, int]:
    """Hard-link each file under ``folder`` whose bytes equal its counterpart under
    ``reference``; ``(files linked, bytes saved)``. Nothing changes where links are refused."""
    import filecmp
    reference, folder = Path(reference), Path(folder)
    linked = saved = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        ref = reference / path.relative_to(folder)
        if not ref.is_file() or ref.is_symlink():
            continue
        st, rst = path.stat(), ref.stat()
        if (st.st_dev, st.st_ino) == (rst.st_dev, rst.st_ino) or st.st_size != rst.st_size:
            continue
        if not filecmp.cmp(path, ref, shallow=False):
            continue
        tmp = path.with_name(path.name + ".link-tmp")
        try:
            os.link(ref, tmp)
        except OSError as err:  # another device, or no hard links here
            log.info("not linking %s to %s: %s", path, ref, err)
            return linked, saved
        os.replace(tmp, path)
        linked += 1
        saved += st.st_size
    return linked, saved
