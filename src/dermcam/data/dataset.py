"""Samples and data sets: the base every layout builds on (the layouts import this module
and nothing of each other's; :mod:`dermcam.data.layouts` picks the one that fits)."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dermcam.data.paths import safe_join
from dermcam.errors import DermcamError

log = logging.getLogger(__name__)

LABEL_NAMES = ("benign", "malignant")
SPLITS = ("train", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    label: int  # 0 benign, 1 malignant
    split: str
    mask_path: Path | None = None
    artifact_path: Path | None = None
    group: str | None = None  # e.g. HAM10000's lesion_id: images of one lesion stay together


@dataclass(frozen=True)
class Problem:
    """One problem in a data set: the file, CSV line and image id where known; ``severity``
    ``"error"`` (unusable as it is) or ``"warning"`` (converted on the way in)."""

    path: str
    message: str
    severity: str = "error"
    line: int | None = None
    image_id: str | None = None

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f": line {self.line}" + (f" ({self.image_id})" if self.image_id else "")
        elif self.image_id:
            where += f": {self.image_id}"
        return f"{where}: {self.message}"

    @classmethod
    def from_error(cls, exc: DermcamError, default_path: str | Path = "",
                   line: int | None = None, image_id: str | None = None,
                   severity: str = "error") -> Problem:
        """A :class:`DermcamError` as a Problem, its ``path:`` and ``line N:`` prefixes moved
        into the fields."""
        msg = str(exc)
        path = exc.path if exc.path is not None else str(default_path)
        if exc.path is not None and msg.startswith(f"{exc.path}: "):
            msg = msg[len(exc.path) + 2:]
        if line is not None and msg.startswith(f"line {line}: "):
            msg = msg[len(f"line {line}: "):]
        return cls(path, msg, severity, line, image_id)


@dataclass
class DataSet:
    name: str
    root: Path
    layout: str
    samples: list[Sample]
    metadata_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.samples)

    def fingerprint(self) -> str:
        """A short hash of ids, labels, splits and file sizes/mtimes: changes when data do."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: (s.split, s.image_id)):
            st = s.image_path.stat()
            h.update(f"{s.split}|{s.image_id}|{s.label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if s.mask_path is not None:
                mst = s.mask_path.stat()
                h.update(f"m|{mst.st_size}|{mst.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def parse_label(value: str, source: str | Path, line: int | None = None) -> int:
    """Map ``benign|malignant|0|1|0.0|1.0`` (any case, padded) to 0/1."""
    v = str(value).strip().lower()
    if v in ("benign", "0", "0.0", "false"):
        return 0
    if v in ("malignant", "1", "1.0", "true"):
        return 1
    where = f"line {line}: " if line is not None else ""
    if not v:
        raise DermcamError(f"{where}blank label (expected benign/malignant or 0/1)", source)
    raise DermcamError(f"{where}label {value!r} is neither benign/malignant nor 0/1", source)


def read_csv_rows(path: Path) -> list[list[str]]:
    """Read a small CSV robustly: UTF-8 with or without BOM, CRLF or LF, blank lines skipped."""
    if not path.exists():
        raise DermcamError("file not found", path)
    if not path.is_file():
        raise DermcamError("not a file (expected a CSV file)", path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DermcamError(f"could not read file ({exc.strerror or exc})", path) from exc
    except UnicodeDecodeError as exc:
        raise DermcamError(f"not a UTF-8 text CSV ({exc.reason})", path) from exc
    if "\x00" in text:
        raise DermcamError("not a text CSV (contains NUL bytes)", path)
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise DermcamError(f"malformed CSV ({exc})", path) from exc
    return [[c.strip() for c in r] for r in rows]


def csv_table(path: Path, required: Sequence[str], empty: str, names: str
               ) -> tuple[list[str], list[list[str]]]:
    """``(lower-case header, rows)`` of a CSV whose header must hold ``required`` (one-line
    errors: ``empty`` for no rows; ``names`` says which columns, with the header found)."""
    rows = read_csv_rows(path)
    if not rows:
        raise DermcamError(empty, path)
    header = [h.lower() for h in rows[0]]
    if any(c not in header for c in required):
        raise DermcamError(f"{names}, got {','.join(rows[0])!r}", path)
    return header, rows


def short_row(i: int, row: list[str], header: list[str], path: Path) -> DermcamError:
    return DermcamError(f"line {i}: expected {len(header)} columns, got {','.join(row)!r}", path)


def rows_to_samples(rows: Iterable[tuple[int, list[str]]], id_col: int, csv_path: Path,
                    problems: list[Problem] | None, parse: Callable[[int, list[str]], Sample]
                    ) -> list[Sample]:
    """``parse(line, row)`` of each numbered CSV row; with ``problems``, a bad or repeated row
    is recorded there and left out instead of raising."""
    samples = []
    seen: dict[str, int] = {}
    for i, row in rows:
        try:
            sample = parse(i, row)
        except DermcamError as exc:
            if problems is None:
                raise
            problems.append(Problem.from_error(exc, csv_path, i, row[id_col] or None))
            continue
        if problems is not None and sample.image_id in seen:
            problems.append(Problem(str(csv_path), f"duplicate image id (first on line "
                                    f"{seen[sample.image_id]})", "error", i, sample.image_id))
            continue
        seen.setdefault(sample.image_id, i)
        samples.append(sample)
    check_duplicates(samples, csv_path)
    return samples


def image_path(folder: Path, image_id: str, source: Path, check_files: bool) -> Path:
    """The image file of ``image_id`` in ``folder`` (``.jpg`` assumed without ``check_files``)."""
    if not check_files:
        return safe_join(folder, image_id + ".jpg", source)
    for ext in IMAGE_EXTS:
        p = safe_join(folder, image_id + ext, source)
        if p.exists():
            return p
    raise DermcamError(f"no image file for id {image_id!r} in {folder}", source)


def existing(path: Path) -> Path | None:
    return path if path.exists() else None


def check_duplicates(samples: list[Sample], source: Path) -> None:
    counts = Counter(s.image_id for s in samples)
    dups = [i for i, c in counts.items() if c > 1]
    if dups:
        raise DermcamError(f"duplicate image id(s): {', '.join(sorted(dups)[:5])}", source)


def class_counts(samples: list[Sample]) -> dict[str, int]:
    c = Counter(s.label for s in samples)
    return {LABEL_NAMES[0]: c.get(0, 0), LABEL_NAMES[1]: c.get(1, 0)}


def pool_map(fn: Callable, items: Sequence, workers: int,
             progress: Callable[[int, int], None] | None = None) -> Iterator:
    """``fn`` of each item, in order, on ``workers`` threads (PIL and numpy release the GIL;
    one: in this thread), calling ``progress(done, total)`` here as results arrive."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, out in enumerate(pool.map(fn, items) if workers > 1 else map(fn, items), 1):
            yield out
            if progress:
                progress(done, len(items))
