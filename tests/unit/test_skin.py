"""ITA from the image: CIELAB conversion against published values and OpenCV, and ITA of
synthetic skin of known colour (within 0.5 degrees) despite a lesion, vignette and glare."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dermcam import skin

# Published sRGB (8-bit) -> CIELAB (D65) values (Bruce Lindbloom's calculator, rounded).
LAB_CASES = [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.24, 80.09, 67.20)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
]


@pytest.mark.parametrize("rgb,lab", LAB_CASES)
def test_lab_matches_published_values(rgb, lab):
    got = skin.srgb_to_lab(np.array(rgb, np.uint8))
    np.testing.assert_allclose(got, lab, atol=0.1)


def test_lab_matches_opencv_on_float_input():
    cv2 = pytest.importorskip("cv2")
    rgb = np.random.default_rng(0).integers(0, 256, (200, 1, 3)).astype(np.uint8)
    ref = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    # OpenCV interpolates the sRGB curve; agreement to a quarter of a Lab unit
    np.testing.assert_allclose(skin.srgb_to_lab(rgb), ref, atol=0.3)


def _expected_ita(rgb) -> float:
    L, _, b = skin.srgb_to_lab(np.array(rgb, np.uint8))
    return math.degrees(math.atan((L - 50) / b))


# (skin colour, category): light to dark skin tones
SKIN_CASES = [((246, 226, 212), "very light"), ((215, 175, 145), "light"),
              ((205, 160, 125), "intermediate"), ((190, 140, 100), "tan"),
              ((140, 90, 60), "brown"), ((70, 45, 30), "dark")]


def _dermoscopy_like(rgb, size=64, seed=0, lesion_radius=0.2):
    """Skin of colour ``rgb`` with noise, a dark lesion (masked), black vignette corners and
    white glare spots: only the skin should count."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.int16)
    img[:] = rgb
    img += rng.integers(-3, 4, img.shape, dtype=np.int16)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    lesion = r < size * lesion_radius
    img[lesion] = (60, 30, 20)
    img[r > size * 0.55] = (5, 5, 5)  # vignette corners
    img[2:5, size // 2: size // 2 + 3] = 255  # glare
    return np.clip(img, 0, 255).astype(np.uint8), lesion.astype(np.uint8)


@pytest.mark.parametrize("rgb,category", SKIN_CASES)
def test_ita_of_known_skin_colour(rgb, category):
    img, mask = _dermoscopy_like(rgb)
    expected = _expected_ita(rgb)
    got = skin.ita(img, mask)
    assert abs(got - expected) < 0.5, (got, expected)
    assert skin.ita_category(got) == category


def test_without_a_mask_a_large_lesion_biases_the_estimate():
    rgb = (215, 175, 145)
    img, mask = _dermoscopy_like(rgb, lesion_radius=0.42)  # over half of the image
    expected = _expected_ita(rgb)
    assert abs(skin.ita(img, mask) - expected) < 0.5
    assert abs(skin.ita(img, None) - expected) > 5  # the lesion is taken for skin


def test_category_boundaries_and_undefined():
    cases = [(55.01, "very light"), (55.0, "light"), (41.0, "intermediate"),
             (28.0, "tan"), (10.0, "brown"), (-30.0, "dark"), (-29.9, "brown")]
    for angle, name in cases:
        assert skin.ita_category(angle) == name, angle
    assert skin.ita_category(math.nan) == ""
    black = np.zeros((16, 16, 3), np.uint8)
    angle, why = skin.ita_with_reason(black)
    assert math.isnan(angle) and why == "too little skin"
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        skin.ita(np.zeros((4, 4), np.uint8))
