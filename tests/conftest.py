"""Shared fixtures: tiny data sets written into ``tmp_path`` in each supported layout, and
one tiny trained run (``tiny_run``) for the stage tests that only need some finished run.

The helpers themselves are in ``helpers.py`` (imported as ``from helpers import ...``);
the ``dh`` fixture hands the same helpers and constants over as one namespace.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    ISIC_TEST,
    ISIC_TEST_CSV,
    ISIC_TEST_DIR,
    ISIC_TRAIN,
    ISIC_TRAIN_CSV,
    ISIC_TRAIN_DIR,
    LESION,
    H,
    W,
    easy_generic,
    generic_labels,
    ids_of,
    lesion_image,
    lesion_mask,
    rewrite,
    write_generic,
    write_image,
    write_isic,
    write_mask,
)

from dermcam.device import shard_threads

# pyproject's addopts run the files on pytest-xdist workers, one per core. Each worker
# computes on its share of the cores: OMP_NUM_THREADS, which torch, dermcam's training and
# the commands the tests start all follow; else two workers would each run a thread per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(shard_threads(_WORKERS))  # imports no torch

#: Files that take longest (the planted-shortcut twins train for about 150 s on one core):
#: on workers they start first, so that they do not finish last after everything else.
LONGEST_FIRST = ("end_to_end/test_shortcut.py",)


def pytest_collection_modifyitems(items):
    if _WORKERS > 1:
        first = tuple(f"tests/{name}" for name in LONGEST_FIRST)
        items.sort(key=lambda item: not item.nodeid.startswith(first))


@pytest.fixture
def make_isic(tmp_path):
    """Factory: ``make_isic(name="isic", train=..., test=..., masks=True, header=False)``."""

    def make(name: str = "isic", train: dict[str, int] | None = None,
             test: dict[str, int] | None = None, masks: bool = True, header: bool = False,
             ext: str = ".jpg") -> Path:
        return write_isic(tmp_path / name, ISIC_TRAIN if train is None else train,
                           ISIC_TEST if test is None else test, masks, header, ext)

    return make


@pytest.fixture
def make_generic(tmp_path):
    """Factory: ``make_generic(labels, split=None, masks=False, extra_columns=False)``."""

    def make(labels: dict[str, int | str], split: dict[str, str] | None = None,
             masks: bool | str = False, extra_columns: bool = False, name: str = "generic",
             ext: str = ".png") -> Path:
        return write_generic(tmp_path / name, labels, split, masks, extra_columns, ext)

    return make


@pytest.fixture
def isic_root(make_isic) -> Path:
    return make_isic()


@pytest.fixture
def generic_root(make_generic) -> Path:
    """Six benign and four malignant images with a split column and masks in ``masks/``."""
    labels = generic_labels(6, 4)
    split = {i: ("test" if k in (0, 1, 6) else "train") for k, i in enumerate(labels)}
    return make_generic(labels, split=split, masks=True)


@pytest.fixture(scope="session")
def dh() -> SimpleNamespace:
    """The data helpers and constants of :mod:`helpers`, as one namespace."""
    return SimpleNamespace(
        W=W, H=H, LESION=LESION, ISIC_TRAIN=ISIC_TRAIN, ISIC_TEST=ISIC_TEST,
        TRAIN_DIR=ISIC_TRAIN_DIR, TEST_DIR=ISIC_TEST_DIR, TRAIN_CSV=ISIC_TRAIN_CSV,
        TEST_CSV=ISIC_TEST_CSV, lesion_image=lesion_image, lesion_mask=lesion_mask,
        write_image=write_image, write_mask=write_mask, rewrite=rewrite, ids_of=ids_of,
        generic_labels=generic_labels)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(data, run)``: ResNet18 trained from scratch for one epoch at 32 px on
    :func:`helpers.easy_generic`'s 30 images (10 test images, all masked). Shared by the
    whole session: a test that changes the run or the data works on a copy. Seed 3, not
    the default 0, so that a test reading the run's seed can tell the two apart."""
    from dermcam.config import TrainConfig
    from dermcam.stages.train import train

    base = tmp_path_factory.mktemp("tiny_run")
    data = easy_generic(base / "data", n=30)
    run = base / "run"
    train(TrainConfig(data=str(data), out=str(run), models=["resnet18"], weights="none",
                      image_size=32, max_epochs=1, batch_size=8, accelerator="cpu", seed=3,
                      progress=False, cache_dir=str(base / "cache")))
    return data, run
