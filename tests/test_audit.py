"""dermcam.audit: the attention table of any two-class torch classifier, without a run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_attribution import _Toy

from dermcam.attribution import reference_cams
from dermcam.audit import audit_folder, audit_images, audit_summary
from dermcam.errors import DermcamError
from dermcam.leakage import VERDICTS


def _red_where(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: red where ``mask``, green elsewhere."""
    img = np.zeros((*mask.shape, 3), np.uint8)
    img[mask, 0] = 255
    img[~mask, 1] = 255
    return img


def _disc(n: int, r: int, cx: int, cy: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_known_answers_with_a_model_whose_evidence_is_red():
    """The toy scores 'malignant' by red pixels: a red lesion is where its Grad-CAM for
    malignant lies (leakage 0, pixel AUROC 1); red outside the lesion, it leaks fully."""
    masks = np.stack([_disc(32, 8, 12, 14), _disc(32, 10, 18, 16), _disc(32, 6, 16, 16)])
    images = np.stack([_red_where(masks[0]), _red_where(masks[1]), _red_where(~masks[2])])
    t = audit_images(_Toy(), "features", images, masks, labels=[1, 1, 0],
                     image_ids=["a", "b", "c"])
    assert list(t["image_id"]) == ["a", "b", "c"] and list(t["label"]) == [1, 1, 0]
    assert (t["cam_target"] == 1).all() and (t["method"] == "gradcam").all()
    np.testing.assert_allclose(t["leakage"][:2], 0.0, atol=1e-6)
    np.testing.assert_allclose(t["pixel_auroc"][:2], 1.0)
    assert t["leakage"][2] == pytest.approx(1.0)  # all the evidence outside the lesion
    assert t["pixel_auroc"][2] == pytest.approx(0.0)
    # chance leakage is 1 - lesion area, whatever the model
    np.testing.assert_allclose(t["chance_leakage"], 1 - masks.mean(axis=(1, 2)))


def test_heatmaps_are_pytorch_grad_cams_own():
    """The metrics are scored on pytorch-grad-cam's maps: leakage recomputed from its
    GradCAM for the malignant class equals the audit's."""
    from dermcam.augment import preprocess
    from dermcam.leakage import score_batch
    from dermcam.models import build_model

    torch.manual_seed(0)
    model, info = build_model("resnet18", weights="none")
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-degenerate BatchNorm statistics
    model.eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    masks = np.stack([_disc(32, 6 + i, 16, 16) for i in range(5)])
    t = audit_images(model, "layer3", images, masks)
    lib = reference_cams(model, "layer3", preprocess(torch.from_numpy(images)),
                         np.ones(5, np.int64), "gradcam")
    values, _ = score_batch(lib, masks)
    np.testing.assert_allclose(t["leakage"], values["leakage"], atol=1e-4)
    assert "label" not in t.columns  # no labels given, none invented
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_bad_inputs_are_refused():
    masks = np.ones((2, 16, 16), bool)
    images = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="masks must be"):
        audit_images(_Toy(), "features", images, masks[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        audit_images(_Toy(), "features", images.astype(np.float32), masks)
    with pytest.raises(ValueError, match="labels"):
        audit_images(_Toy(), "features", images, masks, labels=[0, 2])

    class OneLogit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Conv2d(3, 1, 1)

        def forward(self, x):
            return self.features(x).mean(dim=(2, 3))

    with pytest.raises(DermcamError, match="two logits"):
        audit_images(OneLogit(), "features", images, masks)
    with pytest.raises(DermcamError, match="no layer"):
        audit_images(_Toy(), "layer9", images, masks)


def test_folder_and_summary(make_generic):
    """A data folder of the generic layout: every masked test image, in one table, and
    the statistics dermcam reports on it."""
    from helpers import generic_labels

    labels = generic_labels(20, 20)
    split = {k: ("test" if i % 2 else "train") for i, k in enumerate(labels)}
    root = make_generic(labels, split=split, masks=True)
    t = audit_folder(_Toy(), "features", root, image_size=32)
    assert len(t) == 20 and set(t["label"]) == {0, 1}
    assert isinstance(t, pd.DataFrame) and t["leakage"].between(0, 1).all()
    s = audit_summary(t, n_boot=200)
    assert set(s) == {"guard", "by_class", "size_confound"}
    assert s["size_confound"]["n"] == len(t) and s["size_confound"]["verdict"] in VERDICTS
    assert set(s["by_class"]["metric"]) == {"leakage", "excess_leakage", "pixel_auroc"}
