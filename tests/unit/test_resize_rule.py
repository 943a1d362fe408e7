"""The decode cache's resize rules: squash (``Resize((S, S))``) and shorter-side-crop
(``Resize(S)`` + ``CenterCrop(S)``), with known answers on tiny banded images."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermcam.config import TrainConfig
from dermcam.data.cache import CACHE_VERSION, RESIZE_RULES, ImageCache, decode_sample
from dermcam.data.dataset import Sample
from dermcam.data.images import open_image_sized
from dermcam.errors import DermcamError
from dermcam.run import Run

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CROP = "shorter-side-crop"


def banded(w: int, h: int, along: int) -> np.ndarray:
    """``(h, w, 3) uint8``: red, green, blue bands along axis ``along`` (1: left to right,
    0: top to bottom); the green band is exactly the centred ``min(w, h)`` square."""
    n = (w, h)[1 - along]
    side = min(w, h)
    lo, hi = (n - side) // 2, (n - side) // 2 + side
    a = np.zeros((h, w, 3), np.uint8)
    idx = [slice(None), slice(None)]
    for colour, sl in ((RED, slice(0, lo)), (GREEN, slice(lo, hi)), (BLUE, slice(hi, n))):
        idx[along] = sl
        a[tuple(idx)] = colour
    return a


@pytest.fixture
def landscape(tmp_path) -> Sample:
    """60 x 30 (w x h): red x < 15, green 15..44, blue x >= 45; a mask with one lesion in
    the centre (x 25..34, y 10..19) and one on the far left (x 0..9, y 10..19); an
    artifact map with code 3 on the left band's lesion, code 5 on the centre one."""
    Image.fromarray(banded(60, 30, along=1)).save(tmp_path / "land.png")
    m = np.zeros((30, 60), np.uint8)
    m[10:20, 25:35] = 255
    m[10:20, 0:10] = 255
    Image.fromarray(m).save(tmp_path / "land_mask.png")
    a = np.zeros((30, 60), np.uint8)
    a[10:20, 0:10] = 3
    a[10:20, 25:35] = 5
    Image.fromarray(a).save(tmp_path / "land_art.png")
    return Sample("land", tmp_path / "land.png", 0, "train", tmp_path / "land_mask.png",
                  tmp_path / "land_art.png")


def test_crop_keeps_only_the_centre_band(landscape):
    item = decode_sample(landscape, 30, resize=CROP)
    img = item["image"]
    assert img.shape == (30, 30, 3) and img.dtype == np.uint8
    assert (img == GREEN).all()  # red and blue bands are outside the centred square


def test_squash_keeps_all_three_bands(landscape):
    img = decode_sample(landscape, 30)["image"]
    assert img.shape == (30, 30, 3)
    # columns halve: output column j is centred on source column 2j + 1
    np.testing.assert_array_equal(img[:, 0], np.tile(RED, (30, 1)))
    np.testing.assert_array_equal(img[:, 15], np.tile(GREEN, (30, 1)))
    np.testing.assert_array_equal(img[:, 29], np.tile(BLUE, (30, 1)))
    np.testing.assert_array_equal(decode_sample(landscape, 30, resize="squash")["image"], img)


def test_mask_and_artifacts_are_cropped_like_the_image(landscape):
    item = decode_sample(landscape, 30, resize=CROP)
    want = np.zeros((30, 30), np.uint8)
    want[10:20, 10:20] = 1  # the centre lesion, shifted by the crop's 15 px; the left one gone
    np.testing.assert_array_equal(item["mask"], want)
    np.testing.assert_array_equal(item["artifacts"], want * 5)
    squashed = decode_sample(landscape, 30)
    assert squashed["mask"][10:20, 0:5].all()  # squash keeps the far-left lesion
    assert (squashed["artifacts"] == 3).any()


def test_portrait_crops_the_middle_band(tmp_path):
    Image.fromarray(banded(30, 60, along=0)).save(tmp_path / "port.png")
    m = np.zeros((60, 30), np.uint8)
    m[25:35, 10:20] = 255  # centre: survives at rows 10..19
    m[50:60, 10:20] = 255  # bottom: cut away
    Image.fromarray(m).save(tmp_path / "port_mask.png")
    s = Sample("port", tmp_path / "port.png", 1, "train", tmp_path / "port_mask.png")
    item = decode_sample(s, 30, resize=CROP)
    assert (item["image"] == GREEN).all()
    want = np.zeros((30, 30), np.uint8)
    want[10:20, 10:20] = 1
    np.testing.assert_array_equal(item["mask"], want)
    sq = decode_sample(s, 30)["image"]
    np.testing.assert_array_equal(sq[0], np.tile(RED, (30, 1)))
    np.testing.assert_array_equal(sq[29], np.tile(BLUE, (30, 1)))


