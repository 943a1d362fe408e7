"""Tests for the synthetic dermoscopy benchmark (dermcam.data.synth).

Small sets only (tens of images at 32-64 px, in tmp_path); the whole file runs in seconds.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermcam.data.synth import (
    ARTIFACTS,
    PRESETS,
    SynthConfig,
    generate,
    render_sample,
    split_labels,
)
from dermcam.errors import DermcamError

TRAIN_DIR = "ISBI2016_ISIC_Part3B_Training_Data"
TEST_DIR = "ISBI2016_ISIC_Part3B_Test_Data"
TRAIN_CSV = "ISBI2016_ISIC_Part3B_Training_GroundTruth.csv"
TEST_CSV = "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv"
COLUMNS = ["image_id", "split", "label", "lesion_area", "artifact_ruler", "artifact_ink",
           "artifact_patch", "artifact_vignette", "artifact_hair", "asymmetry",
           "border_irregularity", "n_colours", "diameter_px"]

SMALL = dict(n_train=30, n_test=10, image_size=64, seed=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "small"
    return generate(out, SynthConfig(**SMALL), workers=2)


# ----------------------------------------------------------------------------- layout

def test_layout_and_csv_dialects(small):
    names = {p.name for p in small.iterdir()}
    assert names == {TRAIN_DIR, TEST_DIR, TRAIN_CSV, TEST_CSV, "metadata.csv", "synth.json"}

    train_lines = (small / TRAIN_CSV).read_text().splitlines()
    test_lines = (small / TEST_CSV).read_text().splitlines()
    assert len(train_lines) == 30 and len(test_lines) == 10
    assert all(re.fullmatch(r"ISIC_\d{7},(benign|malignant)", s) for s in train_lines)
    assert all(re.fullmatch(r"ISIC_\d{7},(0\.0|1\.0)", s) for s in test_lines)
    train_ids = [s.split(",")[0] for s in train_lines]
    test_ids = [s.split(",")[0] for s in test_lines]
    assert train_ids == [f"ISIC_{i:07d}" for i in range(30)]
    assert test_ids == [f"ISIC_{i:07d}" for i in range(30, 40)]  # numbering continues
    assert sum(s.endswith("malignant") for s in train_lines) == round(30 * 0.19)
    assert sum(s.endswith("1.0") for s in test_lines) == round(10 * 0.19)

    for folder, ids in ((TRAIN_DIR, train_ids), (TEST_DIR, test_ids)):
        files = sorted(p.name for p in (small / folder).iterdir())
        assert files == sorted(f"{i}{suffix}" for i in ids
                               for suffix in (".jpg", "_Segmentation.png", "_Artifacts.png"))
        for image_id in ids[:5]:
            img = Image.open(small / folder / f"{image_id}.jpg")
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
            mask = Image.open(small / folder / f"{image_id}_Segmentation.png")
            art = Image.open(small / folder / f"{image_id}_Artifacts.png")
            assert mask.mode == "L" and art.mode == "L" and mask.size == art.size == (64, 64)


def test_masks_binary_and_metadata_matches_files(small):
    rows = _metadata(small)
    with open(small / "metadata.csv", newline="") as fh:
        assert next(csv.reader(fh)) == COLUMNS
    labels = {}
    for line in (small / TRAIN_CSV).read_text().splitlines():
        i, lab = line.split(",")
        labels[i] = int(lab == "malignant")
    for line in (small / TEST_CSV).read_text().splitlines():
        i, lab = line.split(",")
        labels[i] = int(float(lab))
    assert [r["image_id"] for r in rows] == list(labels)

    for r in rows:
        folder = TRAIN_DIR if r["split"] == "train" else TEST_DIR
        assert r["split"] in ("train", "test") and int(r["label"]) == labels[r["image_id"]]
        mask = np.asarray(Image.open(small / folder / f"{r['image_id']}_Segmentation.png"))
        codes = np.asarray(Image.open(small / folder / f"{r['image_id']}_Artifacts.png"))
        assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        assert float(r["lesion_area"]) == np.count_nonzero(mask) / mask.size
        assert codes.max() <= len(ARTIFACTS)
        assert not codes[mask > 0].any(), "artifact pixels inside the lesion mask"
        for k, a in enumerate(ARTIFACTS):
            assert int(r[f"artifact_{a}"]) == int((codes == k + 1).any()), (r["image_id"], a)
        assert 1 <= int(r["n_colours"]) <= 6
        assert 0 < float(r["diameter_px"]) <= 64 * 2 ** 0.5 + 1


def test_synth_json_records_config_and_counts(small):
    info = json.loads((small / "synth.json").read_text())
    assert info["generator_version"]
    assert info["config"]["seed"] == 1 and info["config"]["preset"] == "clean"
    again = SynthConfig.from_dict(info["config"])
    assert again.rates() == SynthConfig(**SMALL).rates()
    assert (again.n_train, again.n_test, again.image_size, again.seed) == (30, 10, 64, 1)
    rows = _metadata(small)
    for a in ARTIFACTS:
        for cell, got in info["artifacts_realised"][a].items():
            split, lab = cell.split("/")
            sel = [r for r in rows if r["split"] == split and r["label"] == lab]
            assert got["n"] == len(sel)
            assert got["present"] == sum(int(r[f"artifact_{a}"]) for r in sel)
            assert got["present"] <= got["planted"] <= got["n"]


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_different_seed_differs(small, tmp_path):
    again = generate(tmp_path / "again", SynthConfig(**SMALL), workers=1)
    assert _files(again) == _files(small)  # byte-identical, whatever the worker count
    other = generate(tmp_path / "other", SynthConfig(**{**SMALL, "seed": 2}))
    a, b = _files(small), _files(other)
    assert a.keys() == b.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


def test_render_is_order_independent():
    cfg = SynthConfig(**SMALL)
    late = render_sample(cfg, "test", 7)
    for i in range(3):
        render_sample(cfg, "train", i)
    again = render_sample(cfg, "test", 7)
    assert np.array_equal(late.image, again.image) and np.array_equal(late.mask, again.mask)


def test_labels_exact_count_and_shuffled():
    cfg = SynthConfig(n_train=200, n_test=50, image_size=32, prevalence=0.19, seed=5)
    y = split_labels(cfg, "train")
    assert y.sum() == round(200 * 0.19) and set(np.unique(y)) == {0, 1}
    assert not np.array_equal(y, np.sort(y)[::-1])  # positions are shuffled
    assert split_labels(cfg, "test").sum() == round(50 * 0.19)


# ----------------------------------------------------------------------------- artifacts

def test_artifact_map_marks_exactly_the_changed_pixels():
    every = {a: 1.0 for a in ARTIFACTS}
    none = {a: 0.0 for a in ARTIFACTS}
    for i in range(6):
        with_art = render_sample(SynthConfig(**SMALL, artifact_rates=every), "train", i)
        plain = render_sample(SynthConfig(**SMALL, artifact_rates=none), "train", i)
        assert np.array_equal(with_art.mask, plain.mask)
        changed = (with_art.image != plain.image).any(-1)
        assert np.array_equal(changed, with_art.artifacts > 0)
        assert not with_art.artifacts[with_art.mask].any()
        assert not plain.artifacts.any()
        assert set(with_art.present) == set(ARTIFACTS), with_art.present


def test_later_artifact_wins_where_they_overlap():
    # vignette (code 4) darkens the corners over a ruler (code 1) near the edge
    cfg = SynthConfig(**SMALL, artifact_rates={a: float(a in ("ruler", "vignette"))
                                               for a in ARTIFACTS})
    for i in range(6):
        s = render_sample(cfg, "train", i)
        assert set(np.unique(s.artifacts)) <= {0, 1, 4}
        corners = s.artifacts[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == 4).any()


def test_clean_and_shortcut_share_skin_and_lesions():
    """Same seed: only the ruler draw differs, so images differ only on artifact pixels."""
    clean = SynthConfig.from_preset("clean", **SMALL)
    short = SynthConfig.from_preset("shortcut", **SMALL)
    for i in range(10):
        a, b = render_sample(clean, "train", i), render_sample(short, "train", i)
        assert np.array_equal(a.mask, b.mask)
        diff = (a.image != b.image).any(-1)
        assert not (diff & (a.artifacts == 0) & (b.artifacts == 0)).any()


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_reference_set_gives_the_same_bytes_with_fewer_renders(tmp_path, monkeypatch):
    """Shortcut data made from the clean set of the same seed: every file (images, CSVs,
    synth.json) equals a full render's, and only images whose planted artifacts differ
    are rendered; the rest are hard links to the reference's files."""
    import dermcam.data.synth as synth

    kw = dict(n_train=40, n_test=20, image_size=48, prevalence=0.3, seed=5)
    clean = generate(tmp_path / "clean", SynthConfig.from_preset("clean", **kw))
    full = generate(tmp_path / "full", SynthConfig.from_preset("shortcut", **kw))
    rendered = []
    real = synth._render
    monkeypatch.setattr(synth, "_render", lambda *a: rendered.append(a[1:3]) or real(*a))
    reused = generate(tmp_path / "reuse", SynthConfig.from_preset("shortcut", **kw),
                      reference=clean, workers=1)
    assert _tree(reused) == _tree(full)
    rows_c, rows_s = ({r["image_id"]: r for r in csv.DictReader(
        (root / "metadata.csv").read_text().splitlines())} for root in (clean, full))
    # the shortcut preset changes rulers in training only: the test split is never rendered
    assert rendered and all(split == "train" for split, _ in rendered)
    assert 0 < len(rendered) < kw["n_train"]
    # an image not rendered is a link to the reference's file, and its ruler is the same
    linked = [p for p in (reused / "ISBI2016_ISIC_Part3B_Training_Data").iterdir()
              if p.suffix == ".jpg" and p.stat().st_nlink > 1]
    assert len(linked) == kw["n_train"] - len(rendered)
    for p in linked:
        assert rows_c[p.stem]["artifact_ruler"] == rows_s[p.stem]["artifact_ruler"]
        assert os.path.samefile(p, clean / "ISBI2016_ISIC_Part3B_Training_Data" / p.name)


