"""Batched CAMs through pytorch-grad-cam: same numbers as the library, direction, hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dermcam.attribution import CamExplainer, orient_eigencam, reference_cams
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


# --- EigenCAM orientation ---------------------------------------------------------


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_orient_eigencam_fixes_the_svd_sign():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    rng = np.random.default_rng(0)
    # a blob every channel carries with a positive gain, plus noise: the first principal
    # component is the blob, with whatever sign the SVD picks
    yy, xx = np.mgrid[:8, :8]
    blob = np.exp(-((yy - 2.0) ** 2 + (xx - 5.0) ** 2) / 4.0)
    acts = (rng.uniform(0.5, 2.0, (3, 6, 1, 1)) * blob
            + 0.05 * rng.standard_normal((3, 6, 8, 8))).astype(np.float32)
    proj = get_2d_projection(acts)
    mean = acts.mean(1)
    oriented = orient_eigencam(proj, acts)
    # both signs of the projection (one of them correlates negatively) give the same map
    np.testing.assert_array_equal(orient_eigencam(-proj, acts), oriented)
    for i in range(3):
        assert _corr(-proj[i], mean[i]) * _corr(proj[i], mean[i]) < 0
        assert _corr(oriented[i], mean[i]) > 0.9
        assert abs(_corr(oriented[i], proj[i])) == pytest.approx(1.0)
        assert oriented[i][2, 5] == oriented[i].max()  # the blob is the high end
    with pytest.raises(ValueError, match="shapes"):
        orient_eigencam(proj[:, :4], acts)


class _Depthwise(nn.Module):
    """A small depthwise network: CamExplainer runs it channels-last, where the
    library's SVD sign came out opposite to the contiguous run on some images."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, 2)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _eigencam_case(name):
    torch.manual_seed(1)
    if name == "depthwise":
        return _Depthwise(), "features", torch.randn(8, 3, 16, 16)
    model, info = build_model(name, weights="none")
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    model.eval()
    return model, info.target_layer, torch.randn(4, 3, 64, 64)


@pytest.mark.parametrize("name", ["depthwise", "resnet18"])
def test_eigencam_is_the_library_map_oriented_to_the_mean_activation(name):
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    model, layer, x = _eigencam_case(name)
    n, size = len(x), x.shape[-1]
    classes = np.zeros(n, np.int64)  # EigenCAM ignores the class
    with CamExplainer(model, layer, "eigencam") as ex:
        heat = ex.compute(x, target=classes).heatmaps
    with CamExplainer(model, layer, "eigencam", channels_last=False) as ex:
        heat_contiguous = ex.compute(x, target=classes).heatmaps
    # the orientation does not depend on the memory layout (it did: channels-last flipped)
    np.testing.assert_allclose(heat, heat_contiguous, atol=1e-4)

    # pytorch-grad-cam's own projection of the same activations, oriented by hand
    acts = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: acts.append(o.detach().numpy()))
    with torch.no_grad():
        model(x)
    handle.remove()
    proj = get_2d_projection(acts[0])
    sign = np.array([np.sign(_corr(p, a)) for p, a in zip(proj, acts[0].mean(1))])
    expected = scale_cam_image(scale_cam_image(np.maximum(sign[:, None, None] * proj, 0),
                                               (size, size)))
    np.testing.assert_allclose(heat, expected, atol=1e-4)
    # and where the library's sign already agrees, its own output is dermcam's
    lib = reference_cams(model, layer, x, classes, "eigencam")
    np.testing.assert_allclose(heat[sign > 0], lib[sign > 0], atol=1e-4)


