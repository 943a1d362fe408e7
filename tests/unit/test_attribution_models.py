"""Every kind of torchvision classifier dermcam offers explains: a representative set.

Each case: a randomly initialised model (BatchNorm statistics set from one batch,
so activations neither vanish nor explode), its :func:`default_target_layer`,
Grad-CAM on 2 tiny images with the stopped backward (``fast=True``) and the full
one; the heatmaps are finite, ``(2, S, S)``, not all constant, and identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision.models import get_model
from torchvision.models.maxvit import MaxVit

from dermcam.attribution import (
    CamExplainer,
    default_target_layer,
    nhwc_reshape_transform,
    vit_reshape_transform,
)
from dermcam.models import available_models, build_model


def _tiny_maxvit() -> nn.Module:
    # maxvit_t needs 224 px (partition size 7 at stride 32); the same class, built small.
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                  block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=2)


def _with_new_head(model: nn.Module) -> nn.Module:
    # As build_model does: a fresh 2-class Linear (torchvision's ViT zero-inits its head,
    # which would give all-zero gradients).
    model.heads.head = nn.Linear(model.heads.head.in_features, 2)
    return model


# name, input size (final feature map >= 2 x 2), builder when build_model cannot serve it
CASES = {
    "alexnet": (64, None),
    "vgg11": (32, None),
    "densenet121": (64, None),
    "convnext_tiny": (64, None),
    "regnet_x_400mf": (64, None),
    # its last Conv2d is in an aux head that eval mode skips; at 64 px the last branch's
    # 3x3 max-pool over a 2x2 map makes it spatially constant
    "googlenet": (128, None),
    # no Linear head, so build_model cannot replace one; built with 2 classes directly
    "squeezenet1_1": (64, lambda: get_model("squeezenet1_1", weights=None, num_classes=2)),
    "vit_b_16": (32, lambda: _with_new_head(get_model("vit_b_16", weights=None, image_size=32))),
    "swin_t": (64, None),
    "maxvit_t": (32, _tiny_maxvit),
}

CNNS_WITHOUT_AUX = ("alexnet", "vgg11", "densenet121", "convnext_tiny", "regnet_x_400mf")
EXPECTED_LAYER = {
    "alexnet": ("features.10", None),
    "googlenet": ("inception5b.branch4.1.conv", None),
    "vit_b_16": ("encoder.layers.encoder_layer_11.ln_1", vit_reshape_transform),
    "swin_t": ("norm", nhwc_reshape_transform),
    "maxvit_t": ("blocks.1", None),
}


def _build(name: str) -> nn.Module:
    size, builder = CASES[name]
    if builder is not None:
        return builder()
    model, info = build_model(name, weights="none")
    if name in CNNS_WITHOUT_AUX:
        # default_target_layer keeps build_model's choice (the last Conv2d) for these
        assert default_target_layer(model) == (info.target_layer, None)
    return model


def _set_batchnorm_statistics(model: nn.Module, x: torch.Tensor) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def test_cases_are_offered_models():
    offered = set(available_models())
    assert set(CASES) <= offered, sorted(set(CASES) - offered)


@pytest.mark.parametrize("name", list(CASES))
def test_gradcam_explains_offered_model(name):
    torch.manual_seed(0)
    size = CASES[name][0]
    model = _build(name)
    _set_batchnorm_statistics(model, torch.randn(4, 3, size, size))
    layer, reshape = default_target_layer(model)
    if name in EXPECTED_LAYER:
        assert (layer, reshape) == EXPECTED_LAYER[name]
    x = torch.randn(2, 3, size, size)
    classes = np.array([0, 1])
    with CamExplainer(model, layer, "gradcam", fast=True) as ex:
        fast = ex.compute(x, target=classes).heatmaps
    with CamExplainer(model, layer, "gradcam", fast=False) as ex:
        full = ex.compute(x, target=classes).heatmaps
    assert fast.shape == (2, size, size)
    assert np.isfinite(fast).all()
    assert fast.reshape(2, -1).std(1).max() > 1e-2, "all heatmaps constant"
    np.testing.assert_allclose(fast, full, atol=1e-5)
    if reshape is not None:
        # an explicit transform is what CamExplainer derives by default
        with CamExplainer(model, layer, "gradcam", reshape_transform=reshape) as ex:
            np.testing.assert_array_equal(ex.compute(x, target=classes).heatmaps, fast)


def test_reshape_transforms_known_answer():
    n, side, c = 2, 3, 4
    grid = torch.arange(n * side * side * c, dtype=torch.float32).reshape(n, side, side, c)
    tokens = torch.cat([torch.full((n, 1, c), -1.0), grid.reshape(n, side * side, c)], 1)
    expected = grid.permute(0, 3, 1, 2)
    assert torch.equal(vit_reshape_transform(tokens), expected)
    assert torch.equal(nhwc_reshape_transform(grid), expected)
    with pytest.raises(ValueError, match="square grid"):
        vit_reshape_transform(tokens[:, :-1])  # 8 patch tokens: no square grid
    with pytest.raises(ValueError, match="shape"):
        nhwc_reshape_transform(tokens)
