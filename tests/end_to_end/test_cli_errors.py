"""Bad input gives one clear line naming the file, in the library and on the command line.

Each case damages a freshly written data set (ISIC 2016 or generic layout) in one
way. The library must raise :class:`DermcamError` whose message and ``path`` name
the offending file; ``dermcam info`` must exit 2 with exactly one stderr line that
starts with ``error:`` and holds no traceback. Then the happy paths of the CLI.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermcam import cli
from dermcam.data import load_dataset
from dermcam.data.cache import decode_sample
from dermcam.data.describe import describe
from dermcam.data.images import read_image, read_mask
from dermcam.errors import DermcamError

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DERMCAM = Path(sys.executable).with_name("dermcam")


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``dermcam.cli.main()`` in this process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dermcam", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code, ANSI.sub("", out), ANSI.sub("", err)


# ---------------------------------------------------------------------------
# Files that are not what they claim
# ---------------------------------------------------------------------------


def random_bytes(n: int = 2000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def noisy_jpeg_bytes() -> bytes:
    """A 40 x 30 JPEG whose scan data dominate, so cutting it in half truncates the scan."""
    import io

    a = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=100)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG that claims ``width x height`` px: a bomb's header, a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


BAD_FILES = {
    "corrupt_jpeg": (".jpg", lambda: random_bytes()),
    "truncated_jpeg": (".jpg", lambda: noisy_jpeg_bytes()[: len(noisy_jpeg_bytes()) // 2]),
    "zero_bytes": (".jpg", lambda: b""),
    "text_as_png": (".png", lambda: b"image_id,label\nthis is not a picture\n"),
    "bomb_png": (".png", lambda: png_header_only(20000, 20000)),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_file_is_a_one_line_error_naming_it(kind, tmp_path):
    ext, make = BAD_FILES[kind]
    path = tmp_path / f"bad{ext}"
    path.write_bytes(make())
    for reader in (read_image, read_mask):
        with pytest.raises(DermcamError) as e:
            reader(path)
        assert e.value.path == str(path) and str(e.value).startswith(f"{path}: ")
        assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_limit_is_kept_and_refused(tmp_path, monkeypatch):
    import dermcam.data.cache  # noqa: F401  (importing the data layer must keep the limit)
    import dermcam.data.describe  # noqa: F401
    import dermcam.data.synth  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 2 ** 28
    # An image just over the limit (where PIL only warns) is refused as well.
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    assert read_image(path).shape == (30, 40, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 px: over, but under 2x
    with pytest.raises(DermcamError, match="decompression bomb") as e:
        read_image(path)
    assert e.value.path == str(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over 2x: PIL raises itself
    with pytest.raises(DermcamError, match="decompression bomb"):
        read_image(path)


# ---------------------------------------------------------------------------
# Damaged data sets: library error and CLI error
# ---------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))


def _case(kind: str, make_isic, make_generic, tmp_path, dh):
    """Damage a data set; return (root, offending file, text the message holds, needs --check).

    ``isic_*`` cases start from the ISIC 2016 fixture (5 train + 3 test images),
    ``generic_*`` ones from a generic layout: img000-img002 benign, img003-img004
    malignant, img002 and img004 in the test split, masks in ``masks/``.
    """
    isic = kind.startswith("isic_")
    if isic:
        root = make_isic()
    else:
        labels = dh.generic_labels(3, 2)
        root = make_generic(labels, masks=True,  # both classes in each split
                            split={i: "test" if i in ("img002", "img004") else "train"
                                   for i in labels})
    train_csv, test_csv, labels = root / dh.TRAIN_CSV, root / dh.TEST_CSV, root / "labels.csv"
    train_dir = root / dh.TRAIN_DIR
    outside = tmp_path / "outside"
    outside.mkdir()
    name = kind.split("_", 1)[1]
    if name == "missing_image":
        (train_dir / "ISIC_0000003.jpg").unlink()
        return root, train_csv, "ISIC_0000003", False
    if name == "missing_root":
        shutil.rmtree(root)
        return root, root, "data folder not found", False
    if name == "missing_image_folder":
        shutil.rmtree(root / dh.TEST_DIR)
        return root, test_csv, dh.TEST_DIR, False
    if name == "bad_label":
        _edit(train_csv, "ISIC_0000001,malignant", "ISIC_0000001,melanoma")
        return root, train_csv, "'melanoma'", False
    if name == "bad_test_label":
        _edit(test_csv, "ISIC_0000011,1.0", "ISIC_0000011,2")
        return root, test_csv, "line 2", False
    if name == "blank_label" and isic:
        _edit(train_csv, "ISIC_0000001,malignant", "ISIC_0000001,  ")
        return root, train_csv, "blank label", False
    if name == "blank_label":
        _edit(labels, "img001,0,", "img001,,")
        return root, labels, "line 3", False
    if name == "mask_size":  # seen in the file headers: no --check needed
        dh.write_mask(train_dir / "ISIC_0000002_Segmentation.png", size=(20, 20))
        return root, train_dir / "ISIC_0000002_Segmentation.png", "20x20", False
    if name in ("corrupt_jpeg", "truncated_jpeg", "zero_bytes"):
        path = train_dir / "ISIC_0000004.jpg"
        path.write_bytes(BAD_FILES[name][1]())
        return root, path, "", name == "truncated_jpeg"
    if name in ("text_as_png", "bomb_png"):
        path = root / "images" / "img001.png"
        path.write_bytes(BAD_FILES[name][1]())
        return root, path, "", False
    if name == "dotdot_id":
        _edit(train_csv, "ISIC_0000001,", "../ISIC_0000001,")
        return root, train_csv, "../ISIC_0000001", False
    if name == "separator_id":
        _edit(test_csv, "ISIC_0000011,", "sub/ISIC_0000011,")
        return root, test_csv, "sub/ISIC_0000011", False
    if name == "backslash_id":
        _edit(labels, "img002,", "sub\\img002,")
        return root, labels, "img002", False
    if name == "mask_column_escapes":
        dh.write_mask(tmp_path / "x.png")
        labels.write_text("image_id,label,mask\nimg000,benign,../x.png\n")
        return root, labels, "../x.png", False
    if name == "mask_column_absolute":
        labels.write_text(f"image_id,label,mask\nimg000,benign,{dh.write_mask(outside / 'm.png')}\n")
        return root, labels, "escapes", False
    if name == "symlinked_image":
        target = dh.write_image(outside / "elsewhere.jpg")
        (train_dir / "ISIC_0000001.jpg").unlink()
        (train_dir / "ISIC_0000001.jpg").symlink_to(target)
        return root, train_csv, "ISIC_0000001.jpg", False
    if name == "symlinked_mask":
        target = dh.write_mask(outside / "elsewhere.png")
        (train_dir / "ISIC_0000000_Segmentation.png").unlink()
        (train_dir / "ISIC_0000000_Segmentation.png").symlink_to(target)
        return root, train_csv, "ISIC_0000000_Segmentation.png", False
    if name == "symlinked_images_folder":
        shutil.move(root / "images", outside / "images")
        (root / "images").symlink_to(outside / "images", target_is_directory=True)
        return root, labels, "outside the data folder", False
    if name == "duplicate_train_id":
        _edit(train_csv, "ISIC_0000002,benign\n", "ISIC_0000002,benign\nISIC_0000002,benign\n")
        return root, train_csv, "duplicate image id", False
    if name == "duplicate_test_id":
        _edit(test_csv, "ISIC_0000012,0.0\n", "ISIC_0000012,0.0\nISIC_0000012,0.0\n")
        return root, test_csv, "duplicate image id", False
    if name == "id_in_both_splits":
        shutil.copy(train_dir / "ISIC_0000000.jpg", root / dh.TEST_DIR / "ISIC_0000000.jpg")
        _edit(test_csv, "ISIC_0000012,0.0\n", "ISIC_0000012,0.0\nISIC_0000000,0.0\n")
        return root, test_csv, "ISIC_0000000", False
    if name == "duplicate_id":
        _edit(labels, "img001,", "img000,")
        return root, labels, "duplicate image id", False
    if name == "no_header":
        labels.write_text("img000,benign,train\nimg001,benign,train\n")
        return root, labels, "header row", False
    if name == "bad_split":
        _edit(labels, "img004,1,test", "img004,1,validation")
        return root, labels, "'validation'", False
    if name == "binary_csv" and not isic:
        labels.write_bytes(random_bytes(500, seed=3))
        return root, labels, "CSV", False
    if name == "binary_csv":
        train_csv.write_bytes(random_bytes(500, seed=4))
        return root, train_csv, "CSV", False
    if name == "nul_csv":
        train_csv.write_bytes(train_csv.read_bytes() + b"\x00\x00")
        return root, train_csv, "NUL", False
    if name == "csv_is_a_folder":
        train_csv.unlink()
        train_csv.mkdir()
        return root, train_csv, "not a file", False
    if name == "empty_csv":
        labels.write_text("")
        return root, labels, "empty CSV", False
    raise AssertionError(kind)


CASES = [
    "isic_missing_image", "isic_missing_root", "isic_missing_image_folder", "isic_bad_label",
    "isic_bad_test_label", "isic_blank_label", "isic_mask_size", "isic_corrupt_jpeg",
    "isic_truncated_jpeg", "isic_zero_bytes", "generic_text_as_png", "generic_bomb_png",
    "isic_dotdot_id", "isic_separator_id", "generic_backslash_id",
    "generic_mask_column_escapes", "generic_mask_column_absolute", "isic_symlinked_image",
    "isic_symlinked_mask", "generic_symlinked_images_folder", "isic_duplicate_train_id",
    "isic_duplicate_test_id", "isic_id_in_both_splits", "generic_duplicate_id",
    "generic_no_header", "generic_bad_split", "generic_binary_csv", "isic_binary_csv",
    "isic_nul_csv", "generic_empty_csv", "generic_blank_label", "isic_csv_is_a_folder",
]


@pytest.fixture
def case(request, make_isic, make_generic, tmp_path, dh):
    return _case(request.param, make_isic, make_generic, tmp_path, dh)


def _assert_names(exc: DermcamError, offending: Path, fragment: str) -> None:
    msg = str(exc)
    assert exc.path == str(offending), msg
    assert msg.startswith(f"{offending}: ") and fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_library_raises_naming_the_offending_file(case):
    root, offending, fragment, _ = case
    with pytest.raises(DermcamError) as e:
        describe(root, check=True)
    _assert_names(e.value, offending, fragment)


def _info_lines(err: str) -> tuple[list[str], list[str], str]:
    """stderr of a failed 'dermcam info': (error lines, warning lines, the count line)."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines, err
    errors = [ln for ln in lines[:-1] if ln.startswith("error: ")]
    warnings = [ln for ln in lines[:-1] if ln.startswith("warning: ")]
    assert len(errors) + len(warnings) == len(lines) - 1, err  # nothing else, no traceback
    assert re.match(r"\d+ errors?, \d+ warnings? in ", lines[-1]), err
    assert lines[-1].startswith(f"{len(errors)} error"), err
    return errors, warnings, lines[-1]


