"""``dermcam download``: fetching, resuming, verifying and unpacking, against a local server.

A real ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) serves a miniature ISIC 2016
Part 3B (a few 8 x 8 JPEGs and masks in the official archives and CSVs). Handlers
can ignore Range requests or send fewer bytes than their Content-Length, and
every request is recorded, so resume and truncation are observed, not assumed.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from dermcam.data import download as dl
from dermcam.data import load_dataset
from dermcam.data.describe import compare_official
from dermcam.data.isic2016 import OFFICIAL_COUNTS, TEST_CSV, TEST_DIR, TRAIN_CSV, TRAIN_DIR
from dermcam.errors import DermcamError

TRAIN = {"ISIC_0000000": 0, "ISIC_0000001": 1, "ISIC_0000002": 0}
TEST = {"ISIC_0000010": 0, "ISIC_0000011": 1}


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _zip(members: dict[str, bytes], folders: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in folders:
            zf.writestr(f if f.endswith("/") else f + "/", b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def mini_isic() -> dict[str, bytes]:
    """The four official file names -> bytes of a 3 + 2 image ISIC 2016 Part 3B."""
    files = {}
    for folder, csv_name, rows, names, zip_name in (
            (TRAIN_DIR, TRAIN_CSV, TRAIN, ("benign", "malignant"), dl.TRAIN_ZIP),
            (TEST_DIR, TEST_CSV, TEST, ("0.0", "1.0"), dl.TEST_ZIP)):
        members = {}
        for k, (image_id, label) in enumerate(rows.items()):
            img = np.full((8, 8, 3), 180, np.uint8)
            img[2:6, 2:6] = (60 + 40 * label + k, 30, 20)
            mask = np.zeros((8, 8), np.uint8)
            mask[2:6, 2:6] = 255
            members[f"{folder}/{image_id}.jpg"] = _png(img, "JPEG")
            members[f"{folder}/{image_id}_Segmentation.png"] = _png(mask)
        files[zip_name] = _zip(members, folders=(folder,))
        files[csv_name] = "".join(f"{i},{names[y]}\n" for i, y in rows.items()).encode()
    return files


class Site:
    """What the test server serves and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.truncate: set[str] = set()
        self.url = ""