def test_a_reference_of_another_seed_is_ignored(tmp_path, monkeypatch):
    import dermcam.data.synth as synth

    kw = dict(n_train=20, n_test=10, image_size=40, prevalence=0.3)
    other = generate(tmp_path / "other", SynthConfig.from_preset("clean", seed=1, **kw))
    calls = []
    real = synth._render
    monkeypatch.setattr(synth, "_render", lambda *a: calls.append(1) or real(*a))
    out = generate(tmp_path / "out", SynthConfig.from_preset("shortcut", seed=2, **kw),
                   reference=other, workers=1)
    assert len(calls) == 30  # every image rendered
    (other / "metadata.csv").write_text("image_id,split\n\"broken")  # unreadable rows
    generate(tmp_path / "mine", SynthConfig.from_preset("clean", seed=1, **kw),
             reference=other, workers=1)
    assert len(calls) == 60  # the same config, but no row of its metadata matches
    monkeypatch.setattr(synth, "_render", real)
    assert _tree(out) == _tree(generate(tmp_path / "plain",
                                        SynthConfig.from_preset("shortcut", seed=2, **kw)))


def test_shortcut_preset_realised_ruler_rates(tmp_path):
    cfg = SynthConfig.from_preset("shortcut", n_train=300, n_test=200, image_size=32,
                                  prevalence=0.3, seed=3)
    out = generate(tmp_path / "short", cfg)
    info = json.loads((out / "synth.json").read_text())
    rows = _metadata(out)

    def rate(split, label):
        sel = [int(r["artifact_ruler"]) for r in rows
               if r["split"] == split and r["label"] == str(label)]
        return sum(sel) / len(sel)

    assert info["config"]["artifact_rates"]["ruler"] == {
        "train/0": 0.05, "train/1": 0.8, "test/0": 0.2, "test/1": 0.2}
    assert abs(rate("train", 1) - 0.80) < 0.12   # n = 90 malignant training images
    assert rate("train", 0) < 0.11               # planted at 0.05 (n = 210)
    assert abs(rate("test", 0) - 0.20) < 0.12 and abs(rate("test", 1) - 0.20) < 0.15
    assert rate("train", 1) - rate("train", 0) > 0.6
    realised = info["artifacts_realised"]["ruler"]
    for cell in realised.values():  # a planted ruler is (almost) always visible
        assert cell["present"] >= 0.9 * cell["planted"]
    # other artifacts are not tied to the label
    hair = [int(r["artifact_hair"]) for r in rows if r["split"] == "train"]
    assert 0.15 < sum(hair) / len(hair) < 0.45