@pytest.mark.parametrize("case", CASES, indirect=True)
def test_cli_info_prints_one_error_line_and_exits_2(case, monkeypatch, capsys, tmp_path):
    """One damaged thing: exactly one error line naming it, then the count; exit 2."""
    root, offending, fragment, needs_check = case
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(monkeypatch, capsys, "info", root, "--image-size", "32",
                             *(["--check"] if needs_check else []))
    assert code == 2
    assert "Traceback" not in err + out
    errors, _, count = _info_lines(err)
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: {offending}: ") and fragment in errors[0], err
    assert count.startswith("1 error,"), err


def test_truncated_data_are_found_by_check_only(make_isic, dh, monkeypatch, capsys, tmp_path):
    """Without --check, 'info' reads headers only: a truncated scan is not yet seen, but a
    mask whose size differs is; --check decodes every file and lists both."""
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    root = make_isic()
    path = root / dh.TRAIN_DIR / "ISIC_0000004.jpg"
    path.write_bytes(BAD_FILES["truncated_jpeg"][1]())
    mask = dh.write_mask(root / dh.TEST_DIR / "ISIC_0000010_Segmentation.png", size=(20, 20))
    code, _, err = run_cli(monkeypatch, capsys, "info", root, "--image-size", "32")
    errors = _info_lines(err)[0]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {mask}: "), err
    code, _, err = run_cli(monkeypatch, capsys, "info", root, "--image-size", "32", "--check")
    errors = _info_lines(err)[0]
    assert code == 2 and len(errors) == 2, err
    assert {e.split(": ")[1] for e in errors} == {str(path), str(mask)}
    assert any("truncated" in e for e in errors)
    sample = next(s for s in load_dataset(root).samples if s.image_id == "ISIC_0000004")
    with pytest.raises(DermcamError, match="truncated") as e:
        decode_sample(sample, 16)
    assert e.value.path == str(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_just_over_the_pixel_limit_fails_info_check(make_isic, dh, monkeypatch, capsys,
                                                    tmp_path):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    root = make_isic()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # each image is 1200 px
    code, _, err = run_cli(monkeypatch, capsys, "info", root, "--check", "--image-size", "32")
    errors, _, count = _info_lines(err)
    assert code == 2 and len(errors) == 16 and count.startswith("16 errors"), err  # 8 + 8 masks
    for line in errors:
        assert "decompression bomb" in line
        assert re.match(rf"error: {re.escape(str(root))}/ISBI2016_ISIC_Part3B_\w+/ISIC_\d+"
                        r"(_Segmentation\.png|\.jpg): ", line), line


def test_info_with_a_bad_image_has_no_traceback_in_a_real_process(make_isic, dh):
    root = make_isic()
    bad = root / dh.TRAIN_DIR / "ISIC_0000004.jpg"
    bad.write_bytes(b"")
    r = subprocess.run([str(DERMCAM), "info", str(root), "--image-size", "32"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = _info_lines(ANSI.sub("", r.stderr))[0]
    assert errors == [f"error: {bad}: file is empty (0 bytes)"], r.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_real_process_error_has_no_traceback_unless_debug(tmp_path, debug):
    run = tmp_path / "no-such-run"
    args = [str(DERMCAM), *(["--debug"] if debug else []), "evaluate", str(run)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if debug:
        assert r.returncode != 0 and "Traceback" in r.stderr and "DermcamError" in r.stderr
    else:
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = ANSI.sub("", r.stderr).splitlines()
        assert lines == [f"error: {run}: run folder not found"], r.stderr


# ---------------------------------------------------------------------------
# The whole data set in one run: every problem listed, warnings apart
# ---------------------------------------------------------------------------


def _several_defects(make_isic, dh) -> tuple[Path, dict[str, str]]:
    """The ISIC fixture with five defects; returns (root, {file or 'csv:line': fragment})."""
    root = make_isic()
    train, test = root / dh.TRAIN_DIR, root / dh.TEST_DIR
    (train / "ISIC_0000004.jpg").write_bytes(BAD_FILES["truncated_jpeg"][1]())
    (train / "ISIC_0000002_Segmentation.png").write_text("this is not a mask\n")
    dh.write_mask(test / "ISIC_0000010_Segmentation.png", size=(20, 20))
    _edit(root / dh.TRAIN_CSV, "ISIC_0000001,malignant", "ISIC_0000001,melanoma")
    _edit(root / dh.TEST_CSV, "ISIC_0000012,0.0", "ISIC_0000099,0.0")
    return root, {
        str(train / "ISIC_0000004.jpg"): "truncated",
        str(train / "ISIC_0000002_Segmentation.png"): "not a readable image",
        str(test / "ISIC_0000010_Segmentation.png"): "mask is 20x20 but its image is 40x30",
        f"{root / dh.TRAIN_CSV}: line 2 (ISIC_0000001)": "'melanoma'",
        f"{root / dh.TEST_CSV}: line 3 (ISIC_0000099)": "no image file",
    }


def test_info_check_lists_every_defect_in_one_run(make_isic, dh, monkeypatch, capsys,
                                                  tmp_path):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    root, want = _several_defects(make_isic, dh)
    code, out, err = run_cli(monkeypatch, capsys, "info", root, "--check", "--image-size", "32")
    errors, _, count = _info_lines(err)
    assert code == 2 and "Traceback" not in err and count.startswith("5 errors,"), err
    for where, fragment in want.items():
        hits = [e for e in errors if e.startswith(f"error: {where}: ")]
        assert len(hits) == 1 and fragment in hits[0], (where, err)
    # without --check the same run finds all but the truncated scan
    code, _, err = run_cli(monkeypatch, capsys, "info", root, "--image-size", "32")
    errors = _info_lines(err)[0]
    assert code == 2 and len(errors) == 4 and not any("truncated" in e for e in errors), err


def test_check_dataset_returns_records_and_logs(make_isic, dh, tmp_path, caplog):
    import logging

    from dermcam.data.cache import ImageCache
    from dermcam.data.check import check_dataset

    root, want = _several_defects(make_isic, dh)
    with caplog.at_level(logging.INFO, logger="dermcam.data.check"):
        rep = check_dataset(root, image_size=32, cache=ImageCache(tmp_path / "cache"))
    assert not rep.ok and len(rep.errors) == 5
    bad_label = next(p for p in rep.errors if p.line == 2)
    assert (bad_label.path, bad_label.image_id) == (str(root / dh.TRAIN_CSV), "ISIC_0000001")
    assert {str(p) for p in rep.errors} == {
        next(str(p) for p in rep.errors if str(p).startswith(f"{w}: ")) for w in want}
    assert "5 errors" in caplog.text


def test_check_fills_the_decode_cache(make_isic, monkeypatch, capsys, tmp_path):
    from dermcam.data.cache import ImageCache

    cache = tmp_path / "cache"
    monkeypatch.setenv("DERMCAM_CACHE", str(cache))
    root = make_isic()
    code, _, _ = run_cli(monkeypatch, capsys, "info", root, "--check", "--image-size", "32")
    assert code == 0
    assert len(list(cache.glob("*/*.npz"))) == 8  # one entry per image (with its mask)
    c = ImageCache(cache)
    for s in load_dataset(root).samples:  # what training at 32 px will ask for: all hits
        c.get(s, 32)
    assert (c.hits, c.misses) == (8, 0)


def _odd_inputs(make_generic, dh):
    """A usable generic data set whose img000-img004 are each odd in one way."""
    labels = dh.generic_labels(6, 6)
    split = {i: "test" if i in ("img002", "img008") else "train" for i in labels}
    root = make_generic(labels, split=split, masks=True)
    img, msk = root / "images", root / "masks"
    a16 = (dh.lesion_image(0)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(a16).save(img / "img000.png")  # 16-bit grey
    Image.fromarray(dh.lesion_image(0)).convert("P").save(img / "img001.png")  # palette
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 x 40, shown 40 x 30 like its mask
    Image.fromarray(np.ascontiguousarray(dh.lesion_image(0).transpose(1, 0, 2))).save(
        img / "img002.png", exif=exif)
    soft = dh.lesion_mask().astype(np.float64)
    soft[5:7, :] = 100  # grey levels: thresholded at half intensity
    Image.fromarray(soft.astype(np.uint8)).save(msk / "img003.png")
    dh.write_image(img / "img004.png", size=(8, 6))  # tiny beside a 32 px input
    dh.write_mask(msk / "img004.png", size=(8, 6))
    return root, {"img000.png": "16-bit", "img001.png": "palette",
                  "img002.png": "EXIF orientation 6", "img003.png": "not binary",
                  "img004.png": "much smaller than the 32 px"}


def test_odd_but_usable_inputs_are_warnings(make_generic, dh, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    root, want = _odd_inputs(make_generic, dh)
    code, out, err = run_cli(monkeypatch, capsys, "info", root, "--check", "--image-size", "32")
    assert code == 0 and "Traceback" not in err, err
    assert _row(out, "train")[:3] == [10, 5, 5]  # the table is still printed
    lines = err.splitlines()
    assert lines[-1].startswith("0 errors, 5 warnings in "), err
    for name, fragment in want.items():
        hits = [ln for ln in lines if ln.startswith("warning: ") and f"/{name}: " in ln]
        assert len(hits) == 1 and fragment in hits[0], (name, err)


# ---------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------


def _row(out: str, split: str) -> list[int]:
    """The numbers of one split's row in the info table: images, benign, malignant, ..."""
    line = next(ln for ln in out.splitlines() if re.search(rf"\b{split}\b", ln)
                and re.search(r"\d", ln) and "split" not in ln)
    return [int(float(x)) for x in re.findall(r"\d+(?:\.\d+)?", line)]


def test_info_prints_counts_per_split_and_class(make_isic, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))
    root = make_isic()
    code, out, err = run_cli(monkeypatch, capsys, "info", root, "--check", "--image-size", "32")
    assert code == 0
    # usable, but 3 benign + 2 malignant is too few for the default validation split
    assert err.startswith("warning: ") and "needs at least 5 of each class" in err, err
    assert err.splitlines()[-1].startswith("0 errors, 1 warning in "), err
    assert _row(out, "train")[:3] == [5, 3, 2] and _row(out, "train")[4] == 5
    assert _row(out, "test")[:3] == [3, 2, 1]
    assert "ISIC 2016 Part 3B" in out and "40x30 (8)" in out


def test_info_on_generic_layout_reports_the_holdout(make_generic, dh, monkeypatch, capsys):
    root = make_generic(dh.generic_labels(10, 5))
    code, out, _ = run_cli(monkeypatch, capsys, "info", root)
    assert code == 0
    assert _row(out, "train")[:3] == [12, 8, 4] and _row(out, "test")[:3] == [3, 2, 1]
    assert "no split column" in out


def test_info_refuses_a_missing_test_split(make_isic, dh, monkeypatch, capsys):
    root = make_isic()
    (root / dh.TEST_CSV).unlink()
    code, _, err = run_cli(monkeypatch, capsys, "info", root, "--image-size", "32")
    errors = _info_lines(err)[0]
    assert code == 2 and errors == [f"error: {root / dh.TEST_CSV}: file not found: the test "
                                    "split is empty (train and evaluate need both splits)"]


@pytest.mark.parametrize("args", [[str(DERMCAM), "--help"], [str(DERMCAM), "info", "--help"],
                                  [sys.executable, "-m", "dermcam", "--help"]])
def test_help_exits_0(args):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and ("info" in r.stdout)
    assert "--check" in r.stdout or args[-2:] != ["info", "--help"]


def test_problem_lines_show_a_few_warnings_of_each_kind():
    """Errors all, warnings at most ``shown`` per kind (the message but for its numbers)."""
    from dermcam.data.check import CheckReport, Problem
    from dermcam.views import problem_lines

    report = CheckReport(Path("d"), problems=[
        Problem("d/a.png", "file is empty (0 bytes)"),
        *(Problem(f"d/{i}.png", f"16-bit image ({i} bits)", "warning") for i in range(4)),
        Problem("d/p.png", "palette image", "warning")])
    assert problem_lines(report, shown=2) == [
        "error: d/a.png: file is empty (0 bytes)",
        "warning: d/0.png: 16-bit image (0 bits)", "warning: d/1.png: 16-bit image (1 bits)",
        "warning: ... and 2 more like the above", "warning: d/p.png: palette image",
        report.summary()]
    assert report.summary().startswith("1 error, 5 warnings in d: ")
