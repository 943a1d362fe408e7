"""Test helpers: tiny data sets written into a folder in each supported layout, and the CLI.

A plain module (``from helpers import write_image``); the fixtures that hand these to
tests live in ``conftest.py``, which imports them from here.

``write_isic`` writes the ISIC 2016 Part 3B layout (both ground-truth dialects);
``write_generic`` writes the generic ``labels.csv`` layout. Images are 40x30 px
(W x H) with a dark lesion box whose mask is stored beside them, so every
answer a test checks (labels, splits, mask pixels) is known in advance.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermcam import cli

W, H = 40, 30  # image size as PIL writes it: (width, height)
LESION = (slice(8, 22), slice(10, 30))  # rows, columns of the lesion box

ISIC_TRAIN_DIR = "ISBI2016_ISIC_Part3B_Training_Data"
ISIC_TEST_DIR = "ISBI2016_ISIC_Part3B_Test_Data"
ISIC_TRAIN_CSV = "ISBI2016_ISIC_Part3B_Training_GroundTruth.csv"
ISIC_TEST_CSV = "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv"

# id -> label (0 benign, 1 malignant): 3 + 2 training images, 2 + 1 test images.
ISIC_TRAIN = {"ISIC_0000000": 0, "ISIC_0000001": 1, "ISIC_0000002": 0,
              "ISIC_0000003": 1, "ISIC_0000004": 0}
ISIC_TEST = {"ISIC_0000010": 0, "ISIC_0000011": 1, "ISIC_0000012": 0}


def _box(size: tuple[int, int]) -> tuple[slice, slice]:
    """:data:`LESION` scaled from 40 x 30 px to ``size`` (W, H)."""
    fx, fy = size[0] // W, size[1] // H
    if (fx * W, fy * H) != tuple(size):
        return LESION
    r, c = LESION
    return slice(r.start * fy, r.stop * fy), slice(c.start * fx, c.stop * fx)


def lesion_image(label: int, size: tuple[int, int] = (W, H), seed: int = 0) -> np.ndarray:
    """``(H, W, 3) uint8``: skin-coloured background, a dark box where the lesion is.

    The box is :data:`LESION`, scaled when ``size`` is a multiple of 40 x 30.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (200, 160, 140)
    img += rng.integers(0, 10, img.shape, dtype=np.uint8)
    img[_box(size)] = (120, 40, 30) if label else (90, 60, 40)
    return img


def lesion_mask(size: tuple[int, int] = (W, H)) -> np.ndarray:
    """``(H, W) uint8`` in {0, 255}, 255 on the lesion box (scaled like the image's)."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    m[_box(size)] = 255
    return m


def write_image(path: Path, label: int = 0, size: tuple[int, int] = (W, H), seed: int = 0
                ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_image(label, size, seed)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(lesion_mask(size)).save(path)
    return path


def write_isic(root: Path, train: dict[str, int], test: dict[str, int], masks: bool,
                header: bool, ext: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for folder, csv_name, rows, names in (
            (ISIC_TRAIN_DIR, ISIC_TRAIN_CSV, train, ("benign", "malignant")),
            (ISIC_TEST_DIR, ISIC_TEST_CSV, test, ("0.0", "1.0"))):
        (root / folder).mkdir(exist_ok=True)
        lines = ["image_id,label"] if header else []
        for k, (image_id, label) in enumerate(rows.items()):
            write_image(root / folder / f"{image_id}{ext}", label, seed=k)
            if masks:
                write_mask(root / folder / f"{image_id}_Segmentation.png")
            lines.append(f"{image_id},{names[label]}")
        (root / csv_name).write_text("".join(line + "\n" for line in lines))
    return root


def write_generic(root: Path, labels: dict[str, int | str], split: dict[str, str] | None,
                   masks: bool | str, extra_columns: bool, ext: str) -> Path:
    """``masks``: False, True (files in ``masks/``) or ``"column"`` (paths in a mask column)."""
    root.mkdir(parents=True, exist_ok=True)
    header = ["image_id", "label"]
    if masks == "column":
        header.append("mask")
    if split is not None:
        header.append("split")
    if extra_columns:
        header.append("age")
    lines = [",".join(header)]
    for k, (image_id, label) in enumerate(labels.items()):
        lab = label if isinstance(label, int) else int(label == "malignant")
        write_image(root / "images" / f"{image_id}{ext}", lab, seed=k)
        row = [image_id, str(label)]
        if masks is True:
            write_mask(root / "masks" / f"{image_id}.png")
        elif masks == "column":
            write_mask(root / "segmentations" / f"{image_id}_seg.png")
            row.append(f"segmentations/{image_id}_seg.png")
        if split is not None:
            row.append(split[image_id])
        if extra_columns:
            row.append(str(40 + k))
        lines.append(",".join(row))
    (root / "labels.csv").write_text("".join(line + "\n" for line in lines))
    return root


def generic_labels(n_benign: int, n_malignant: int, prefix: str = "img") -> dict[str, int]:
    ids = [f"{prefix}{i:03d}" for i in range(n_benign + n_malignant)]
    return {i: int(k >= n_benign) for k, i in enumerate(ids)}


def rewrite(path: Path, data: bytes | None = None, mtime_step_s: float = 10.0) -> None:
    """Replace a file's bytes (if given) and move its mtime forward by ``mtime_step_s``."""
    st = path.stat()
    if data is not None:
        path.write_bytes(data)
    t = st.st_mtime_ns + int(mtime_step_s * 1e9)
    os.utime(path, ns=(t, t))


