"""Model factory: heads, CAM layers, weights sources (ImageNet cache, files), safe loading."""

from __future__ import annotations

import pytest
import torch
from helpers import write_code_pickle

from dermcam.errors import DermcamError
from dermcam.models import REGISTRY, build_model, imagenet_weights_path, load_state_file


@pytest.mark.parametrize("name", list(REGISTRY))
def test_two_class_head_and_cam_layer_is_last_conv_block(name):
    model, info = build_model(name, weights="none")
    model.eval()
    seen = {}
    layer = model.get_submodule(info.target_layer)
    def hook(module, inputs, output):
        seen["shape"] = output.shape

    h = layer.register_forward_hook(hook)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    h.remove()
    assert out.shape == (2, 2)
    # the last conv block of all three nets downsamples by 32 and feeds the pooling head
    assert seen["shape"][0] == 2 and seen["shape"][-1] == 2 and seen["shape"][-2] == 2
    assert info.weights_source.startswith("none")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(DermcamError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")


def test_other_torchvision_model_by_name():
    model, info = build_model("resnet34", weights="none")
    assert model.fc.out_features == 2
    assert info.target_layer.startswith("layer4")


def test_imagenet_offline_without_cache_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(DermcamError) as exc:
        build_model("resnet18", weights="imagenet")
    msg = str(exc.value)
    assert "not cached" in msg and "--weights none" in msg and str(tmp_path) in msg


def test_imagenet_weights_come_from_torchvision_cache(tmp_path, monkeypatch):
    """A file at torchvision's cache path (TORCH_HOME) is what --weights imagenet loads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import resnet18

    ref = resnet18(weights=None, num_classes=1000)
    path = imagenet_weights_path("resnet18")
    assert str(path).startswith(str(tmp_path))
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    # random weights under torchvision's name fail its hash, in one line naming the file
    with pytest.raises(DermcamError, match="does not match torchvision's: its SHA-256 begins") \
            as exc:
        build_model("resnet18", weights="imagenet")
    assert str(path) in str(exc.value) and path.name.split("-")[1][:8] in str(exc.value)
    monkeypatch.setenv("DERMCAM_TRUST_WEIGHTS", "1")  # weights of one's own making
    model, info = build_model("resnet18", weights="imagenet")
    assert info.weights_source.startswith("imagenet:")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert model.fc.out_features == 2  # the ImageNet head is replaced


def test_weights_from_a_state_dict_file(tmp_path):
    src, _ = build_model("mobilenet_v2", weights="none")
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    model, info = build_model("mobilenet_v2", weights=str(path))
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    assert info.weights_source == f"file:{path.resolve()}"


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    src, _ = build_model("resnet18", weights="none")
    path = tmp_path / "r18.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(DermcamError, match="another architecture"):
        build_model("mobilenet_v2", weights=str(path))
    torch.save({"arch": "resnet18", "state_dict": src.state_dict()}, path)
    with pytest.raises(DermcamError, match="architecture 'resnet18'"):
        build_model("efficientnet_b0", weights=str(path))



def test_pickle_carrying_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write_code_pickle(tmp_path / "evil.pt", marker)
    with pytest.raises(DermcamError, match="refused"):
        load_state_file(path)
    assert not marker.exists()


def test_weights_file_that_is_not_torch(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(DermcamError, match="notes.pt"):
        build_model("resnet18", weights=str(path))


def test_weights_saved_from_data_parallel_load_without_their_prefix():
    import torch

    from dermcam.models import build_model, load_weights_into, state_dict_of

    src, _ = build_model("resnet18", "none")
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    assert set(state_dict_of({"state_dict": wrapped})) == set(src.state_dict())
    dst, _ = build_model("resnet18", "none")
    load_weights_into(dst, "resnet18", wrapped, "dp.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    # a key that merely starts with "module" elsewhere is left alone
    assert state_dict_of({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}