def test_eigen_projection_is_the_librarys_component_without_the_full_svd():
    """The reduced SVD gives pytorch-grad-cam's get_2d_projection up to the sign of each
    image's component (which orient_eigencam fixes), NaNs counted as 0 as there."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from dermcam.attribution import eigen_projection

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(3, 16, 20, 20)).astype(np.float32)
    acts[:, :4] += np.linspace(0, 3, 400, dtype=np.float32).reshape(20, 20)  # a clear axis
    acts[0, 0, 0, 0] = np.nan
    ours = eigen_projection(acts)
    lib = get_2d_projection(acts.copy())
    assert ours.shape == lib.shape == (3, 20, 20)
    for a, b in zip(ours, lib):
        s = np.sign((a * b).sum())
        np.testing.assert_allclose(a, s * b, rtol=1e-4, atol=1e-4)


# --- stopped backward with an in-place op after the hooked layer ---------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_stopped_backward_with_inplace_op_after_layer(method):
    # alexnet's CAM layer features.10 (Conv2d) is followed by ReLU(inplace=True)
    torch.manual_seed(0)
    model, info = build_model("alexnet", weights="none")
    assert isinstance(model.get_submodule("features.11"), nn.ReLU)
    assert model.get_submodule("features.11").inplace
    x = torch.randn(3, 3, 64, 64)
    classes = np.array([0, 1, 1])
    with CamExplainer(model, info.target_layer, method, fast=True) as ex:
        fast = ex.compute(x, target=classes).heatmaps
    with CamExplainer(model, info.target_layer, method, fast=False) as ex:
        full = ex.compute(x, target=classes).heatmaps
    lib = reference_cams(model, info.target_layer, x, classes, method)
    assert fast.shape == (3, 64, 64)
    assert fast.reshape(3, -1).std(1).max() > 1e-2
    np.testing.assert_allclose(fast, full, atol=1e-5)
    np.testing.assert_allclose(fast, lib, atol=1e-4)


class _ConvInplaceRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("fast", [True, False])
def test_inplace_op_after_layer_known_answer(fast):
    """What pytorch-grad-cam computes on CPU when an in-place op follows the layer: the
    stored activation is the post-op one, the gradient the one at the layer's output
    (see ``_reroot_hook``). If a grad-cam upgrade changes this, update that comment."""
    x = torch.tensor([1.0, -1.0, 2.0, -3.0]).reshape(1, 1, 2, 2)  # conv: ch0 = x, ch1 = -x
    with CamExplainer(_ConvInplaceRelu(), "conv", "gradcam", fast=fast) as ex:
        h = ex.compute(x, target="malignant", size=2, normalize="raw").heatmaps[0]
    a = np.stack([x[0, 0].numpy(), -x[0, 0].numpy()])  # pre-op activation
    grad = np.array([1.0, 2.0])[:, None, None] * (a > 0) / 4  # d(logit 1)/d(pre-op)
    expected = np.maximum((grad.mean((1, 2))[:, None, None] * np.maximum(a, 0)).sum(0), 0)
    np.testing.assert_allclose(h, expected, rtol=1e-5)
    # with the pre-op activation the map would differ (negative entries enter the sum)
    assert not np.allclose(expected,
                           np.maximum((grad.mean((1, 2))[:, None, None] * a).sum(0), 0))


def test_layer_that_does_not_run_is_a_clear_error():
    model = _Toy()
    model.unused = nn.Conv2d(3, 2, 1)
    with CamExplainer(model, "unused") as ex:
        with pytest.raises(DermcamError, match="did not run"):
            ex.compute(torch.rand(1, 3, 8, 8))


def test_one_registry_of_cam_methods():
    """Names and classes come from attribution.CAM_METHODS alone (the CLI's help lists
    them: tests/end_to_end/test_cli.py)."""
    from pytorch_grad_cam.base_cam import BaseCAM

    from dermcam.attribution import CAM_METHODS, METHODS, cam_class

    assert METHODS == tuple(CAM_METHODS)
    for name in METHODS:
        assert issubclass(cam_class(name), BaseCAM)
    assert cam_class("gradcam++").__name__ == "GradCAMPlusPlus"
    with pytest.raises(DermcamError, match="unknown CAM method"):
        cam_class("scorecam")