def ids_of(samples: Sequence) -> list[str]:
    return sorted(s.image_id for s in samples)


def invoke_cli(monkeypatch, capsys, *args):
    """``dermcam -q ARGS`` through the console entry in this process: ``(exit code,
    stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["dermcam", "-q", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def trained_run_without_images(monkeypatch, folder: Path, size: int) -> Path:
    """A run folder whose manifest says one model was trained and nothing else ran, with
    an empty test split of ``size`` px: for refusals the probe stage must make before it
    looks at an image."""
    import dataclasses
    import json

    from dermcam import run as runmod
    from dermcam.audit_set import AuditSet

    class NoImages(AuditSet):  # keyed to a stage without a look at its (no) images
        def at(self, stage, **kw):
            return dataclasses.replace(self, stage=self.key(stage))

    monkeypatch.setattr(AuditSet, "open", classmethod(
        lambda cls, run, data=None, **kw: NoImages(type("D", (), {"root": folder})(), [], size,
                                                   None, run.outputs, "")))
    (folder / runmod.MANIFEST).write_text(json.dumps({
        "schema_version": runmod.SCHEMA_VERSION, "kind": "dermcam-run",
        "config": {"models": ["resnet18"], "seed": 0},
        "models": {"resnet18": {"status": "complete"}},
        "stages": {"train": {"status": "complete"}}}))
    return folder


def reads_the_top_rows(gain: float):
    """A model with z1 - z0 = gain x (mean red of the top 3 rows, normalised): P(malignant)
    rises with a red band there (the 'artifact'); gain 0 ignores everything."""
    import torch

    class ReadsTheTopRows(torch.nn.Module):
        def forward(self, x):
            z = gain * x[:, 0, :3, :].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(z), z], dim=1)

    return ReadsTheTopRows()


def easy_generic(root, n=60, size=24, seed=0):
    """Generic layout where malignant lesions are dark blobs, benign ones pale: easy."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image_id,label,split"]
    for i in range(n):
        label = int(i % 4 == 0)
        split = "test" if i % 3 == 0 else "train"
        img = np.full((size, size, 3), 200, np.uint8) + rng.integers(0, 20, (size, size, 3),
                                                                     dtype=np.uint8)
        yy, xx = np.mgrid[:size, :size]
        r = rng.uniform(4, 7)
        cy, cx = rng.uniform(8, size - 8, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img[mask] = (40, 20, 10) if label else (170, 120, 90)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{'malignant' if label else 'benign'},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_code_pickle(path: Path, marker: Path) -> Path:
    """A pickle that would create ``marker`` if unpickled: for the refusals that must not
    run code."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    return path
