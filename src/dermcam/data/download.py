"""Fetch the official ISIC 2016 Part 3B files with pooch (http(s), or ``file://`` for a
mirror), verify them and unpack them safely. A file appears only after its SHA-256, when
known, matched (else the computed one is recorded, *not verified*, in ``download.json``);
one already present is not fetched again. Archives are unpacked only after every member
was checked (no absolute paths, ``..``, links, special files or oversized members)."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlparse
from urllib.request import url2pathname

import pooch
import requests

from dermcam import __version__
from dermcam.data import isic2016
from dermcam.data.describe import compare_official, describe
from dermcam.data.paths import safe_join
from dermcam.errors import DermcamError
from dermcam.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2016/"
TRAIN_ZIP = "ISBI2016_ISIC_Part3B_Training_Data.zip"
TEST_ZIP = "ISBI2016_ISIC_Part3B_Test_Data.zip"
#: The official ISIC 2016 Part 3B files, in download order.
ISIC2016_FILES = (isic2016.TRAIN_CSV, isic2016.TEST_CSV, TRAIN_ZIP, TEST_ZIP)
ARCHIVES = {TRAIN_ZIP: isic2016.TRAIN_DIR, TEST_ZIP: isic2016.TEST_DIR}

#: file name -> expected SHA-256 (hex). Empty: the challenge publishes no checksums,
#: so none is assumed; pass ``checksums=`` (``--checksums FILE``) or fill this in.
KNOWN_SHA256: dict[str, str] = {}

RECORD = "download.json"
TIMEOUT_S = 60.0  # per socket operation (connect, each read)
RETRIES = 2  # extra attempts after a dropped or truncated transfer
BACKOFF_S = 2.0  # wait before retry k: k * BACKOFF_S
CHUNK = 1 << 20
MAX_MEMBER_BYTES = 512 << 20  # the largest ISIC image is a few MB
MAX_ARCHIVE_BYTES = 32 << 30  # sum of uncompressed member sizes
MAX_MEMBERS = 100_000
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

Progress = Callable[[int, "int | None"], None]


class _Retryable(Exception):
    """A transfer that stopped early (drop, timeout, truncation, a 5xx): worth retrying."""


@dataclass
class Fetched:
    name: str
    url: str
    path: str
    size: int
    sha256: str
    verified: bool  # True only when compared with a known checksum
    status: str = "downloaded"  # downloaded | already present


def read_checksums(path: str | Path) -> dict[str, str]:
    """Parse ``sha256sum`` output (``HEX  NAME`` or ``HEX *NAME``; ``#`` comments) -> {name: hex}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DermcamError("checksum file not found", path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DermcamError(f"could not read checksum file ({exc})", path) from exc
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            raise DermcamError(f"line {i}: expected 'SHA256  FILENAME' (64 hex digits), "
                               f"got {line[:80]!r}", path)
        out[parts[1].strip().lstrip("*")] = parts[0].lower()
    return out


def normalize_base_url(base_url: str) -> str:
    """``http(s)://`` or ``file://`` URL ending in ``/``; a local folder becomes a file URL."""
    base = str(base_url).strip()
    scheme = urlparse(base).scheme.lower()
    if not scheme and Path(base).is_dir():
        base = Path(base).resolve().as_uri()
        scheme = "file"
    if scheme not in ("http", "https", "file"):
        raise DermcamError(f"--base-url must be an http(s):// or file:// URL (or a local "
                           f"folder), got {base_url!r}")
    return base if base.endswith("/") else base + "/"


class _Progress:
    """pooch's progress-bar protocol as ``progress(done, total)`` calls."""

    def __init__(self, progress: Progress):
        self.progress, self.total, self.done = progress, None, 0

    def update(self, n: int) -> None:
        self.done += n
        total = self.total or None
        self.progress(min(self.done, total) if total else self.done, total)

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        pass


def _copy_file_url(url: str, output_file: str, _pooch=None) -> None:
    """pooch downloader for ``file://`` URLs (a local mirror)."""
    src = Path(url2pathname(urlparse(url).path))
    if not src.is_file():
        raise DermcamError("not found (file:// mirror)", url)
    shutil.copyfile(src, output_file)


def _fetch_once(url: str, dest: Path, expected: str | None, progress: Progress | None,
                timeout: float) -> None:
    if urlparse(url).scheme == "file":
        downloader = _copy_file_url
    else:
        downloader = pooch.HTTPDownloader(
            progressbar=_Progress(progress) if progress else False, chunk_size=CHUNK,
            timeout=timeout, headers={"User-Agent": f"dermcam/{__version__}"})
    logger = pooch.get_logger()  # pooch logs each download at INFO: dermcam says its own
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        pooch.retrieve(url, f"sha256:{expected}" if expected else None, fname=dest.name,
                       path=dest.parent, downloader=downloader)
    except requests.HTTPError as exc:
        code, reason = exc.response.status_code, exc.response.reason
        if 500 <= code < 600:
            raise _Retryable(f"HTTP {code} {reason}") from exc
        raise DermcamError(f"HTTP {code} {reason}", url) from exc
    except requests.Timeout as exc:
        raise _Retryable(f"no answer within {timeout:g} s") from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        raise _Retryable(f"transfer truncated ({type(exc).__name__})") from exc
    except requests.RequestException as exc:
        raise _Retryable(f"network error ({type(exc).__name__})") from exc
    except ValueError as exc:  # pooch: the SHA-256 does not match; nothing was kept
        got = re.search(r"got ([0-9a-fA-F]{64})", str(exc))
        if got is None:
            raise
        raise DermcamError(f"SHA-256 mismatch: expected {expected.lower()}, got "
                           f"{got.group(1)} (the download was discarded)", url) from exc
    except OSError as exc:
        raise DermcamError(f"could not write ({exc.strerror or exc})", dest) from exc
    finally:
        logger.setLevel(level)


def fetch(url: str, dest: str | Path, expected_sha256: str | None = None,
          progress: Progress | None = None, timeout: float = TIMEOUT_S,
          retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> Fetched:
    """Download ``url`` to ``dest``, checking ``expected_sha256`` when given; a drop, timeout,
    truncation or 5xx is retried ``retries`` times. ``progress(done, total or None)``."""
    dest = Path(dest)
    if expected_sha256 is not None and not _HEX64.match(expected_sha256):
        raise DermcamError(f"expected SHA-256 for {dest.name} is not 64 hex digits")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: _Retryable | None = None
    attempts = max(0, int(retries)) + 1
    for attempt in range(attempts):
        if attempt:
            log.warning("%s: %s; retrying (%d of %d)", url, last, attempt, retries)
            time.sleep(backoff_s * attempt)
        try:
            _fetch_once(url, dest, expected_sha256, progress, timeout)
            break
        except _Retryable as exc:
            last = exc
    else:
        raise DermcamError(f"{last} (after {attempts} attempt(s)); run again to retry", url)
    digest = pooch.file_hash(str(dest), alg="sha256")
    return Fetched(dest.name, url, str(dest), dest.stat().st_size, digest,
                   expected_sha256 is not None)


def _unsafe_reason(info: zipfile.ZipInfo, max_member_bytes: int) -> str | None:
    name = info.filename
    if not name or "\x00" in name:
        return "has an empty or NUL-containing name"
    if "\\" in name:
        return "uses backslashes in its path"
    p = PurePosixPath(name)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in p.parts:
        return "climbs out of the target folder with '..'"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a special file (device, fifo or socket)"
    if info.file_size > max_member_bytes:
        return f"is {info.file_size} bytes, over the {max_member_bytes}-byte limit per member"
    return None


def safe_extract(archive: str | Path, dest: str | Path,
                 max_member_bytes: int = MAX_MEMBER_BYTES,
                 max_total_bytes: int = MAX_ARCHIVE_BYTES,
                 max_members: int = MAX_MEMBERS,
                 progress: Progress | None = None) -> dict[str, int]:
    """Unpack ``archive`` under ``dest`` after checking every member (nothing is written
    when one is refused); each file atomically, one already there with the member's size
    kept. ``__MACOSX/`` is skipped. Returns the counts written, kept and folders."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DermcamError(f"not a readable zip archive ({exc}); delete it and download "
                           "again", archive) from exc
    counts = {"written": 0, "kept": 0, "folders": 0}
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise DermcamError(f"refused to extract: {len(infos)} members, over the "
                               f"{max_members} limit", archive)
        plan = [info for info in infos if not info.filename.startswith("__MACOSX/")]
        for info in plan:
            reason = _unsafe_reason(info, max_member_bytes)
            if reason:
                raise DermcamError(f"refused to extract: member {info.filename!r} {reason}",
                                   archive)
        total = sum(info.file_size for info in plan)
        if total > max_total_bytes:
            raise DermcamError(f"refused to extract: {total} bytes uncompressed, over the "
                               f"{max_total_bytes}-byte limit", archive)
        dest.mkdir(parents=True, exist_ok=True)
        # every target resolved before writing any: a symlinked folder could lead one out
        targets = [safe_join(dest, info.filename.rstrip("/"), archive) for info in plan]
        done_bytes = 0
        for info, target in zip(plan, targets):
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                counts["folders"] += 1
                continue
            if target.is_file() and target.stat().st_size == info.file_size:
                counts["kept"] += 1
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with atomic_path(target) as tmp, zf.open(info) as src, \
                            open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)  # zipfile stops at file_size
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    raise DermcamError(f"damaged member {info.filename!r} ({exc}); delete the "
                                       "archive and download again", archive) from exc
                counts["written"] += 1
            done_bytes += info.file_size
            if progress:
                progress(done_bytes, total)
    return counts


@dataclass
class DownloadResult:
    root: Path
    files: list[Fetched]
    extracted: dict[str, dict[str, int]]
    counts_match: bool | None
    official_check: str
    info: dict[str, Any]

    def summary_lines(self) -> list[str]:
        """One line per file and archive (the official count check is in ``official_check``)."""
        unverified = f"SHA-256 not verified (no known checksum; recorded in {RECORD})"
        return ([f"{f.name}: {f.status}, {f.size} bytes, "
                 f"{'SHA-256 verified' if f.verified else unverified}" for f in self.files]
                + [f"{name}: {c['written']} file(s) extracted, {c['kept']} already present"
                   for name, c in self.extracted.items()])


def check_supported(dataset: str) -> None:
    """Refuse, in one line, a data set ``dermcam download`` cannot fetch."""
    if dataset.lower().replace("-", "").replace("_", "") != "isic2016":
        raise DermcamError(f"cannot download {dataset!r}: only isic2016 is supported; fetch "
                           "ISIC 2017, HAM10000 or PH2 by hand and point 'dermcam info' at "
                           "the folder")


def download_isic2016(dest: str | Path, base_url: str = DEFAULT_BASE_URL,
                      checksums: str | Path | Mapping[str, str] | None = None,
                      progress: Progress | None = None,
                      say: Callable[[str], None] | None = None,
                      timeout: float = TIMEOUT_S, retries: int = RETRIES,
                      backoff_s: float = BACKOFF_S,
                      max_member_bytes: int = MAX_MEMBER_BYTES) -> DownloadResult:
    """Fetch, verify and unpack ISIC 2016 Part 3B into ``dest``; compare its counts.
    ``checksums``: a ``sha256sum``-style file or ``{name: hex}``, over :data:`KNOWN_SHA256`;
    ``say(line)`` reports each step.
    """
    dest = Path(dest).resolve()
    if dest.exists() and not dest.is_dir():
        raise DermcamError("not a folder", dest)
    base = normalize_base_url(base_url)
    expected = dict(KNOWN_SHA256)
    if checksums is not None:
        expected.update(read_checksums(checksums) if isinstance(checksums, (str, Path))
                        else {k: v.lower() for k, v in checksums.items()})
    say = say or (lambda line: None)
    dest.mkdir(parents=True, exist_ok=True)
    record_path = dest / RECORD
    try:
        previous = read_json(record_path).get("files", {}) if record_path.exists() else {}
    except (DermcamError, AttributeError):
        previous = {}
    files: list[Fetched] = []
    for name in ISIC2016_FILES:
        url = urljoin(base, name)
        target = dest / name
        want = expected.get(name)
        if target.exists():
            digest = pooch.file_hash(str(target), alg="sha256")
            if want is not None and digest != want:
                raise DermcamError(f"file exists but its SHA-256 {digest} differs from the "
                                   f"expected {want}; delete it to download again", target)
            recorded = previous.get(name, {}).get("sha256")
            if want is None and recorded and recorded != digest:
                log.warning("%s: SHA-256 differs from the one recorded at download", target)
            files.append(Fetched(name, url, str(target), target.stat().st_size, digest,
                                 want is not None, status="already present"))
            say(f"{name}: already present")
            continue
        say(f"fetching {url}")
        files.append(fetch(url, target, want, progress=progress, timeout=timeout,
                           retries=retries, backoff_s=backoff_s))
    extracted = {}
    for archive, folder in ARCHIVES.items():
        say(f"unpacking {archive}")
        extracted[archive] = safe_extract(dest / archive, dest, max_member_bytes,
                                          progress=progress)
        if not (dest / folder).is_dir():
            raise DermcamError(f"the archive holds no {folder}/ folder (not the ISIC 2016 "
                               "Part 3B archive?)", dest / archive)
    info = describe(dest)
    match, text = compare_official(info["splits"])
    result = DownloadResult(dest, files, extracted, match, text, info)
    write_json(record_path, {
        "schema_version": 1, "dermcam": __version__, "data_set": "ISIC 2016 Part 3B",
        "base_url": base, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {f.name: {k: v for k, v in asdict(f).items() if k != "name"} for f in files},
        "checksum_note": ("every file was verified against a known SHA-256"
                          if all(f.verified for f in files) else
                          "SHA-256 values of files marked verified=false were computed here, "
                          "not checked against a published value"),
        "extracted": extracted,
        "counts": {sp: {k: v for k, v in s.items() if k in ("n", "benign", "malignant",
                                                             "with_mask")}
                   for sp, s in info["splits"].items()},
        "counts_match_official": match, "official_check": text})
    return result
