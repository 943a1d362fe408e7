"""Images that occur in two data sets: exact copies (SHA-256 of the file) and
near-duplicates (a 64-bit DCT pHash within :data:`NEAR_DISTANCE` bits; unrelated photos differ in
about 32). ISIC releases overlap, so an external test set may hold training images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["NEAR_DISTANCE", "sha256_file", "phash", "hamming", "find_duplicates"]

#: Largest Hamming distance (of 64 bits) counted as a near-duplicate.
NEAR_DISTANCE = 6


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of ``image`` ``(H, W, 3)`` or ``(H, W)`` uint8."""
    from PIL import Image
    from scipy.fft import dctn

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 3:
        a = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    elif a.ndim != 2:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {a.shape}")
    small = np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
        (32, 32), Image.BILINEAR), dtype=np.float64)
    low = dctn(small, type=2, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return int(bin(int(a) ^ int(b)).count("1"))


def find_duplicates(query: Sequence[tuple[str, str, int]],
                    reference: Sequence[tuple[str, str, int]],
                    max_distance: int = NEAR_DISTANCE) -> dict[str, dict[str, object]]:
    """Match ``query`` against ``reference``; both are ``(image_id, sha256, phash)`` triples.

    Returns ``{query id: {"kind": "exact"|"near", "match": reference id, "distance":
    bits}}`` for every query image with a match (exact preferred, then the nearest).
    """
    by_sha = {}
    for rid, sha, _ in reference:
        by_sha.setdefault(sha, rid)
    ref_ids = [r[0] for r in reference]
    ref_hash = np.array([r[2] for r in reference], dtype=np.uint64)
    out: dict[str, dict[str, object]] = {}
    for qid, sha, h in query:
        if sha in by_sha:
            out[qid] = {"kind": "exact", "match": by_sha[sha], "distance": 0}
            continue
        if not ref_hash.size:
            continue
        x = np.bitwise_xor(ref_hash, np.uint64(h))
        dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        j = int(np.argmin(dist))
        if int(dist[j]) <= max_distance:
            out[qid] = {"kind": "near", "match": ref_ids[j], "distance": int(dist[j])}
    return out