def test_clean_preset_rates_independent_of_label_and_split():
    for a, cells in PRESETS["clean"].items():
        assert len(set(cells.values())) == 1, a
    short = PRESETS["shortcut"]
    assert short["ruler"][("train", 1)] == 0.8 and short["ruler"][("train", 0)] == 0.05
    assert short["ruler"][("test", 0)] == short["ruler"][("test", 1)] == 0.2
    assert all(short[a] == PRESETS["clean"][a] for a in ARTIFACTS if a != "ruler")


# ----------------------------------------------------------------------------- realism

def _features(s) -> list[float]:
    """Cheap hand-made ABCD-style features from the image and its mask."""
    img = s.image.astype(np.float32) / 255.0
    m = s.mask
    px = img[m]
    bg = np.median(img[~m], axis=0)
    r, b = px[:, 0], px[:, 2]
    lum = px.mean(1)
    inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
    compactness = (m & ~inner).sum() ** 2 / (4 * np.pi * m.sum())
    ys, xs = np.nonzero(m)
    ry = np.clip(np.rint(2 * ys.mean() - ys).astype(int), 0, m.shape[0] - 1)
    rx = np.clip(np.rint(2 * xs.mean() - xs).astype(int), 0, m.shape[1] - 1)
    asymmetry = 1.0 - m[ry, rx].mean()          # overlap with its 180-degree rotation
    blue = (b / (r + 1e-3) > 0.9 * bg[2] / bg[0]).mean()
    white = (lum > 0.9 * bg.mean()).mean()
    return [m.mean(), compactness, asymmetry, lum.std(), blue, white, (lum < 0.25).mean()]


