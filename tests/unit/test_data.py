"""Known-answer tests for the data layer: layouts, decoding, masks, the cache.

Every data set is written by the test into ``tmp_path`` (see ``conftest.py``), so
labels, splits and mask pixels are known before the code under test reads them.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dermcam.data import DataSet, detect_layout, load_dataset
from dermcam.data.cache import ImageCache, decode_sample, load_arrays
from dermcam.data.describe import describe
from dermcam.data.images import mask_to_bool, read_image, read_mask
from dermcam.errors import DermcamError

# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------


def test_isic2016_both_csv_dialects_parse_to_labels_and_splits(isic_root, dh):
    ds = load_dataset(isic_root)
    assert isinstance(ds, DataSet) and ds.layout == "isic2016"
    got = {s.image_id: (s.label, s.split) for s in ds.samples}
    want = {**{i: (lab, "train") for i, lab in dh.ISIC_TRAIN.items()},
            **{i: (lab, "test") for i, lab in dh.ISIC_TEST.items()}}
    assert got == want  # 'benign|malignant' (train) and '0.0|1.0' (test) both map to 0/1
    for s in ds.samples:
        folder = dh.TRAIN_DIR if s.split == "train" else dh.TEST_DIR
        assert s.image_path == isic_root / folder / f"{s.image_id}.jpg"
        assert s.mask_path == isic_root / folder / f"{s.image_id}_Segmentation.png"
    assert ds.has_masks and not ds.notes


def test_isic2016_without_masks_says_so(make_isic):
    ds = load_dataset(make_isic(masks=False))
    assert all(s.mask_path is None for s in ds.samples) and not ds.has_masks
    assert any("8 image(s) have no _Segmentation.png mask" in n for n in ds.notes)


def test_isic2016_tolerates_a_header_row_and_png_images(make_isic, dh):
    ds = load_dataset(make_isic(header=True, ext=".png"))
    assert dh.ids_of(ds.samples) == sorted([*dh.ISIC_TRAIN, *dh.ISIC_TEST])
    assert all(s.image_path.suffix == ".png" for s in ds.samples)


def test_generic_with_split_column_and_masks_folder(generic_root, dh):
    ds = load_dataset(generic_root)
    assert ds.layout == "generic" and detect_layout(generic_root) == "generic"
    assert dh.ids_of(ds.split("test")) == ["img000", "img001", "img006"]
    assert len(ds.split("train")) == 7
    assert {s.image_id: s.label for s in ds.samples} == dh.generic_labels(6, 4)
    assert all(s.mask_path == generic_root / "masks" / f"{s.image_id}.png" for s in ds.samples)
    assert not ds.notes


def test_generic_without_split_holds_out_a_seeded_stratified_fifth(make_generic, dh):
    labels = dh.generic_labels(10, 5)
    ds = load_dataset(make_generic(labels))
    test = ds.split("test")
    # round(10 * 0.2) benign and round(5 * 0.2) malignant images are held out
    assert sorted(s.label for s in test) == [0, 0, 1]
    assert len(ds.split("train")) == 12
    assert any("no split column" in n for n in ds.notes)
    # deterministic: the same ids again, and the same ids when the rows come in another order
    again = load_dataset(make_generic(labels, name="again"))
    shuffled = dict(reversed(list(labels.items())))
    other = load_dataset(make_generic(shuffled, name="shuffled"))
    assert dh.ids_of(again.split("test")) == dh.ids_of(test) == dh.ids_of(other.split("test"))


def test_generic_mask_column_of_relative_paths(make_generic, dh):
    root = make_generic({"a": "benign", "b": "malignant", "c": "1"},
                        split={"a": "train", "b": "train", "c": "test"}, masks="column")
    ds = load_dataset(root)
    assert {s.image_id: s.label for s in ds.samples} == {"a": 0, "b": 1, "c": 1}
    for s in ds.samples:
        assert s.mask_path == root / "segmentations" / f"{s.image_id}_seg.png"
        np.testing.assert_array_equal(read_mask(s.mask_path), dh.lesion_mask() > 0)


def test_detect_layout_names_each_layout_and_refuses_an_unknown_folder(
        isic_root, generic_root, tmp_path):
    assert detect_layout(isic_root) == "isic2016"
    assert detect_layout(generic_root) == "generic"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DermcamError, match="no known data layout") as e:
        detect_layout(tmp_path / "empty")
    assert e.value.path == str(tmp_path / "empty")


def test_fingerprint_is_stable_and_changes_when_a_file_changes(isic_root, dh):
    fp = load_dataset(isic_root).fingerprint()
    assert load_dataset(isic_root).fingerprint() == fp
    img = isic_root / dh.TRAIN_DIR / "ISIC_0000002.jpg"
    dh.rewrite(img, (isic_root / dh.TRAIN_DIR / "ISIC_0000001.jpg").read_bytes())
    fp2 = load_dataset(isic_root).fingerprint()
    assert fp2 != fp
    dh.rewrite(isic_root / dh.TEST_DIR / "ISIC_0000010_Segmentation.png")  # mtime only
    assert load_dataset(isic_root).fingerprint() not in (fp, fp2)


def test_fingerprint_changes_when_a_label_changes(isic_root, dh):
    fp = load_dataset(isic_root).fingerprint()
    csv = isic_root / dh.TRAIN_CSV
    csv.write_text(csv.read_text().replace("ISIC_0000000,benign", "ISIC_0000000,malignant"))
    assert load_dataset(isic_root).fingerprint() != fp


# ---------------------------------------------------------------------------
# CSV robustness (the files that must parse)
# ---------------------------------------------------------------------------


def test_csv_with_bom_crlf_and_extra_columns_parses(make_generic, make_isic, dh):
    labels = dh.generic_labels(3, 2)
    root = make_generic(labels, split={i: "train" for i in labels}, extra_columns=True)
    csv = root / "labels.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_text().replace("\n", "\r\n").encode())
    ds = load_dataset(root)
    assert {s.image_id: s.label for s in ds.samples} == labels

    iroot = make_isic()
    tcsv = iroot / dh.TRAIN_CSV
    tcsv.write_bytes(b"\xef\xbb\xbf" + tcsv.read_text().replace("\n", ",extra\r\n").encode())
    ids = {s.image_id: s.label for s in load_dataset(iroot).split("train")}
    assert ids == dh.ISIC_TRAIN


def test_labels_are_case_and_space_insensitive(make_generic):
    root = make_generic({"a": "  Benign ", "b": "MALIGNANT", "c": "0", "d": "1.0"},
                        split={"a": "train", "b": "train", "c": "Test", "d": "TEST"})
    ds = load_dataset(root)
    assert {s.image_id: (s.label, s.split) for s in ds.samples} == {
        "a": (0, "train"), "b": (1, "train"), "c": (0, "test"), "d": (1, "test")}


def test_empty_training_split_is_reported(make_isic, dh):
    root = make_isic()
    (root / dh.TRAIN_CSV).write_text("")
    ds = load_dataset(root)
    assert ds.split("train") == [] and len(ds.split("test")) == 3
    assert any("train" in n and "no images" in n for n in ds.notes)
    d = describe(root)
    assert d["splits"]["train"]["n"] == 0 and d["splits"]["test"]["n"] == 3


def test_describe_counts_per_split_and_class(isic_root):
    d = describe(isic_root, check=True)
    assert d["layout"] == "isic2016"
    assert d["splits"]["train"] | {"mean_lesion_area": None} == {
        "n": 5, "benign": 3, "malignant": 2, "with_mask": 5, "mean_lesion_area": None}
    assert d["splits"]["test"]["n"] == 3 and d["splits"]["test"]["malignant"] == 1
    # --check measures the mask area: a 14 x 20 box in 30 x 40 px
    assert d["splits"]["train"]["mean_lesion_area"] == pytest.approx(14 * 20 / (30 * 40))
    assert d["image_sizes"] == "40x30 (8)"


# ---------------------------------------------------------------------------
# Images: every mode becomes (H, W, 3) uint8
# ---------------------------------------------------------------------------


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_png_and_jpeg_become_rgb(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))  # (6, 25)
    out = read_image(_save(Image.fromarray(g, "L"), tmp_path / "g.png"))
    assert out.shape == (6, 25, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, axis=2))
    flat = np.full((16, 24), 77, np.uint8)
    j = read_image(_save(Image.fromarray(flat, "L"), tmp_path / "g.jpg", quality=95))
    assert j.shape == (16, 24, 3) and np.abs(j.astype(int) - 77).max() <= 2


def test_rgba_is_flattened_keeping_opaque_colours(tmp_path):
    a = np.zeros((5, 7, 4), np.uint8)
    a[...] = (10, 20, 30, 255)
    out = read_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert (out == (10, 20, 30)).all()


def test_palette_png_maps_through_its_palette(tmp_path):
    p = Image.new("P", (6, 4), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    p.paste(1, (0, 0, 3, 4))  # left half: index 1 (green)
    out = read_image(_save(p, tmp_path / "p.png"))
    assert out.shape == (4, 6, 3)
    assert (out[:, :3] == (0, 255, 0)).all() and (out[:, 3:] == (255, 0, 0)).all()


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 128, 65535, 257 * 10]], np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "d.png")
    assert Image.open(path).mode.startswith("I")  # really stored as 16 bit
    out = read_image(path)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 10])


def test_bilevel_png_becomes_0_or_255(tmp_path):
    b = Image.new("1", (4, 2), 0)
    b.putpixel((1, 0), 1)
    out = read_image(_save(b, tmp_path / "b.png"))
    assert out.shape == (2, 4, 3) and out[0, 1].tolist() == [255] * 3 and out[1].max() == 0


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 means 'rotate 90 degrees clockwise to display'."""
    a = np.zeros((30, 40, 3), np.uint8)
    a[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(a), tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 30, 3)  # width and height swapped
    assert out[:10, -10:, 0].mean() > 200 and out[:10, :10, 0].mean() < 50  # now top-right
    # the cache sees the displayed size too: a mask drawn on the displayed image fits
    from dermcam.data import Sample

    mask = np.zeros((40, 30), np.uint8)
    mask[:10, -10:] = 255
    Image.fromarray(mask).save(tmp_path / "rot_mask.png")
    item = decode_sample(Sample("rot", path, 0, "train", tmp_path / "rot_mask.png"), 20)
    assert item["image"].shape == (20, 20, 3) and item["mask"][:5, -5:].all()


