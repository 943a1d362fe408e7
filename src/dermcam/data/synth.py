"""The synthetic dermoscopy benchmark (docs/data.md): ISIC 2016 Part 3B's layout plus
``ISIC_xxx_Artifacts.png`` maps, ``metadata.csv`` and ``synth.json``, painted by
:mod:`dermcam.data.painters`. Each image draws from ``SeedSequence([seed, split_code, i])``, so
files are byte-identical whatever the worker count, and ``clean`` and ``shortcut`` of one seed
share skin and lesions (a counterfactual pair)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from dermcam.data import isic2016, painters
from dermcam.data.dataset import LABEL_NAMES, pool_map
from dermcam.data.isic2016 import TEST_CSV, TEST_DIR, TRAIN_CSV, TRAIN_DIR
from dermcam.data.painters import ARTIFACTS, PAINTERS, composite, paint_artifact
from dermcam.errors import DermcamError
from dermcam.io import write_bytes, write_json, write_text

__all__ = ["ARTIFACTS", "GENERATOR_VERSION", "PRESETS", "SynthConfig", "SynthSample", "generate",
           "paint_artifact", "render_sample", "split_labels"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.1.0"
_GENERATOR = "dermcam.data.synth"

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}
_CELLS = tuple((s, y) for s in SPLITS for y in (0, 1))

JPEG_QUALITY = 90
_PNG = {"format": "PNG", "compress_level": 6}
_MIN_SIZE = 32
_POOL_MIN_IMAGES = 16  # below this, one thread
METADATA = "metadata.csv"
SYNTH_JSON = "synth.json"
METADATA_COLUMNS = (["image_id", "split", "label", "lesion_area"]
                    + [f"artifact_{a}" for a in ARTIFACTS]
                    + ["asymmetry", "border_irregularity", "n_colours", "diameter_px"])

_CLEAN_RATES = {"ruler": 0.2, "ink": 0.1, "patch": 0.1, "vignette": 0.3, "hair": 0.3}
Rates = Mapping[str, Mapping[tuple[str, int], float]]
Job = tuple[Path, str, int, str, int, int]  # folder, image_id, seed, split, index, label


def _flat(rate: float) -> dict[tuple[str, int], float]:
    return {cell: rate for cell in _CELLS}


PRESETS: dict[str, dict[str, dict[tuple[str, int], float]]] = {
    # every artifact at a fixed rate, independent of label and split
    "clean": {a: _flat(r) for a, r in _CLEAN_RATES.items()},
    # as clean, but the ruler is a training-only shortcut for malignancy
    "shortcut": {
        **{a: _flat(r) for a, r in _CLEAN_RATES.items()},
        "ruler": {("train", 0): 0.05, ("train", 1): 0.80, ("test", 0): 0.20, ("test", 1): 0.20},
    },
}
"""``PRESETS[preset][artifact][(split, label)]`` -> probability that an image carries it."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _parse_cell(key: Any) -> tuple[str, int]:
    """``("train", 1)`` or the JSON spelling ``"train/1"`` -> ``("train", 1)``."""
    if isinstance(key, str) and "/" in key:
        split, _, lab = key.partition("/")
        key = (split, int(lab) if lab.strip().isdigit() else lab)
    if (not isinstance(key, tuple) or len(key) != 2 or key[0] not in SPLITS
            or not _is_number(key[1]) or int(key[1]) not in (0, 1) or key[1] != int(key[1])):
        raise ValueError(f"artifact rate cell {key!r} is not (split, label) with split in "
                         f"{SPLITS} and label 0 or 1")
    return (key[0], int(key[1]))


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")