@pytest.fixture(scope="module")
def renders():
    cfg = SynthConfig(n_train=240, n_test=10, image_size=64, prevalence=0.3, seed=11)
    return [render_sample(cfg, "train", i) for i in range(240)]


def test_malignant_lesions_larger_on_average(renders):
    area = np.array([s.mask.mean() for s in renders])
    y = np.array([s.label for s in renders])
    assert area[y == 1].mean() > 1.3 * area[y == 0].mean()
    # ... but overlapping: plenty of benign lesions larger than the malignant median
    assert (area[y == 0] > np.median(area[y == 1])).mean() > 0.1


def test_learnable_from_cues_but_not_from_size_alone(renders):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X = np.array([_features(s) for s in renders])
    y = np.array([s.label for s in renders])
    X = (X - X.mean(0)) / (X.std(0) + 1e-9)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    p = cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=cv,
                          method="predict_proba")[:, 1]
    auc_all = roc_auc_score(y, p)
    auc_area = roc_auc_score(y, X[:, 0])
    assert auc_all >= 0.8, auc_all
    assert 0.6 < auc_area < 0.9, auc_area
    assert auc_all > auc_area + 0.05


def test_larger_images_keep_the_cues():
    s = render_sample(SynthConfig(n_train=10, n_test=5, image_size=96, seed=4), "train", 0)
    assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
    assert 0.02 < s.mask.mean() < 0.6
    lesion = s.image[s.mask].mean(0)
    skin = s.image[~s.mask & (s.artifacts == 0)].mean(0)
    assert lesion.mean() < skin.mean() - 20  # pigmented: darker than the skin