# ---------------------------------------------------------------------------
# Masks: (H, W) bool
# ---------------------------------------------------------------------------


def test_antialiased_mask_is_thresholded_at_128(tmp_path):
    vals = np.array([[0, 1, 100, 127, 128, 200, 255]], np.uint8)
    m = read_mask(_save(Image.fromarray(vals), tmp_path / "m.png"))
    assert m.dtype == bool
    assert m[0].tolist() == [False, False, False, False, True, True, True]


def test_three_channel_and_01_and_16bit_masks(tmp_path, dh):
    want = dh.lesion_mask() > 0
    rgb = np.repeat(dh.lesion_mask()[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(_save(Image.fromarray(rgb), tmp_path / "c.png")),
                                  want)
    ones = (dh.lesion_mask() // 255).astype(np.uint8)  # values 0/1
    np.testing.assert_array_equal(read_mask(_save(Image.fromarray(ones), tmp_path / "o.png")),
                                  want)
    wide = dh.lesion_mask().astype(np.uint16) * 257  # 0/65535
    np.testing.assert_array_equal(read_mask(_save(Image.fromarray(wide), tmp_path / "w.png")),
                                  want)
    assert read_mask(tmp_path / "c.png").shape == (dh.H, dh.W)


def test_mask_to_bool_rejects_a_bad_shape():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        mask_to_bool(np.zeros(4))


# ---------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------


def test_second_load_is_a_cache_hit_with_identical_arrays(isic_root, tmp_path):
    s = load_dataset(isic_root).split("train")[0]
    cache = ImageCache(tmp_path / "cache")
    first = cache.get(s, 16)
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1
    second = cache.get(s, 16)
    assert (cache.hits, cache.misses) == (1, 1)
    for k in ("image", "mask"):
        np.testing.assert_array_equal(first[k], second[k])
        assert first[k].dtype == second[k].dtype == np.uint8
    assert second["artifacts"] is None
    # another size is another entry
    assert cache.get(s, 8)["image"].shape == (8, 8, 3) and cache.misses == 2


def test_rewritten_source_invalidates_the_cache(isic_root, tmp_path, dh):
    s = load_dataset(isic_root).split("train")[0]
    cache = ImageCache(tmp_path / "cache")
    before = cache.get(s, 16)["image"]
    white = Image.new("RGB", (dh.W, dh.H), (255, 255, 255))
    white.save(s.image_path)
    dh.rewrite(s.image_path)  # and a later mtime, whatever the clock's resolution
    after = cache.get(s, 16)["image"]
    assert cache.misses == 2 and cache.hits == 0
    assert (after >= 250).all() and not np.array_equal(before, after)


def test_cached_mask_stays_binary_and_in_place(isic_root, tmp_path, dh):
    s = load_dataset(isic_root).split("train")[0]
    mask = ImageCache(tmp_path / "cache").get(s, 20)["mask"]
    assert mask.shape == (20, 20) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    # the lesion box covers rows 8..21 of 30 and columns 10..29 of 40
    assert mask[10, 10] == 1 and mask[0, 0] == 0 and mask[19, 19] == 0
    assert mask.mean() == pytest.approx(14 * 20 / (30 * 40), abs=0.06)


@pytest.mark.parametrize("damage", [b"not a zip file at all", b"PK\x03\x04truncated"])
def test_corrupted_cache_entry_is_rebuilt(isic_root, tmp_path, damage):
    s = load_dataset(isic_root).split("train")[1]
    cache = ImageCache(tmp_path / "cache")
    good = cache.get(s, 16)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    entry.write_bytes(damage)
    rebuilt = cache.get(s, 16)
    assert cache.misses == 2 and cache.hits == 0
    np.testing.assert_array_equal(rebuilt["image"], good["image"])
    cache.get(s, 16)  # the entry was written again and is good
    assert cache.hits == 1


def test_cache_entry_missing_its_image_is_rebuilt(isic_root, tmp_path):
    s = load_dataset(isic_root).split("train")[1]
    cache = ImageCache(tmp_path / "cache")
    good = cache.get(s, 16)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    with open(entry, "wb") as fh:
        np.savez(fh, mask=good["mask"])  # a readable archive with the wrong contents
    np.testing.assert_array_equal(cache.get(s, 16)["image"], good["image"])
    assert cache.misses == 2


def test_disabled_cache_writes_nothing(isic_root, tmp_path):
    s = load_dataset(isic_root).split("test")[0]
    cache = ImageCache(tmp_path / "cache", enabled=False)
    cache.get(s, 16)
    cache.get(s, 16)
    assert cache.misses == 2 and not (tmp_path / "cache").exists()


def test_load_arrays_shapes_and_labels(isic_root, tmp_path, dh):
    ds = load_dataset(isic_root)
    train = ds.split("train")
    cache = ImageCache(tmp_path / "cache")
    seen = []
    arr = load_arrays(train, 12, cache, progress=lambda d, n: seen.append((d, n)), workers=2)
    assert len(arr) == 5 and arr.ids == [s.image_id for s in train]
    assert arr.images.shape == (5, 12, 12, 3) and arr.images.dtype == np.uint8
    assert arr.masks.shape == (5, 12, 12) and set(np.unique(arr.masks)) <= {0, 1}
    assert arr.labels.dtype == np.int64
    assert arr.labels.tolist() == [dh.ISIC_TRAIN[i] for i in arr.ids]
    assert arr.artifacts is None and seen[-1] == (5, 5)
    again = load_arrays(train, 12, cache, workers=1)
    assert cache.hits == 5
    np.testing.assert_array_equal(again.images, arr.images)


def test_load_arrays_drops_masks_unless_every_sample_has_one(isic_root, dh):
    (isic_root / dh.TRAIN_DIR / "ISIC_0000000_Segmentation.png").unlink()
    arr = load_arrays(load_dataset(isic_root).split("train"), 8)
    assert arr.masks is None and arr.images.shape == (5, 8, 8, 3)


def test_big_jpeg_is_draft_decoded_and_still_checked_against_its_full_size_mask(tmp_path, dh):
    from dermcam.data import Sample

    big = (400, 300)
    img = dh.write_image(tmp_path / "big.jpg", 1, size=big)
    dh.write_mask(tmp_path / "big_mask.png", size=big)  # the lesion box scaled 10x
    item = decode_sample(Sample("big", img, 1, "train", tmp_path / "big_mask.png"), 20)
    assert item["image"].shape == (20, 20, 3) and item["mask"].shape == (20, 20)
    assert item["mask"].mean() == pytest.approx(14 * 20 / (30 * 40), abs=0.06)
    # the lesion is dark, the skin bright: the decoded image agrees with the mask
    lum = item["image"].mean(axis=2)
    assert lum[item["mask"] == 1].mean() < 100 < lum[item["mask"] == 0].mean()
    dh.write_mask(tmp_path / "small_mask.png")  # 40 x 30: the draft size must not fool it
    with pytest.raises(DermcamError, match="mask is 40x30 but its image is 400x300") as e:
        decode_sample(Sample("big", img, 1, "train", tmp_path / "small_mask.png"), 20)
    assert e.value.path == str(tmp_path / "small_mask.png")


def test_grayscale_jpeg_through_the_cache(tmp_path):
    from dermcam.data import Sample

    Image.fromarray(np.full((60, 80), 90, np.uint8), "L").save(tmp_path / "g.jpg")
    item = decode_sample(Sample("g", tmp_path / "g.jpg", 0, "train"), 16)
    assert item["image"].shape == (16, 16, 3) and abs(int(item["image"].mean()) - 90) <= 2
    assert item["mask"] is None and item["artifacts"] is None


def test_artifact_map_is_decoded_and_a_bad_one_named(tmp_path, dh):
    from dermcam.data import Sample

    img = dh.write_image(tmp_path / "a.jpg")
    codes = np.zeros((dh.H, dh.W), np.uint8)
    codes[:, :20] = 3
    Image.fromarray(codes).save(tmp_path / "a_Artifacts.png")
    s = Sample("a", img, 0, "train", None, tmp_path / "a_Artifacts.png")
    arts = decode_sample(s, 8)["artifacts"]
    assert arts.shape == (8, 8) and set(np.unique(arts)) == {0, 3} and (arts[:, :3] == 3).all()
    (tmp_path / "a_Artifacts.png").write_bytes(b"not a png")
    with pytest.raises(DermcamError) as e:
        decode_sample(s, 8)
    assert e.value.path == str(tmp_path / "a_Artifacts.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_threaded_load_refuses_images_over_the_pixel_limit(isic_root, monkeypatch):
    import warnings

    filters = list(warnings.filters)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # each image is 1200 px (< 2x)
    with pytest.raises(DermcamError, match="decompression bomb"):
        load_arrays(load_dataset(isic_root).samples, 8, workers=4)
    assert list(warnings.filters) == filters  # decoding leaves the warning filters alone