@dataclass
class SynthConfig:
    """What to generate (:class:`ValueError` for bad values). ``artifact_rates`` overrides
    the preset's per artifact: one number, or all four ``(split, label)`` (or ``"train/1"``)
    cells."""

    n_train: int = 900
    n_test: int = 379
    image_size: int = 256
    prevalence: float = 0.19
    seed: int = 0
    preset: str = "clean"
    artifact_rates: dict | None = None

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "image_size", "seed"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if self.image_size < _MIN_SIZE:
            raise ValueError(f"image_size must be at least {_MIN_SIZE} px, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not _is_number(self.prevalence) or not 0.0 < float(self.prevalence) < 1.0:
            raise ValueError(f"prevalence must be strictly between 0 and 1, got "
                             f"{self.prevalence!r}")
        _check_preset(self.preset)
        for split, n in (("train", self.n_train), ("test", self.n_test)):
            k = self.n_malignant(split)
            if n < 2 or k < 1 or k > n - 1:
                raise ValueError(
                    f"n_{split}={n} with prevalence {self.prevalence} gives {k} malignant "
                    f"and {n - k} benign images; each split needs both classes")
        self.rates()  # validates artifact_rates

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> SynthConfig:
        """A config with ``preset``'s artifact rates; keyword ``overrides`` set other fields."""
        _check_preset(preset)
        return cls(preset=preset, **overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict` (also reads the ``"config"`` block of ``synth.json``)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def n_malignant(self, split: str) -> int:
        n = self.n_train if split == "train" else self.n_test
        return int(round(n * float(self.prevalence)))

    def rates(self) -> dict[str, dict[tuple[str, int], float]]:
        """The full rate table ``{artifact: {(split, label): p}}`` after the preset merge."""
        table = {a: dict(PRESETS[self.preset][a]) for a in ARTIFACTS}
        if self.artifact_rates is None:
            return table
        if not isinstance(self.artifact_rates, Mapping):
            raise ValueError("artifact_rates must be a dict {artifact: rate or {(split, label): "
                             "rate}}")
        for art, spec in self.artifact_rates.items():
            if art not in ARTIFACTS:
                raise ValueError(f"unknown artifact {art!r}; choose from {ARTIFACTS}")
            if _is_number(spec):
                cells = _flat(float(spec))
            elif isinstance(spec, Mapping):
                cells = {_parse_cell(k): v for k, v in spec.items()}
                missing = [c for c in _CELLS if c not in cells]
                if missing:
                    raise ValueError(f"artifact_rates[{art!r}] lacks cells {missing}; give all "
                                     f"four (split, label) cells or one number")
            else:
                raise ValueError(f"artifact_rates[{art!r}] must be a number or a dict, got "
                                 f"{spec!r}")
            for cell, p in cells.items():
                if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
                    raise ValueError(f"artifact_rates[{art!r}][{cell}] = {p!r} is not a "
                                     "probability in [0, 1]")
                table[art][cell] = float(p)
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; rates fully resolved, cells spelled ``"train/1"``."""
        return {"n_train": int(self.n_train), "n_test": int(self.n_test),
                "image_size": int(self.image_size), "prevalence": float(self.prevalence),
                "seed": int(self.seed), "preset": self.preset,
                "artifact_rates": {a: {f"{s}/{y}": p for (s, y), p in cells.items()}
                                   for a, cells in self.rates().items()}}


def split_labels(config: SynthConfig, split: str) -> np.ndarray:
    """``(n,)`` int labels of a split: exactly ``round(n * prevalence)`` ones, seeded shuffle."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    labels = np.zeros(config.n_train if split == "train" else config.n_test, dtype=np.int64)
    labels[: config.n_malignant(split)] = 1
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 100 + _SPLIT_CODE[split]]))
    return rng.permutation(labels)


@dataclass(eq=False)
class SynthSample:
    """One rendered sample before encoding: ``image (S, S, 3) uint8``, ``mask (S, S) bool``,
    ``artifacts (S, S) uint8`` codes; ``planted`` the artifacts drawn, ``present`` those
    that changed a pixel; the lesion attributes of ``metadata.csv``."""

    image: np.ndarray
    mask: np.ndarray
    artifacts: np.ndarray
    label: int
    planted: tuple[str, ...]
    present: tuple[str, ...]
    asymmetry: float
    border_irregularity: float
    n_colours: int
    diameter_px: float


def _chosen(draws: np.ndarray, split: str, label: int, rates: Rates) -> tuple[str, ...]:
    """The artifacts an image carries: those whose uniform draw is below its cell's rate."""
    return tuple(a for k, a in enumerate(ARTIFACTS) if draws[k] < rates[a][(split, label)])


def _seeds(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """An image's streams: skin and lesion, artifact draws, each artifact's geometry."""
    return np.random.SeedSequence([seed, _SPLIT_CODE[split], index]).spawn(2 + len(ARTIFACTS))


def _render(seed: int, split: str, index: int, label: int, size: int, rates: Rates) -> SynthSample:
    streams = [np.random.default_rng(s) for s in _seeds(seed, split, index)]
    rng, rng_draw = streams[0], streams[1]
    skin, texture = painters.paint_skin(rng, size)
    params = painters.lesion_params(rng, label)
    mask, diameter = painters.paint_lesion(rng, size, skin, texture, params)
    img = skin * painters.lighting(rng, size)[..., None]
    grain = rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(1.5, 3.5))
    img += grain[..., None]
    img += rng.random((size, size, 3), dtype=np.float32) * np.float32(3.4) - np.float32(1.7)
    np.clip(img, 0.0, 255.0, out=img)
    lesion = painters.lesion_geometry(mask)
    draws = rng_draw.random(len(ARTIFACTS))  # drawn in full, so rates never shift streams
    planted = _chosen(draws, split, label, rates)
    codes = np.zeros((size, size), np.uint8)
    for k, name in enumerate(ARTIFACTS):
        if name in planted:
            alpha, col = PAINTERS[name](streams[2 + k], size, mask, lesion)
            win, changed = composite(img, alpha, col, ~mask)
            if win is not None:
                codes[win][changed] = k + 1
    present = tuple(a for k, a in enumerate(ARTIFACTS) if (codes == k + 1).any())
    return SynthSample(
        image=np.rint(img).astype(np.uint8), mask=mask, artifacts=codes, label=int(label),
        planted=planted, present=present, asymmetry=params["asymmetry"],
        border_irregularity=params["border"], n_colours=len(params["colours"]),
        diameter_px=diameter)


def render_sample(config: SynthConfig, split: str, index: int) -> SynthSample:
    """Render image ``index`` (0-based within ``split``) of ``config`` without writing it."""
    labels = split_labels(config, split)
    if not 0 <= index < labels.size:
        raise ValueError(f"index {index} outside the {split} split of {labels.size} images")
    return _render(config.seed, split, index, int(labels[index]), config.image_size,
                   config.rates())


def _encode(a: np.ndarray, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, **save)
    return buf.getvalue()


def _planted(seed: int, split: str, index: int, label: int, rates: Rates) -> tuple[str, ...]:
    """The artifacts :func:`_render` plants in this image, without rendering it (the
    artifact draws have their own stream)."""
    draws = np.random.default_rng(_seeds(seed, split, index)[1]).random(len(ARTIFACTS))
    return _chosen(draws, split, label, rates)


def _files(folder: Path, image_id: str) -> tuple[Path, Path, Path]:
    return (folder / f"{image_id}.jpg", folder / f"{image_id}{isic2016.MASK_SUFFIX}",
            folder / f"{image_id}{isic2016.ARTIFACT_SUFFIX}")


def _reusable(reference: Path, config: SynthConfig
              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[tuple[str, int], float]]]:
    """``(metadata.csv rows by image id, artifact rates)`` of ``reference`` when its images
    can stand in for this config's (complete, same generator, numpy and Pillow versions,
    same fields but the rates); else ``({}, {})``, the log saying why."""
    try:
        meta = json.loads((reference / SYNTH_JSON).read_text("utf-8"))
        block = meta.get("config")
        if not isinstance(block, dict):
            raise ValueError(f"{SYNTH_JSON} has no config")
        ref = SynthConfig.from_dict(block)
        same = (meta.get("generator") == _GENERATOR and meta.get("status") == "complete"
                and meta.get("generator_version") == GENERATOR_VERSION
                and meta.get("numpy_version") == np.__version__
                and meta.get("pillow_version") == PIL.__version__
                and all(getattr(ref, f) == getattr(config, f)
                        for f in ("n_train", "n_test", "image_size", "prevalence", "seed")))
        if not same:
            log.info("%s: not reusing its images (another config, generator or library "
                     "version)", reference)
            return {}, {}
        with open(reference / METADATA, newline="", encoding="utf-8") as fh:
            return {r["image_id"]: r for r in csv.DictReader(fh)}, ref.rates()
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
        log.info("%s: not reusing its images (%s)", reference, err)
        return {}, {}


def _reuse(job: Job, row: dict[str, Any], reference: Path,
           planted: tuple[str, ...]) -> dict[str, Any] | None:
    """Hard-link (or copy) the reference's three files of this image and return its
    ``metadata.csv`` row, or ``None`` when a file is missing."""
    folder, image_id = job[0], job[1]
    sources = _files(reference / folder.name, image_id)
    if not all(p.is_file() for p in sources):
        return None
    for src, dst in zip(sources, _files(folder, image_id), strict=True):
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # another device, or no hard links here
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    ints = {k: int(row[k]) for k in ["label"] + [f"artifact_{a}" for a in ARTIFACTS]}
    return {**row, **ints, "_planted": planted}


def _make_and_write(job: Job, size: int, rates: Rates) -> dict[str, Any]:
    """Render one image, write its three files, return its ``metadata.csv`` row."""
    folder, image_id, seed, split, index, label = job
    s = _render(seed, split, index, label, size, rates)
    mask8 = np.where(s.mask, 255, 0).astype(np.uint8)
    jpg, mask_png, artifact_png = _files(folder, image_id)
    write_bytes(jpg, _encode(s.image, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0",
                             optimize=False, progressive=False))
    write_bytes(mask_png, _encode(mask8, **_PNG))
    write_bytes(artifact_png, _encode(s.artifacts, **_PNG))
    return {"image_id": image_id, "split": split, "label": s.label,
            "lesion_area": repr(float(np.count_nonzero(mask8) / mask8.size)),
            **{f"artifact_{a}": int(a in s.present) for a in ARTIFACTS},
            "asymmetry": f"{s.asymmetry:.5f}",
            "border_irregularity": f"{s.border_irregularity:.5f}", "n_colours": s.n_colours,
            "diameter_px": f"{s.diameter_px:.1f}", "_planted": s.planted}


_OWN_FILE = re.compile(r"^ISIC_\d{7}(?:|_Segmentation|_Artifacts)\.(?:jpg|png)$")


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _prepare(out: Path, config: SynthConfig, jobs: list[Job]) -> None:
    """Make ``out`` ready: new, empty, or a previous synthetic set (never anything else);
    ``synth.json`` says ``"generating"`` so an interrupted run stays recognisable as ours."""
    if out.exists() and not out.is_dir():
        raise DermcamError("output path exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir() if not _is_tmp(p.name)]
    if entries:
        try:
            ours = json.loads((out / SYNTH_JSON).read_text("utf-8")).get("generator") == _GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        top = {TRAIN_DIR, TEST_DIR, TRAIN_CSV, TEST_CSV, METADATA, SYNTH_JSON}
        foreign = [p.name for p in entries if p.name not in top]
        for d in (TRAIN_DIR, TEST_DIR):
            if (out / d).is_dir():
                foreign += [f"{d}/{p.name}" for p in (out / d).iterdir()
                            if not _OWN_FILE.match(p.name) and not _is_tmp(p.name)]
        if not ours or foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
            why = f"holds files that are not part of a synthetic data set ({shown})" if foreign \
                else f"is not empty and has no {SYNTH_JSON} from a previous synthetic set"
            raise DermcamError(f"folder {why}; choose an empty or new folder", out)
    for name in (METADATA, TRAIN_CSV, TEST_CSV):
        (out / name).unlink(missing_ok=True)
    write_json(out / SYNTH_JSON, {"generator": _GENERATOR, "generator_version": GENERATOR_VERSION,
                                  "status": "generating", "config": config.to_dict()})
    wanted = {(folder.name, image_id) for folder, image_id, *_ in jobs}
    for d in (TRAIN_DIR, TEST_DIR):
        (out / d).mkdir(exist_ok=True)
        for p in (out / d).iterdir():
            if _is_tmp(p.name) or (d, p.name[:12]) not in wanted:
                p.unlink()


def generate(out_dir: str | Path, config: SynthConfig,
             progress: Callable[[int, int], None] | None = None, *,
             workers: int | None = None, reference: str | Path | None = None) -> Path:
    """Write the data set for ``config`` into ``out_dir`` (new, empty or a previous synthetic
    set), images first, every file atomically, on ``workers`` threads (the files do not
    depend on it). ``reference``: a complete set differing only in artifact rates, whose
    images planting the same artifacts under both rate tables are hard-linked (same bytes).
    """
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    SynthConfig.__post_init__(config)  # re-validate: fields may have been changed since
    out = Path(out_dir)
    rates = config.rates()
    jobs = _jobs(out, config)
    _prepare(out, config, jobs)
    n_workers = max(1, min(workers if workers is not None else min(2, os.cpu_count() or 1), 8))
    if len(jobs) < _POOL_MIN_IMAGES:
        n_workers = 1
    log.info("generating %d synthetic images (%d px, preset %s, seed %d) in %s with %d "
             "thread(s)", len(jobs), config.image_size, config.preset, config.seed, out,
             n_workers)
    make = partial(_make_and_write, size=config.image_size, rates=rates)
    ref_rows, ref_rates = _reusable(Path(reference), config) if reference is not None \
        else ({}, {})
    if ref_rows:
        make = partial(_make_or_reuse, render=make, reference=Path(reference),
                       ref_rows=ref_rows, rates=rates, ref_rates=ref_rates)
    rows = list(pool_map(make, jobs, n_workers, progress))
    _write_tables(out, config, rows)
    log.info("synthetic data set complete: %s", out)
    return out


def _jobs(out: Path, config: SynthConfig) -> list[Job]:
    """One job per image; test ids continue the training numbering."""
    parts = (("train", TRAIN_DIR, 0), ("test", TEST_DIR, config.n_train))
    return [(out / folder, f"ISIC_{offset + i:07d}", int(config.seed), split, i, int(y))
            for split, folder, offset in parts for i, y in enumerate(split_labels(config, split))]


def _make_or_reuse(job: Job,
                   render: Callable[[Any], dict[str, Any]], reference: Path,
                   ref_rows: dict[str, dict[str, Any]], rates: Rates, ref_rates: Rates
                   ) -> dict[str, Any]:
    """The reference's files of this image when it plants the same artifacts under both
    rate tables (so the bytes are the same), else ``render(job)``; its ``metadata.csv`` row."""
    _, image_id, seed, split, index, label = job
    planted = _planted(seed, split, index, label, rates)
    row = ref_rows.get(image_id)
    if (row is not None and row.get("split") == split and row.get("label") == str(label)
            and planted == _planted(seed, split, index, label, ref_rates)):
        reused = _reuse(job, row, reference, planted)
        if reused is not None:
            return reused
    return render(job)


def _write_tables(out: Path, config: SynthConfig, rows: list[dict[str, Any]]) -> None:
    """The completeness markers, last: ground truth, ``metadata.csv``, then ``synth.json``."""
    write_text(out / TRAIN_CSV, "".join(f"{r['image_id']},{LABEL_NAMES[r['label']]}\n"
                                        for r in rows if r["split"] == "train"))
    write_text(out / TEST_CSV, "".join(f"{r['image_id']},{float(r['label']):.1f}\n"
                                       for r in rows if r["split"] == "test"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METADATA_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / METADATA, buf.getvalue())
    write_json(out / SYNTH_JSON, _summary(config, rows))


def _summary(config: SynthConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {}
    for split in SPLITS:
        sr = [r for r in rows if r["split"] == split]
        counts[split] = {"n": len(sr), "malignant": sum(r["label"] for r in sr),
                         "benign": sum(1 - r["label"] for r in sr)}
    cells = {f"{s}/{y}": [r for r in rows if r["split"] == s and r["label"] == y]
             for s, y in _CELLS}
    realised = {a: {k: {"n": len(cell), "planted": sum(a in r["_planted"] for r in cell),
                        "present": sum(r[f"artifact_{a}"] for r in cell)}
                    for k, cell in cells.items()} for a in ARTIFACTS}
    return {
        "generator": _GENERATOR, "generator_version": GENERATOR_VERSION, "status": "complete",
        "layout": "isic2016", "config": config.to_dict(), "jpeg_quality": JPEG_QUALITY,
        "artifact_codes": {a: k + 1 for k, a in enumerate(ARTIFACTS)},
        "artifact_map_rule": ("code of the artifact that changed the pixel's 8-bit value "
                              "before JPEG encoding; where several did, the later one in "
                              "artifact_codes order wins; never inside the lesion mask"),
        "counts": counts, "artifacts_realised": realised,
        "numpy_version": np.__version__, "pillow_version": PIL.__version__}
