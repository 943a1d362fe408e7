"""Exact and near-duplicate images: SHA-256 of the bytes, 64-bit DCT pHash."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermcam.duplicates import NEAR_DISTANCE, find_duplicates, hamming, phash, sha256_file


def _photo(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random image (sum of random low-frequency waves), unlike any other seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        fy, fx = rng.uniform(0.5, 4, 2)
        img += rng.uniform(20, 50, 3) * np.cos(2 * np.pi * (fy * yy + fx * xx)
                                                + rng.uniform(0, 6))[..., None]
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def _jpeg_roundtrip(img: np.ndarray, size: int, quality: int = 85) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).resize((size, size), Image.BILINEAR).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_phash_survives_resize_and_jpeg_but_separates_other_images():
    a = _photo(0)
    assert hamming(phash(a), phash(a)) == 0
    assert hamming(phash(a), phash(_jpeg_roundtrip(a, 64))) <= 2
    others = [hamming(phash(a), phash(_photo(s))) for s in range(1, 20)]
    assert min(others) > NEAR_DISTANCE
    assert 20 < np.mean(others) < 44  # about half of the 64 bits
    with pytest.raises(ValueError, match="shape"):
        phash(np.zeros((2, 2, 2, 2), np.uint8))


def test_hamming_known_values():
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2**64 - 1, 0) == 64


def test_find_duplicates_prefers_exact_then_nearest(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"same bytes")
    sha = sha256_file(p)
    assert sha == "58100dc8fc06562ce3e578231dc948e083520ee49c4b4ee5a5a28bb4b4003feb"
    ref = [("r1", sha, 0b1111), ("r2", "x" * 64, 0b0000), ("r3", "y" * 64, 2**63)]
    eight_bits = sum(2**k for k in range(40, 48))
    q = [("q1", sha, 2**62), ("q2", "z" * 64, 0b0001), ("q3", "w" * 64, eight_bits)]
    got = find_duplicates(q, ref, max_distance=6)
    assert got["q1"] == {"kind": "exact", "match": "r1", "distance": 0}
    assert got["q2"] == {"kind": "near", "match": "r2", "distance": 1}
    assert "q3" not in got  # 8 bits from r2
