"""Splits: the seeded test split a layout without an official one draws (by image or by
group), and the seeded stratified train/validation split of training. Pure functions of
their inputs and the seed."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np

from dermcam.data.dataset import Sample
from dermcam.errors import DermcamError

__all__ = ["TEST_FRACTION", "holdout", "lesion_holdout", "stratified_split"]

#: The share of images (or groups) a layout without an official split holds out as test.
TEST_FRACTION = 0.2


def holdout(samples: list[Sample], seed: int = 0) -> list[Sample]:
    """A seeded stratified :data:`TEST_FRACTION` of each class becomes the test split;
    sorted by image id."""
    rng = random.Random(seed)
    out = []
    for label in (0, 1):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.image_id)
        rng.shuffle(group)
        test_ids = {s.image_id for s in group[:round(len(group) * TEST_FRACTION)]}
        out += [Sample(s.image_id, s.image_path, s.label,
                       "test" if s.image_id in test_ids else "train", s.mask_path,
                       group=s.group) for s in group]
    return sorted(out, key=lambda s: s.image_id)


def lesion_holdout(samples: list[Sample], groups: dict[str, str], fraction: float = TEST_FRACTION,
                   seed: int = 0) -> list[Sample]:
    """A seeded ``fraction`` of each class's groups (malignant when any sample is) becomes
    the test split; samples keep their order."""
    group_label: dict[str, int] = {}
    for s in samples:
        g = groups[s.image_id]
        group_label[g] = max(group_label.get(g, 0), s.label)
    rng = random.Random(seed)
    test: set[str] = set()
    for label in (0, 1):
        members = sorted(g for g, y in group_label.items() if y == label)
        rng.shuffle(members)
        test.update(members[: round(len(members) * fraction)])
    return [replace(s, split="test" if groups[s.image_id] in test else "train") for s in samples]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int,
                     source: str = "training split", groups=None, path=None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/validation indices; one-line errors (naming ``path``) when it
    cannot be done. Each class needs ``max(2, ceil(1 / val_fraction))`` images so validation
    holds both whatever the seed (the threshold and AUC need both); repeating ``groups``
    (lesion ids) split by group (StratifiedGroupKFold, first fold)."""
    from sklearn.model_selection import train_test_split
    if not 0.0 < val_fraction < 1.0:
        raise DermcamError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        missing = "benign" if counts[0] == 0 else "malignant"
        raise DermcamError(f"the {source} has no {missing} images; both classes are needed",
                           path)
    n_val = max(2, round(len(labels) * val_fraction))
    need = max(2, math.ceil(1 / val_fraction - 1e-9))
    if counts.min() < need or n_val >= len(labels) - 1:
        few = "malignant" if counts[1] < counts[0] else "benign"
        raise DermcamError(
            f"the {source} is too small to stratify ({counts[0]} benign, {counts[1]} "
            f"malignant): a {val_fraction:.0%} validation split needs at least {need} "
            f"images of each class to hold both; add {few} images or raise --val-fraction",
            path)
    idx = np.arange(len(labels))
    if groups is not None and None not in groups and len(set(groups)) < len(groups):
        from sklearn.model_selection import StratifiedGroupKFold
        k = max(2, round(1 / val_fraction))
        sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        tr, va = next(sgkf.split(idx, labels, groups))
    else:
        tr, va = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    if len(np.unique(labels[va])) < 2 or len(np.unique(labels[tr])) < 2:
        raise DermcamError(f"the {source} has too few images (or lesion groups) of a class "
                           "to hold out both classes for validation", path)
    return np.sort(tr), np.sort(va)


def split_samples(samples, val_fraction: float, seed: int, path=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stratified_split` of a split's samples by their labels and groups (training,
    and every stage that needs its validation part)."""
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return stratified_split(labels, val_fraction, seed, groups=[s.group for s in samples],
                            path=path)
