"""dermcam.overlay: the jet colour map and the mask outline, on hand-computed arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dermcam.overlay import jet, outline


@pytest.mark.parametrize(
    ("x", "rgb"),
    [
        (0.0, [0.0, 0.0, 0.5]),  # dark blue
        (0.25, [0.0, 0.5, 1.0]),
        (0.5, [0.5, 1.0, 0.5]),
        (0.75, [1.0, 0.5, 0.0]),
        (1.0, [0.5, 0.0, 0.0]),  # dark red
        (0.125, [0.0, 0.0, 1.0]),  # pure blue
        (0.875, [1.0, 0.0, 0.0]),  # pure red
    ],
)
def test_jet_known_colours(x, rgb):
    np.testing.assert_allclose(jet(np.array(x)), rgb, atol=1e-12)


def test_jet_shape_and_range():
    x = np.linspace(-0.5, 1.5, 24).reshape(4, 6)
    out = jet(x)
    assert out.shape == (4, 6, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[1, 2], jet(np.array(x[1, 2])))  # per-pixel, no mixing


def test_outline_of_a_square_is_its_border_ring():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    expected[2:5, 2:5] = False  # the 3 x 3 interior is not on the boundary
    np.testing.assert_array_equal(outline(mask), expected)
    assert outline(mask).sum() == 16


def test_outline_image_edge_counts_as_inside():
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    expected = np.zeros((4, 4), bool)
    expected[:, 1] = True  # only the column next to the background; column 0 is on the edge
    np.testing.assert_array_equal(outline(left), expected)
    assert not outline(np.ones((3, 3), bool)).any()
    assert not outline(np.zeros((3, 3), bool)).any()


def test_outline_single_pixel_and_integer_mask():
    one = np.zeros((3, 3), int)
    one[1, 1] = 1
    out = outline(one)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, one.astype(bool))


def test_outline_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 3\)"):
        outline(np.zeros((2, 3, 3), bool))


def test_callers_share_the_one_helper():
    from dermcam import overlay, pictures, predict

    for module in (predict, pictures):
        assert module.jet is overlay.jet and module.outline is overlay.outline
        assert not hasattr(module, "_jet") and not hasattr(module, "_outline")


def test_import_is_light():
    code = ("import sys, dermcam, dermcam.overlay; "
            "heavy = [m for m in ('matplotlib', 'PIL', 'torch', 'pandas') if m in sys.modules]; "
            "sys.exit(str(heavy) if heavy else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