def test_drafted_jpeg_is_cropped_in_its_own_coordinates(tmp_path):
    # 800 x 400 decodes drafted (1/8 scale) at size 32; the full-size mask is cut alike.
    Image.fromarray(banded(800, 400, along=1)).save(tmp_path / "big.jpg", quality=95)
    m = np.zeros((400, 800), np.uint8)
    m[100:300, 300:500] = 255  # centre half of the centred 400 px square
    m[:, :100] = 255  # far left: cut away
    Image.fromarray(m).save(tmp_path / "big_mask.png")
    s = Sample("big", tmp_path / "big.jpg", 1, "train", tmp_path / "big_mask.png")
    drafted, full = open_image_sized(s.image_path, draft_size=32)
    assert drafted.size == (100, 50) and full == (800, 400)
    item = decode_sample(s, 32, resize=CROP)
    img = item["image"].astype(int)
    assert img.shape == (32, 32, 3)
    assert (np.abs(img - GREEN) <= 12).all()  # JPEG noise only, no red or blue
    want = np.zeros((32, 32), np.uint8)
    want[8:24, 8:24] = 1
    np.testing.assert_array_equal(item["mask"], want)


def test_crop_still_checks_the_mask_size(tmp_path, landscape):
    Image.new("L", (30, 30)).save(tmp_path / "small_mask.png")
    s = Sample("land", landscape.image_path, 0, "train", tmp_path / "small_mask.png")
    with pytest.raises(DermcamError, match="mask is 30x30 but its image is 60x30"):
        decode_sample(s, 30, resize=CROP)


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def test_squash_key_is_the_old_formula(landscape, tmp_path):
    raw = "||".join([str(CACHE_VERSION), "30", _stat(landscape.image_path),
                     _stat(landscape.mask_path), _stat(landscape.artifact_path)])
    old = hashlib.sha1(raw.encode()).hexdigest()
    assert ImageCache(tmp_path / "c").key(landscape, 30) == old
    assert ImageCache(tmp_path / "c", resize="squash").key(landscape, 30) == old
    no_mask = Sample("n", landscape.image_path, 0, "train")
    raw = "||".join([str(CACHE_VERSION), "16", _stat(landscape.image_path), "-", "-"])
    assert ImageCache(tmp_path / "c").key(no_mask, 16) == hashlib.sha1(raw.encode()).hexdigest()
    assert ImageCache(tmp_path / "c", resize=CROP).key(landscape, 30) != old


def test_cache_stores_each_rule_apart(landscape, tmp_path):
    squash = ImageCache(tmp_path / "c")
    crop = ImageCache(tmp_path / "c", resize=CROP)
    a = squash.get(landscape, 30)
    b = crop.get(landscape, 30)
    assert (squash.misses, crop.misses) == (1, 1)
    assert len(list((tmp_path / "c").rglob("*.npz"))) == 2
    again = crop.get(landscape, 30)
    assert crop.hits == 1
    for k in ("image", "mask", "artifacts"):
        np.testing.assert_array_equal(again[k], b[k])
    assert (b["image"] == GREEN).all() and not (a["image"] == GREEN).all()


@pytest.mark.parametrize("bad", ["stretch", "Squash", ""])
def test_unknown_rule_is_refused(landscape, tmp_path, bad):
    with pytest.raises(DermcamError, match="squash, shorter-side-crop"):
        ImageCache(tmp_path / "c", resize=bad)
    with pytest.raises(DermcamError, match="unknown resize rule"):
        decode_sample(landscape, 30, resize=bad)


def test_rules_listed():
    assert RESIZE_RULES == ("squash", "shorter-side-crop")


def test_config_records_the_rule_and_runs_reopen_it(tmp_path):
    cfg = TrainConfig(data="d", out="o", resize=CROP)
    recorded = asdict(cfg)
    assert recorded["resize"] == CROP
    assert TrainConfig(**recorded) == cfg
    run = Run(tmp_path, {"config": recorded})
    assert run.config.resize == CROP and run.cache.resize == CROP
    # a manifest written before the field existed: squash, as those runs were trained
    old = {k: v for k, v in recorded.items() if k != "resize"}
    assert TrainConfig(**old).resize == "squash"
    old_run = Run(tmp_path, {"config": old})
    assert old_run.config.resize == "squash" and old_run.cache.resize == "squash"
    assert TrainConfig(data="d", out="o").resize == "squash"
