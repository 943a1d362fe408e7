"""The heatmap-guided real-pixel probe's pieces: the off-lesion regions a heatmap marks,
random regions of the same shapes, and pixels moved between images exactly, never onto a
lesion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import reads_the_top_rows, trained_run_without_images

from dermcam import perturb as pt
from dermcam.config import ProbeConfig
from dermcam.stages import probe as pr

S = 40


def _disc(cy: float, cx: float, r: float, size: int = S) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_hot_regions_take_the_off_lesion_blob_with_most_mass_within_the_budget():
    mask = _disc(20, 20, 6)
    h = np.zeros((S, S), np.float32)
    h[mask] = 1.0  # the hottest pixels are on the lesion: never taken
    h[2:6, 2:8] = 0.9  # 24 px, off the lesion, more mass
    h[34:37, 30:35] = 0.5  # 15 px, less mass
    region = pt.hot_regions(h, mask, feather=0.05, top=0.2, budget=0.02, min_share=0.005)
    want = np.zeros((S, S), bool)
    want[2:6, 2:8] = True  # the budget (32 px) leaves no room for the second blob
    assert np.array_equal(region, want)
    both = pt.hot_regions(h, mask, feather=0.05, top=0.2, budget=0.05, min_share=0.005)
    assert both.sum() == 24 + 15 and not (both & pt.dilate_mask(mask, 0.1)).any()
    # speckle under min_share is left out; a flat map marks nothing
    assert pt.hot_regions(h, mask, feather=0.05, top=0.2, budget=0.05, min_share=0.02).sum() == 0
    assert not pt.hot_regions(np.ones((S, S)), mask).any()


def test_hot_regions_resize_a_coarser_heatmap_to_the_mask():
    mask = _disc(20, 20, 6)
    h = np.zeros((10, 10), np.float32)
    h[0, 0] = 1.0  # the top-left corner, off the lesion
    region = pt.hot_regions(h, mask, top=0.02, min_share=0.001)
    rows, cols = np.nonzero(region)
    assert region.any() and rows.max() < 8 and cols.max() < 8


def test_random_shifts_keep_every_shape_inside_the_allowed_area_and_apart():
    mask = _disc(20, 20, 8)
    region = np.zeros((S, S), bool)
    region[1:4, 1:6] = True
    region[30:38, 36:39] = True
    allowed = ~pt.dilate_mask(mask, 0.05)
    shifts = pt.random_shifts(region, allowed, np.random.default_rng(0))
    moved = pt.shift(region, shifts)
    assert moved.sum() == region.sum()
    assert (moved <= allowed).all() and not (moved & region).any()
    again = pt.shift(region, pt.random_shifts(region, allowed, np.random.default_rng(0)))
    assert np.array_equal(moved, again)  # seeded
    # no room: a region as large as the allowed area cannot move
    assert pt.random_shifts(allowed, allowed, np.random.default_rng(0)) is None


def test_transplant_copies_exact_pixels_in_place_or_from_a_shifted_read():
    rng = np.random.default_rng(3)
    source = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    region = np.zeros((S, S), bool)
    region[2:5, 3:9] = True
    region[30:33, 30:32] = True
    out = pt.transplant(source, target, region)
    assert (out[region] == source[region]).all() and (out[~region] == target[~region]).all()
    read = [(10, 1), (-20, -4)]  # component order: the upper one first
    out = pt.transplant(source, target, region, read=read)
    assert (out[2:5, 3:9] == source[12:15, 4:10]).all()
    assert (out[30:33, 30:32] == source[10:13, 26:28]).all()
    assert (out[~region] == target[~region]).all()
    with pytest.raises(ValueError, match="target must be"):
        pt.transplant(source, target[:5], region)


def test_hot_spots_catch_a_model_that_uses_what_its_maps_mark_and_name_the_source():
    n = 12
    rng = np.random.default_rng(0)
    images = (170 + rng.integers(0, 20, (n, S, S, 3))).astype(np.uint8)
    masks = np.stack([_disc(20, 20, 6)] * n)
    images[masks] = 60
    band = np.arange(n) < n // 2  # a red "ruler" along the top on half the images
    images[band, :3, :, 0], images[band, :3, :, 1:] = 255, 0
    maps = np.zeros((n, S, S), np.float32)
    maps[:, masks[0]] = 0.5  # on the lesion ...
    maps[band, :3, :] = 1.0  # ... and, where there is one, on the band
    maps[-1] = np.nan  # an image without a map is left out
    labels = np.arange(n) % 2
    flags = pd.DataFrame({"artifact_ruler": band.astype(float)})
    models = [("reads", reads_the_top_rows(1.0), 0.8), ("blind", reads_the_top_rows(0.0), 0.5)]
    got = {(e["model"], e["probe"]): e for e in pr.hot_spots(
        models, images, masks, labels, {"reads": maps, "blind": maps}, flags, k=3,
        n_boot=200, seed=0)}
    removed, pasted = got["reads", "hot_removed"], got["reads", "hot_transplanted"]
    assert removed["n"] == pasted["n"] == 6 and removed["images_with_maps"] == n - 1
    assert removed["delta_ci_high"] < -pr.NEGLIGIBLE_DELTA  # inpainting the band lowers P
    assert pasted["delta_ci_low"] > pr.NEGLIGIBLE_DELTA  # pasting it elsewhere raises P
    src = pasted["sources"]["ruler"]
    assert src["share"] == 1.0 and src["share_all"] == 0.5 and src["n_with"] == 6
    for probe in ("hot_removed", "hot_transplanted"):
        blind = got["blind", probe]
        assert blind["delta_mean"] == 0 and blind["delta_ci_low"] == blind["delta_ci_high"] == 0


def test_the_hot_spot_probe_is_refused_without_heatmaps_in_one_line(monkeypatch, tmp_path):
    from dermcam.errors import DermcamError

    trained_run_without_images(monkeypatch, tmp_path, S)
    with pytest.raises(DermcamError, match="run 'dermcam explain'") as e:
        pr.run_probe(tmp_path, ProbeConfig(probes=("hot_spots",), seed=0))
    assert "\n" not in str(e.value)