@pytest.fixture
def site():
    state = Site()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            name = unquote(self.path.split("?", 1)[0]).removeprefix("/2016/")
            rng = self.headers.get("Range")
            state.requests.append((name, rng))
            data = state.files.get(name)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in state.truncate:
                body = body[: len(body) // 2]  # then the connection closes (HTTP/1.0)
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/2016/"
    state.files.update(mini_isic())
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


FAST = {"retries": 0, "backoff_s": 0.0, "timeout": 10.0}


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------
# The whole download
# ---------------------------------------------------------------------------


def test_download_unpacks_a_loadable_data_set(site, tmp_path):
    dest = tmp_path / "isic"
    seen: list[tuple[int, int | None]] = []
    res = dl.download_isic2016(dest, base_url=site.url, progress=lambda d, t: seen.append((d, t)),
                               **FAST)
    for name in dl.ISIC2016_FILES:
        assert (dest / name).read_bytes() == site.files[name]
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == sorted(
        [*dl.ISIC2016_FILES, dl.RECORD])  # no temporary file left behind
    ds = load_dataset(dest)
    assert ds.layout == "isic2016" and ds.name == "ISIC 2016 Part 3B"
    assert {s.image_id: s.label for s in ds.split("train")} == TRAIN
    assert {s.image_id: s.label for s in ds.split("test")} == TEST
    assert all(s.mask_path is not None for s in ds.samples)
    # the tiny set is not the published one, and the check says so
    assert res.counts_match is False and "differ" in res.official_check
    # no checksum was known: the computed one is recorded, and not called verified
    rec = __import__("json").loads((dest / dl.RECORD).read_text())
    for name in dl.ISIC2016_FILES:
        entry = rec["files"][name]
        assert entry["sha256"] == hashlib.sha256(site.files[name]).hexdigest()
        assert entry["verified"] is False
    assert rec["counts_match_official"] is False
    assert any("not verified" in line for line in res.summary_lines())
    assert seen and seen[-1][1] is not None
    # a second run fetches nothing and unpacks nothing again
    n = len(site.requests)
    again = dl.download_isic2016(dest, base_url=site.url, **FAST)
    assert len(site.requests) == n
    assert {f.status for f in again.files} == {"already present"}
    assert all(c["written"] == 0 for c in again.extracted.values())


def test_compare_official_match_and_differ():
    match, text = compare_official({sp: dict(c) for sp, c in OFFICIAL_COUNTS.items()})
    assert match is True and "match" in text and "900" in text
    match, text = compare_official({"train": {"benign": 727, "malignant": 172},
                                    "test": {"benign": 304, "malignant": 75}})
    assert match is False and "differ" in text


def test_checksums_file_verifies(site, tmp_path):
    sums = tmp_path / "sha256.txt"
    sums.write_text("# ISIC 2016\n" + "".join(
        f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in site.files.items()))
    res = dl.download_isic2016(tmp_path / "isic", base_url=site.url, checksums=sums, **FAST)
    assert all(f.verified for f in res.files)
    assert not any("not verified" in line for line in res.summary_lines())


def test_file_url_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in mini_isic().items():
        (mirror / name).write_bytes(data)
    res = dl.download_isic2016(tmp_path / "isic", base_url=mirror.as_uri(), **FAST)
    assert len(load_dataset(tmp_path / "isic").samples) == 5
    assert res.counts_match is False


# ---------------------------------------------------------------------------
# Resume: a re-run fetches only what is missing
# ---------------------------------------------------------------------------


def test_rerun_fetches_only_missing_files(site, tmp_path):
    dest = tmp_path / "isic"
    dest.mkdir()
    (dest / TRAIN_CSV).write_bytes(site.files[TRAIN_CSV])  # an interrupted earlier run
    res = dl.download_isic2016(dest, base_url=site.url, **FAST)
    fetched = {name for name, _ in site.requests}
    assert TRAIN_CSV not in fetched and set(dl.ISIC2016_FILES) - {TRAIN_CSV} == fetched
    assert {f.name: f.status for f in res.files}[TRAIN_CSV] == "already present"


def test_present_file_with_wrong_checksum_is_refused(site, tmp_path):
    dest = tmp_path / "isic"
    dest.mkdir()
    (dest / TRAIN_CSV).write_bytes(b"not the official file")
    sums = {TRAIN_CSV: hashlib.sha256(site.files[TRAIN_CSV]).hexdigest()}
    with pytest.raises(DermcamError) as exc:
        dl.download_isic2016(dest, base_url=site.url, checksums=sums, **FAST)
    assert "differs from the expected" in one_line(exc) and not site.requests


# ---------------------------------------------------------------------------
# Failures: one line naming the URL or file, no final file
# ---------------------------------------------------------------------------


def test_truncated_transfer_is_an_error(site, tmp_path):
    site.truncate.add(dl.TRAIN_ZIP)
    dest = tmp_path / dl.TRAIN_ZIP
    with pytest.raises(DermcamError) as exc:
        dl.fetch(site.url + dl.TRAIN_ZIP, dest, retries=1, backoff_s=0.0, timeout=10.0)
    msg = one_line(exc)
    assert "truncated" in msg and site.url + dl.TRAIN_ZIP in msg and "2 attempt" in msg
    assert not dest.exists()
    assert len([r for r in site.requests if r[0] == dl.TRAIN_ZIP]) == 2  # bounded retries


def test_wrong_checksum_leaves_nothing(site, tmp_path):
    dest = tmp_path / TRAIN_CSV
    with pytest.raises(DermcamError) as exc:
        dl.fetch(site.url + TRAIN_CSV, dest, expected_sha256="0" * 64, **FAST)
    msg = one_line(exc)
    assert "SHA-256 mismatch" in msg and hashlib.sha256(site.files[TRAIN_CSV]).hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_verifies_a_known_checksum(site, tmp_path):
    want = hashlib.sha256(site.files[dl.TRAIN_ZIP]).hexdigest()
    got = dl.fetch(site.url + dl.TRAIN_ZIP, tmp_path / dl.TRAIN_ZIP, want, **FAST)
    assert got.verified and got.sha256 == want and got.size == len(site.files[dl.TRAIN_ZIP])


def test_http_404_is_one_line(site, tmp_path):
    with pytest.raises(DermcamError) as exc:
        dl.fetch(site.url + "missing.zip", tmp_path / "missing.zip", **FAST)
    msg = one_line(exc)
    assert "HTTP 404" in msg and msg.startswith(site.url + "missing.zip")
    assert not (tmp_path / "missing.zip").exists()


def test_network_failure_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/2016/"
    with pytest.raises(DermcamError) as exc:
        dl.download_isic2016(tmp_path / "isic", base_url=url, **FAST)
    msg = one_line(exc)
    assert "network error" in msg and url in msg


def test_bad_checksum_file_and_base_url(tmp_path):
    bad = tmp_path / "sums.txt"
    bad.write_text("not-a-hash  file.zip\n")
    with pytest.raises(DermcamError, match="line 1"):
        dl.read_checksums(bad)
    with pytest.raises(DermcamError, match="--base-url"):
        dl.normalize_base_url("ftp://example.org/isic/")


# ---------------------------------------------------------------------------
# Unsafe archives
# ---------------------------------------------------------------------------


def test_zip_slip_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"ok/fine.txt": b"fine", "../evil": b"evil"}))
    dest = tmp_path / "dest"
    with pytest.raises(DermcamError) as exc:
        dl.safe_extract(archive, dest)
    assert "'../evil'" in one_line(exc) and "a.zip" in str(exc.value)
    assert not (tmp_path / "evil").exists()
    assert not (dest / "ok" / "fine.txt").exists()  # nothing written at all


def test_absolute_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/tmp/abs.txt"), b"x")
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DermcamError, match="absolute"):
        dl.safe_extract(archive, tmp_path / "dest")


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    with pytest.raises(DermcamError, match="symbolic link"):
        dl.safe_extract(archive, dest)
    assert not (dest / "link").exists() and not (dest / "link").is_symlink()


def test_oversized_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"big.bin": b"\0" * 5000}))
    with pytest.raises(DermcamError, match="limit"):
        dl.safe_extract(archive, tmp_path / "dest", max_member_bytes=1000)


def test_unsafe_archive_in_download_is_refused(site, tmp_path):
    site.files[dl.TEST_ZIP] = _zip({"../evil": b"evil"})
    with pytest.raises(DermcamError, match="refused to extract"):
        dl.download_isic2016(tmp_path / "isic", base_url=site.url, **FAST)
    assert not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def test_cli_download(site, tmp_path, monkeypatch, capsys):
    import sys

    from dermcam import cli

    dest = tmp_path / "isic"
    monkeypatch.setattr(sys, "argv", ["dermcam", "-q", "download", "isic2016", "--out", str(dest),
                                      "--base-url", site.url, "--retries", "0"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    assert e.value.code in (0, None), err
    assert "differ" in out and "not verified" in out
    monkeypatch.setattr(sys, "argv", ["dermcam", "download", "isic2016", "--out",
                                      str(tmp_path / "x"), "--base-url", site.url + "nope/",
                                      "--retries", "0"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    assert e.value.code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "HTTP 404" in lines[0]
