"""Batched CAMs through pytorch-grad-cam: same numbers as the library, direction, hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dermcam.attribution import CamExplainer, reference_cams
from dermcam.errors import DermcamError
from dermcam.models import build_model


@pytest.mark.parametrize("name,method", [
    ("resnet18", "gradcam"), ("resnet18", "gradcam++"), ("resnet18", "hirescam"),
    ("resnet18", "layercam"), ("resnet18", "xgradcam"), ("mobilenet_v2", "gradcam"),
    ("efficientnet_b0", "gradcam")])
def test_stopped_backward_equals_full_backward_and_library(name, method):
    torch.manual_seed(0)
    model, info = build_model(name, weights="none")
    # give the random net some non-degenerate statistics so maps are not all zero
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    classes = np.array([0, 1, 1, 0])
    with CamExplainer(model, info.target_layer, method, fast=True) as ex:
        fast = ex.compute(x, target=classes).heatmaps
    with CamExplainer(model, info.target_layer, method, fast=False) as ex:
        full = ex.compute(x, target=classes).heatmaps
    lib = reference_cams(model, info.target_layer, x, classes, method)
    assert fast.shape == (4, 32, 32)
    np.testing.assert_allclose(fast, full, atol=1e-5)
    np.testing.assert_allclose(fast, lib, atol=1e-4)


class _Toy(nn.Module):
    """One conv block whose channel 0 copies the red channel, a pooling head that
    scores class 1 by channel 0: evidence for 'malignant' is where red is."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, 0] = 1.0  # channel 0 = red
            self.features[0].weight[1, 1] = 1.0  # channel 1 = green
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("normalize", ["minmax", "raw"])
def test_heatmap_direction_high_means_attended(normalize):
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 2:6, 2:6] = 1.0  # red square top-left: evidence for class 1
    x[0, 1, 10:14, 10:14] = 1.0  # green square bottom-right: evidence for class 0
    model = _Toy()
    with CamExplainer(model, "features", "gradcam") as ex:
        h1 = ex.compute(x, target="malignant", normalize=normalize).heatmaps[0]
        h0 = ex.compute(x, target=np.array([0]), normalize=normalize).heatmaps[0]
    assert h1[2:6, 2:6].mean() > 10 * (h1[10:14, 10:14].mean() + 1e-6)
    assert h0[10:14, 10:14].mean() > 10 * (h0[2:6, 2:6].mean() + 1e-6)
    if normalize == "minmax":
        assert h1.max() == pytest.approx(1.0) and h1.min() == pytest.approx(0.0)
    else:
        # raw keeps magnitudes: grad-cam weight for channel 0 is 1/256 (avg pool), act = 1
        assert h1.max() == pytest.approx(1.0 / 256, rel=1e-3)


def test_predicted_target_uses_threshold():
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0] = 1.0  # red everywhere -> class 1 logit 1
    x[1, 1] = 1.0
    with CamExplainer(_Toy(), "features") as ex:
        out = ex.compute(x, target="predicted")
        assert out.targets.tolist() == [1, 0]
        out = ex.compute(x, target="predicted", threshold=0.0)
        assert out.targets.tolist() == [1, 1]


def test_model_state_restored_and_hooks_removed():
    model, info = build_model("resnet18", weights="none")
    model.train()
    model.conv1.weight.requires_grad_(False)
    layer = model.get_submodule(info.target_layer)
    with CamExplainer(model, info.target_layer) as ex:
        assert not model.training
        ex.compute(torch.randn(2, 3, 32, 32))
    assert model.training
    assert not model.conv1.weight.requires_grad
    assert model.fc.weight.requires_grad
    assert len(layer._forward_hooks) == 0


def test_zero_gradient_gives_all_zero_heatmap():
    model = _Toy()
    with torch.no_grad():
        model.fc.weight.zero_()
    with CamExplainer(model, "features") as ex:
        h = ex.compute(torch.rand(1, 3, 8, 8), target="malignant").heatmaps
    assert np.all(h == 0)


def test_unknown_method_and_layer():
    model = _Toy()
    with pytest.raises(DermcamError, match="unknown CAM method"):
        CamExplainer(model, "features", "magiccam")
    with pytest.raises(DermcamError, match="no layer"):
        with CamExplainer(model, "nope"):
            pass
