"""The context swap: a lesion's own pixels on other images' real surroundings, donors
matched on lesion size and position, and a model that reads an artifact in the
surroundings caught by it while a model that ignores the surroundings is not."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers import reads_the_top_rows, trained_run_without_images

from dermcam import perturb as pt
from dermcam.config import ProbeConfig
from dermcam.errors import DermcamError
from dermcam.probe_stats import crossed_diff_summary, crossed_side_means, mean_ci
from dermcam.stages import probe as pr

S = 32


def _disc(cy: float, cx: float, r: float, size: int = S) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_lesion_geometry_by_hand():
    m = np.zeros((10, 10), bool)
    m[2:4, 6:10] = True  # 8 pixels, rows 2-3, columns 6-9
    area, cy, cx = pt.lesion_geometry(m)
    assert area == 0.08 and cy == pytest.approx(2.5 / 10) and cx == pytest.approx(7.5 / 10)
    assert all(math.isnan(v) for v in pt.lesion_geometry(np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="2-D"):
        pt.lesion_geometry(np.zeros((2, 2, 2)))


def test_donors_are_the_nearest_in_size_and_position_never_the_image_itself():
    geometry = np.array([[0.20, 0.5, 0.5],    # 0: the receiver
                         [0.20, 0.5, 0.5],    # 1: identical
                         [0.40, 0.5, 0.5],    # 2: twice the area: log 2 = 0.69
                         [0.20, 0.9, 0.5],    # 3: moved 0.4
                         [0.10, 0.5, 0.5],    # 4: half the area: 0.69, ties with 2
                         [0.21, 0.5, 0.55]])  # 5: 0.049 + 0.05
    assert pt.match_donors(geometry, 0, np.arange(6), 3).tolist() == [1, 5, 3]
    assert pt.match_donors(geometry, 0, np.array([4, 2, 0]), 5).tolist() == [2, 4]
    assert pt.match_donors(geometry, 0, np.array([0]), 2).size == 0


def test_the_lesion_is_kept_exactly_and_the_surroundings_are_the_donors():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    canvas = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    mask = _disc(16, 16, 6)
    out = pt.swap_context(image, mask, canvas, feather=0.1)
    assert (out[mask] == image[mask]).all()  # every lesion pixel from the image
    far = ~pt.dilate_mask(mask, 0.2)  # beyond twice the feathered band: the donor's
    assert (out[far] == canvas[far]).all()
    band = pt.dilate_mask(mask, 0.1) & ~mask  # in between: a blend of the two
    lo = np.minimum(image[band], canvas[band]).astype(int)
    hi = np.maximum(image[band], canvas[band]).astype(int)
    assert ((out[band] >= lo - 1) & (out[band] <= hi + 1)).all()
    with pytest.raises(ValueError, match="canvas must be"):
        pt.swap_context(image, mask, canvas[:8])


def test_skin_ring_is_the_mean_colour_just_outside_the_lesion():
    import cv2

    image = np.zeros((S, S, 3), np.uint8)
    mask = _disc(16, 16, 5)
    ring = pt.dilate_mask(mask, 6 / S) & ~pt.dilate_mask(mask, 1 / S)
    image[ring] = (200, 120, 90)  # the ring: one skin colour; beyond it and inside: black
    want = cv2.cvtColor(np.array([[[200, 120, 90]]], np.uint8), cv2.COLOR_RGB2LAB)[0, 0]
    assert np.allclose(pt.skin_ring(image, mask, feather=1 / S), want)


def test_donors_with_the_same_geometry_are_ranked_by_skin_colour():
    geometry = np.array([[0.1, 0.5, 0.5, 150, 140, 140],
                         [0.1, 0.5, 0.5, 110, 140, 140],  # 40 units darker
                         [0.1, 0.5, 0.5, 155, 138, 140],  # closest in colour
                         [0.1, 0.5, 0.5, 150, 160, 140]])
    assert pt.match_donors(geometry, 0, np.arange(4), 3).tolist() == [2, 3, 1]
    # a factor e in area weighs as much as COLOUR_SCALE colour units
    geometry[2, 0] = 0.1 * np.e
    assert pt.match_donors(geometry, 0, np.arange(4), 3).tolist() == [3, 2, 1]


def test_the_donor_canvas_loses_its_own_lesion_and_keeps_the_rest():
    donor = np.full((S, S, 3), 200, np.uint8)
    dmask = _disc(10, 10, 4)
    donor[dmask] = 30  # a dark lesion on light skin
    canvas = pt.swap_canvas(donor, dmask, feather=0.05)
    outside = ~pt.dilate_mask(dmask, 0.05)
    assert (canvas[outside] == donor[outside]).all()
    assert canvas[dmask].mean() > 150  # filled from the skin around it


def _set(n: int = 16):
    """``n`` images, lesion at the centre; the first half carry a red band in the top rows
    (outside every lesion)."""
    rng = np.random.default_rng(1)
    images = np.full((n, S, S, 3), 180, np.uint8)
    images += rng.integers(0, 20, images.shape, dtype=np.uint8)
    masks = np.stack([_disc(16 + rng.integers(-2, 3), 16, 5 + rng.integers(0, 3))
                      for _ in range(n)])
    images[masks] = 60
    has = np.arange(n) < n // 2
    images[has, :3, :, 0], images[has, :3, :, 1:] = 255, 0
    flags = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)],
                          "artifact_ruler": has.astype(float)})
    labels = np.arange(n) % 2
    return images, masks, labels, flags


def test_a_model_that_reads_the_artifact_is_caught_and_one_that_does_not_is_not():
    images, masks, labels, flags = _set()
    # thresholds: P(malignant) of the plain images is sigmoid(~1.1) = 0.75 under "reads"
    models = [("reads", reads_the_top_rows(1.0), 0.8), ("blind", reads_the_top_rows(0.0), 0.5)]
    got = {e["model"]: e for e in pr.context_swap(models, images, masks, labels, flags, k=3,
                                                  n_boot=200, seed=0)}
    reads, blind = got["reads"], got["blind"]
    assert reads["artifact"] == "ruler" and reads["n"] == 16 and reads["k"] == 3
    assert reads["delta_ci_low"] > pr.NEGLIGIBLE_DELTA  # reliance beyond the margin
    assert abs(reads["control_mean"]) < pr.NEGLIGIBLE_DELTA  # the null swap moves nothing
    assert reads["flip_to_malignant"] > 0.5
    assert blind["delta_mean"] == 0 and blind["control_mean"] == 0
    assert blind["delta_ci_low"] == blind["delta_ci_high"] == 0
    # per class: n of each, and the pooled mean is their weighted mean
    nb, nm = reads["n_benign"], reads["n_malignant"]
    assert nb + nm == 16
    assert reads["delta_mean"] == pytest.approx(
        (nb * reads["delta_benign"] + nm * reads["delta_malignant"]) / 16)


def test_an_artifact_on_too_few_images_is_left_out():
    images, masks, labels, flags = _set()
    flags["artifact_ruler"] = (np.arange(16) < 2).astype(float)
    assert pr.context_swap([("m", reads_the_top_rows(1.0), 0.5)], images, masks, labels, flags,
                           k=3, n_boot=50) == []


def test_the_swap_is_refused_without_artifact_labels_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(pr, "artifact_flags", lambda ds, samples: None)
    trained_run_without_images(monkeypatch, tmp_path, S)
    with pytest.raises(DermcamError, match="--artifact-labels FILE") as e:
        pr.run_probe(tmp_path, ProbeConfig(probes=("context_swap",), seed=0))
    assert "\n" not in str(e.value)


def _design(n_images: int, score):
    """Every image scored on every other image: donors 0..n/2-1 are side 0 ("with"), the
    rest side 1 ("without"); ``score(i, j)`` is image i's score on donor j."""
    rows = [(i, j, int(j >= n_images // 2), score(i, j))
            for i in range(n_images) for j in range(n_images) if j != i]
    owner, donor, side, p = (np.array(c) for c in zip(*rows, strict=True))
    return owner, donor, side, p.astype(np.float64)


def _crossed(owner, donor, side, p, labels, n_boot):
    """Side 0 minus side 1, as the swap summarises its sides."""
    means, w_image = crossed_side_means(owner, donor, side, p, len(labels), n_boot, 0)
    return crossed_diff_summary(means, w_image, labels, 0, 1)


def test_crossed_ci_point_estimates_are_the_per_image_means_by_hand():
    rng = np.random.default_rng(0)
    table = rng.random((12, 12))
    labels = np.arange(12) % 3 == 0
    owner, donor, side, p = _design(12, lambda i, j: table[i, j])
    got = _crossed(owner, donor, side, p, labels.astype(int), 200)
    d = np.array([table[i, [j for j in range(6) if j != i]].mean()
                  - table[i, [j for j in range(6, 12) if j != i]].mean() for i in range(12)])
    assert got["delta_mean"] == pytest.approx(d.mean())
    assert got["delta_malignant"] == pytest.approx(d[labels].mean())
    assert got["delta_benign"] == pytest.approx(d[~labels].mean())
    assert (got["n"], got["n_malignant"], got["n_benign"]) == (12, 4, 8)
    assert got["delta_ci_low"] < got["delta_mean"] < got["delta_ci_high"]


def test_a_change_carried_by_the_donors_has_the_donors_spread_not_zero_width():
    """Every image gets the same change (the mean of the with-donors' own effects), so a CI
    over the scored images alone has width 0. The crossed CI resamples the donors too: its
    width is that of a mean of 100 donor effects, 2 x 1.96 x sd / sqrt(100)."""
    n = 200
    effect = np.random.default_rng(1).normal(0.05, 0.1, n)
    owner, donor, side, p = _design(n, lambda i, j: effect[j] if j < n // 2 else 0.0)
    got = _crossed(owner, donor, side, p, np.zeros(n, int), 2000)
    want = 2 * 1.96 * effect[: n // 2].std() / math.sqrt(n // 2)
    assert got["delta_ci_high"] - got["delta_ci_low"] == pytest.approx(want, rel=0.15)
    # resampling the images alone, as a CI over images would, claims ten times more
    half = effect[: n // 2]
    per_image = np.where(np.arange(n) < n // 2, (half.sum() - effect) / (n // 2 - 1),
                         half.mean())
    _, lo, hi = mean_ci(per_image, 2000, 0)
    assert hi - lo < (got["delta_ci_high"] - got["delta_ci_low"]) / 10


def test_a_change_that_does_not_depend_on_the_donor_has_the_images_spread():
    """The converse: each image's change is its own, whatever the donor; the crossed CI is
    then the plain bootstrap CI of the images' mean, 2 x 1.96 x sd / sqrt(n)."""
    n = 200
    own = np.random.default_rng(2).normal(0.03, 0.1, n)
    owner, donor, side, p = _design(n, lambda i, j: own[i] if j < n // 2 else 0.0)
    got = _crossed(owner, donor, side, p, np.zeros(n, int), 2000)
    assert got["delta_mean"] == pytest.approx(own.mean())
    want = 2 * 1.96 * own.std() / math.sqrt(n)
    assert got["delta_ci_high"] - got["delta_ci_low"] == pytest.approx(want, rel=0.15)
