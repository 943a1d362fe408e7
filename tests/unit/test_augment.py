"""Per-sample augmentation (dermcam.augment) and the colour-jitter setting of training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermcam.augment import augment
from dermcam.errors import DermcamError


def _draws(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_without_rotation_or_jitter_each_sample_is_only_flipped_as_its_draws_say():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    # columns: angle, horizontal flip (< 0.5), vertical flip (< 0.5), brightness, contrast,
    # saturation; angle 0.5 is no rotation
    d = _draws([[0.5, 0.9, 0.9, 0.5, 0.5, 0.5],
                [0.5, 0.1, 0.9, 0.5, 0.5, 0.5],
                [0.5, 0.9, 0.1, 0.5, 0.5, 0.5],
                [0.5, 0.1, 0.1, 0.5, 0.5, 0.5]])
    y = augment(x, rotation=20.0, jitter=0.0, draws=d)
    expected = torch.stack([x[0], x[1].flip(-1), x[2].flip(-2), x[3].flip(-1, -2)])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_brightness_jitter_on_a_grey_image_is_the_hand_computed_factor():
    """A uniform grey image has no contrast or saturation to change: only brightness
    ``1 + (2 r - 1) j`` acts, and rotation with reflection padding keeps it uniform."""
    x = torch.full((3, 3, 6, 6), 0.5)
    d = _draws([[0.2, 0.3, 0.7, 0.0, 0.9, 0.1],
                [0.8, 0.6, 0.2, 1.0, 0.1, 0.9],
                [0.5, 0.5, 0.5, 0.75, 0.5, 0.5]])
    for j in (0.0, 0.2, 0.4):
        y = augment(x, rotation=30.0, jitter=j, draws=d)
        for i, b in enumerate(1 + (2 * d[:, 3] - 1) * j):
            torch.testing.assert_close(y[i], torch.full((3, 6, 6), float(0.5 * b)),
                                       atol=1e-6, rtol=0)


def test_zero_jitter_keeps_every_colour_and_positive_jitter_changes_them():
    """Without jitter, an image of two colours keeps exactly those two colours under
    flips (no rotation, so no interpolation); with jitter the colours move."""
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, :, :4] = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)
    x[:, :, :, 4:] = torch.tensor([0.3, 0.6, 0.9]).view(1, 3, 1, 1)
    d = _draws([[0.5, 0.1, 0.9, 0.1, 0.9, 0.2], [0.5, 0.9, 0.1, 0.8, 0.2, 0.9]])
    colours = {tuple(np.round(c, 5)) for c in x[0].permute(1, 2, 0).reshape(-1, 3).numpy()}
    kept = augment(x, rotation=20.0, jitter=0.0, draws=d)
    for img in kept:
        got = {tuple(np.round(c, 5)) for c in img.permute(1, 2, 0).reshape(-1, 3).numpy()}
        assert got == colours
    moved = augment(x, rotation=20.0, jitter=0.2, draws=d)
    for img in moved:
        got = {tuple(np.round(c, 5)) for c in img.permute(1, 2, 0).reshape(-1, 3).numpy()}
        assert got.isdisjoint(colours)


def test_training_passes_its_colour_jitter_to_the_augmentation(tmp_path, monkeypatch,
                                                                make_generic):
    from helpers import generic_labels

    import dermcam.augment as aug
    import dermcam.lightning_module as lm
    from dermcam.config import TrainConfig
    from dermcam.stages.train import train

    labels = generic_labels(30, 16)
    split = {i: "test" if k % 5 == 0 else "train" for k, i in enumerate(labels)}
    data = make_generic(labels, split=split)
    seen = []
    real = aug.augment

    def spy(x, *a, **kw):
        seen.append(kw.get("jitter"))
        return real(x, *a, **kw)

    monkeypatch.setattr(lm, "augment_fn", spy)  # where the training step looks it up
    for j in (0.0, 0.35):
        seen.clear()
        train(TrainConfig(data=str(data), out=str(tmp_path / f"run{j}"), models=["resnet18"],
                          weights="none", image_size=16, max_epochs=1, batch_size=8, seed=0,
                          progress=False, colour_jitter=j, cache_dir=str(tmp_path / "c")))
        assert seen and set(seen) == {j}
    with pytest.raises(DermcamError, match="colour-jitter"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "bad"), models=["resnet18"],
                          weights="none", colour_jitter=1.5))
