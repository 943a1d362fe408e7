"""Heatmap batches: written and read by one pair of functions (dermcam.heatmap_files), and each
reader's policy for a damaged file (explain refuses in one line; the report's gallery
loses those cards only)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dermcam.errors import DermcamError
from dermcam.heatmap_files import (
    heatmap_batches,
    load_heatmaps,
    read_heatmap_batch,
    write_heatmap_batch,
)


def _write(folder, start, ids, rng):
    maps = rng.random((len(ids), 4, 4)).astype(np.float32)
    write_heatmap_batch(folder / f"batch_{start:06d}.npz", np.array(ids), maps,
                        probs=rng.random(len(ids)), targets=np.ones(len(ids), np.int64),
                        labels=np.zeros(len(ids), np.int64))
    return maps


def test_round_trip_float16_and_order(tmp_path):
    rng = np.random.default_rng(0)
    m0 = _write(tmp_path, 0, ["a", "b"], rng)
    m2 = _write(tmp_path, 2, ["c"], rng)
    assert [p.name for p in heatmap_batches(tmp_path)] == ["batch_000000.npz",
                                                            "batch_000002.npz"]
    b = read_heatmap_batch(tmp_path / "batch_000000.npz")
    assert b["heatmaps"].dtype == np.float16 and list(b["ids"]) == ["a", "b"]
    np.testing.assert_array_equal(b["heatmaps"], m0.astype(np.float16))
    got = load_heatmaps(tmp_path, {"a", "c"})
    assert set(got) == {"a", "c"} and got["c"].dtype == np.float32
    np.testing.assert_array_equal(got["c"], m2[0].astype(np.float16).astype(np.float32))


def test_damaged_batch_explain_refuses_gallery_skips(tmp_path, caplog):
    rng = np.random.default_rng(1)
    _write(tmp_path, 0, ["a"], rng)
    bad = tmp_path / "batch_000001.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DermcamError, match="unreadable heatmap file") as e:
        read_heatmap_batch(bad)
    assert str(bad) in str(e.value)
    with caplog.at_level(logging.WARNING):
        got = load_heatmaps(tmp_path, {"a", "z"})
    assert set(got) == {"a"} and "unreadable heatmap batch" in caplog.text