# ----------------------------------------------------------------------------- generate()

def test_progress_and_regeneration(tmp_path):
    calls = []
    out = tmp_path / "set"
    generate(out, SynthConfig(n_train=12, n_test=6, image_size=32, seed=0),
             progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (18, 18) and [c[0] for c in calls] == list(range(1, 19))
    # regenerating a smaller set in place removes the stale images of the larger one
    generate(out, SynthConfig(n_train=6, n_test=6, image_size=32, seed=0))
    assert len(list((out / TRAIN_DIR).iterdir())) == 18
    assert len(list((out / TEST_DIR).iterdir())) == 18
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DermcamError):
        generate(tmp_path, SynthConfig(n_train=6, n_test=6, image_size=32))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_never_overwrites_a_real_isic_folder(tmp_path):
    """Same file names as a real download, but no synth.json: refuse, touch nothing."""
    (tmp_path / TRAIN_DIR).mkdir()
    (tmp_path / TRAIN_DIR / "ISIC_0000123.jpg").write_bytes(b"real")
    (tmp_path / TRAIN_CSV).write_text("ISIC_0000123,benign\n")
    with pytest.raises(DermcamError):
        generate(tmp_path, SynthConfig(n_train=6, n_test=6, image_size=32))
    assert (tmp_path / TRAIN_DIR / "ISIC_0000123.jpg").read_bytes() == b"real"
    assert (tmp_path / TRAIN_CSV).exists()


def test_interrupted_run_is_not_complete_and_can_be_rerun(tmp_path, monkeypatch):
    import dermcam.data.synth as synth

    calls = {"n": 0}
    real = synth._make_and_write

    def flaky(job, size, rates):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk gone")
        return real(job, size, rates)

    monkeypatch.setattr(synth, "_make_and_write", flaky)
    cfg = SynthConfig(n_train=8, n_test=6, image_size=32)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "set", cfg, workers=1)
    out = tmp_path / "set"
    assert not (out / TRAIN_CSV).exists() and not (out / "metadata.csv").exists()
    assert json.loads((out / "synth.json").read_text())["status"] == "generating"
    monkeypatch.setattr(synth, "_make_and_write", real)
    generate(out, cfg)
    assert json.loads((out / "synth.json").read_text())["status"] == "complete"
    assert len((out / TRAIN_CSV).read_text().splitlines()) == 8


@pytest.mark.parametrize("kwargs", [
    dict(preset="noisy"),
    dict(image_size=31),
    dict(prevalence=0.0),
    dict(prevalence=1.0),
    dict(prevalence=float("nan")),
    dict(n_train=1),                       # cannot hold both classes
    dict(n_test=2),                        # round(2 * 0.19) = 0 malignant
    dict(n_train=100, prevalence=0.999),   # no benign left
    dict(seed=-1),
    dict(n_train=10.5),
    dict(artifact_rates={"stickers": 0.1}),
    dict(artifact_rates={"ruler": 1.5}),
    dict(artifact_rates={"ruler": -0.1}),
    dict(artifact_rates={"ruler": {("train", 0): 0.1}}),           # cells missing
    dict(artifact_rates={"ruler": {("val", 0): 0.1, ("train", 1): 0.1,
                                   ("test", 0): 0.1, ("test", 1): 0.1}}),
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        SynthConfig(**{"n_train": 20, "n_test": 20, **kwargs})


def test_from_preset_and_rate_overrides():
    cfg = SynthConfig.from_preset("shortcut", n_train=20, n_test=20, artifact_rates={"hair": 0})
    rates = cfg.rates()
    assert rates["hair"] == {c: 0.0 for c in rates["hair"]}
    assert rates["ruler"][("train", 1)] == 0.8
    with pytest.raises(ValueError):
        SynthConfig.from_preset("dirty")
