"""Models trained elsewhere: weights files of every common form, strict fitting, heads
of any size mapped to dermcam's two logits, input re-normalisation, timm models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import write_code_pickle

from dermcam.attribution import (
    CamExplainer,
    default_target_layer,
    layer_reshape_transform,
    nhwc_reshape_transform,
    token_reshape_transform,
)
from dermcam.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from dermcam.errors import DermcamError
from dermcam.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    attach_io,
    build_model,
    candidate_layers,
    check_model_name,
    head_outputs,
)
from dermcam.weight_files import fit_weights, read_weights


def _tiny(outputs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, outputs)).eval()


def _x(n: int = 3, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class HyperParams:  # a custom object a Lightning module might keep in its hyper_parameters
    lr = 0.1


# --- file forms ---------------------------------------------------------------------------

def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


LIGHTNING = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
             "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}

FORMS = {  # name: (what torch.save writes, given the model's state dict; expected form)
    "plain": (lambda s: s, "state dict"),
    "ddp": (lambda s: _prefixed(s, "module."), "DDP state dict"),
    "lightning": (lambda s: {"state_dict": _prefixed(s, "model."), **LIGHTNING},
                  "Lightning checkpoint"),
    "compile": (lambda s: _prefixed(s, "_orig_mod."), "torch.compile state dict"),
    "ddp+compile": (lambda s: _prefixed(s, "module._orig_mod."),
                    "DDP + torch.compile state dict"),
    "lightning+compile": (lambda s: {"state_dict": _prefixed(s, "model._orig_mod."),
                                     **LIGHTNING}, "Lightning checkpoint (torch.compile)"),
    "dermcam": (lambda s: {"format": CHECKPOINT_FORMAT, "arch": "x", "state_dict": s},
                "dermcam checkpoint"),
}


@pytest.mark.parametrize("case", list(FORMS))
def test_every_file_form_is_read_and_stripped(tmp_path, case):
    make, form = FORMS[case]
    src = _tiny().state_dict()
    path = tmp_path / "w.pt"
    torch.save(make(src), path)
    state, got_form, script = read_weights(path)
    assert got_form == form and script is None
    assert list(state) == list(src)
    for k, v in src.items():
        assert torch.equal(state[k], v), k
    model = _tiny(seed=5)
    fit_weights(model, state, "tiny", path)
    assert torch.equal(model[0].weight, src["0.weight"])


def test_a_prefix_is_stripped_only_when_every_key_has_it(tmp_path):
    src = _tiny().state_dict()
    mixed = {**_prefixed(src, "module."), "extra": torch.zeros(1)}
    torch.save(mixed, tmp_path / "w.pt")
    state, form, _ = read_weights(tmp_path / "w.pt")
    assert form == "state dict" and set(state) == set(mixed)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    src = _tiny().state_dict()
    save_file(_prefixed(src, "module."), str(tmp_path / "w.safetensors"))
    state, form, _ = read_weights(tmp_path / "w.safetensors")
    assert form == "safetensors (DDP)" and set(state) == set(src)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace.*` is deprecated:FutureWarning")
def test_torchscript_file_gives_its_module_and_state_dict(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    raw = resnet18(weights=None, num_classes=2).eval()
    x = _x(2, 32)
    path = tmp_path / "traced.pt"
    with torch.no_grad():
        torch.jit.trace(raw, x).save(str(path))
    state, form, script = read_weights(path)
    assert form == "TorchScript" and script is not None
    assert set(state) == set(raw.state_dict())
    model, _ = build_model("resnet18")
    fit_weights(model, state, "resnet18", path)
    with torch.no_grad():
        torch.testing.assert_close(script(x), raw(x))
        torch.testing.assert_close(model.eval()(x), raw(x))


def test_a_pickled_whole_model_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_tiny(), path)
    with pytest.raises(DermcamError) as exc:
        read_weights(path)
    msg = str(exc.value)
    assert "holds a pickled Python object, not a state dict" in msg
    assert "dermcam never unpickles code" in msg
    assert "torch.save(model.state_dict(), PATH)" in msg and "\n" not in msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_code_in_a_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write_code_pickle(tmp_path / "evil.pt", marker)
    with pytest.raises(DermcamError, match="never unpickles code"):
        read_weights(path)
    assert not marker.exists()


def test_lightning_checkpoint_with_custom_hyper_parameters_says_save_the_state_dict(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": _prefixed(_tiny().state_dict(), "model."),
                **LIGHTNING, "hyper_parameters": {"cfg": HyperParams()}}, path)
    with pytest.raises(DermcamError, match=r"torch\.save\(checkpoint\['state_dict'\], PATH\)"):
        read_weights(path)


def test_a_file_that_is_not_torch(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(DermcamError, match="notes.pt: not a PyTorch weights file"):
        read_weights(path)
    with pytest.raises(DermcamError, match="not found"):
        read_weights(tmp_path / "absent.pt")


# --- fitting and heads --------------------------------------------------------------------

def test_key_mismatch_names_counts_and_the_first_few():
    model, _ = build_model("resnet18")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    state.update({"head.weight": torch.zeros(2, 512), "head.bias": torch.zeros(2),
                  "x.y": torch.zeros(1), "x.z": torch.zeros(1)})
    with pytest.raises(DermcamError) as exc:
        fit_weights(model, state, "resnet18", "w.pt")
    assert str(exc.value) == (
        "w.pt: weights do not fit resnet18: missing 2 (fc.weight, fc.bias), unexpected 4 "
        "(head.weight, head.bias, x.y …), wrong shape 1 (conv1.weight: file (64, 1, 7, 7), "
        "model (64, 3, 7, 7))")


def test_head_outputs_reads_the_files_head():
    model, _ = build_model("resnet18", num_classes=7)
    state = model.state_dict()
    assert head_outputs(model, state) == 7
    timm_model, _ = build_model("timm:resnet18", num_classes=3)
    assert head_outputs(timm_model, timm_model.state_dict()) == 3
    with pytest.raises(DermcamError, match=r"no classifier head \(fc\.weight\)"):
        head_outputs(model, {k: v for k, v in state.items() if not k.startswith("fc.")})


# --- attach_io: dermcam's two logits and inputs --------------------------------------------

def _p_malignant(model, x) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), 1)[:, 1]


def test_one_output_is_a_sigmoid():
    raw = _tiny(1)
    hooked = attach_io(copy.deepcopy(raw), 1)
    x = _x()
    with torch.no_grad():
        z = raw(x)[:, 0]
    expected = 1 / (1 + torch.exp(-z))
    torch.testing.assert_close(_p_malignant(hooked, x), expected, atol=1e-6, rtol=0)
    flipped = attach_io(copy.deepcopy(raw), 1, malignant=(0,))  # the sigmoid scores benign
    torch.testing.assert_close(_p_malignant(flipped, x), 1 - expected, atol=1e-6, rtol=0)


def test_two_outputs_with_malignant_first_are_swapped():
    raw = _tiny(2)
    x = _x()
    with torch.no_grad():
        expected = torch.softmax(raw(x), 1)[:, 0]
    hooked = attach_io(copy.deepcopy(raw), 2, malignant=(0,))
    torch.testing.assert_close(_p_malignant(hooked, x), expected, atol=1e-6, rtol=0)
    same = attach_io(copy.deepcopy(raw), 2)  # [benign, malignant] already: no hooks at all
    assert not same._forward_hooks and not same._forward_pre_hooks
    assert same.dermcam_io == {"outputs": 2, "malignant": [1],
                               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def test_many_outputs_sum_the_malignant_classes():
    raw = _tiny(7)
    x = _x()
    with torch.no_grad():
        expected = torch.softmax(raw(x), 1)[:, [0, 1, 4]].sum(1)
    hooked = attach_io(copy.deepcopy(raw), 7, malignant=(0, 1, 4))
    with torch.no_grad():
        out = hooked(x)
    assert out.shape == (3, 2)
    torch.testing.assert_close(torch.softmax(out, 1)[:, 1], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("outputs, malignant, match", [
    (7, (7,), "not an output"), (7, (-1,), "not an output"), (7, (1, 1), "repeat"),
    (3, (0, 1, 2), "leave at least one benign"), (2, (0, 1), "leave at least one benign"),
    (7, (), "at least one malignant"), (1, (2,), "one-output"), (0, (1,), "at least one output"),
])
def test_bad_malignant_classes_are_refused(outputs, malignant, match):
    with pytest.raises(DermcamError, match=match) as exc:
        attach_io(_tiny(max(outputs, 1)), outputs, malignant)
    assert "\n" not in str(exc.value)


def test_inputs_are_renormalised_to_the_models_own_mean_and_std():
    raw = _tiny(2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.5)
    hooked = attach_io(copy.deepcopy(raw), 2, mean=mean, std=std)
    x01 = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        got = hooked((x01 - m) / s)
        expected = raw((x01 - torch.tensor(mean).view(1, 3, 1, 1))
                       / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hooks_survive_deepcopy_and_to_and_are_replaced_not_stacked():
    raw = _tiny(7)
    hooked = attach_io(copy.deepcopy(raw), 7, malignant=(2,), mean=(0.5,) * 3, std=(0.5,) * 3)
    x = _x()
    with torch.no_grad():
        ref = hooked(x)
    twin = copy.deepcopy(hooked)
    assert twin.dermcam_io == hooked.dermcam_io
    with torch.no_grad():
        assert torch.equal(twin(x), ref)
        twin.to("cpu").double()
        torch.testing.assert_close(twin(x.double()).float(), ref, atol=1e-5, rtol=1e-5)
    attach_io(hooked, 7, malignant=(2,), mean=(0.5,) * 3, std=(0.5,) * 3)  # again: same
    assert len(hooked._forward_hooks) == 1 and len(hooked._forward_pre_hooks) == 1
    with torch.no_grad():
        assert torch.equal(hooked(x), ref)


# --- timm models and CAM layers -----------------------------------------------------------

def test_timm_names_are_checked():
    assert check_model_name("timm:resnet18") == "timm:resnet18"
    with pytest.raises(DermcamError, match=r"timm\.list_models\('\*resnet\*'\)") as exc:
        check_model_name("timm:resnet9000")
    assert "\n" not in str(exc.value)


def test_registry_models_keep_their_layers():
    for name, spec in REGISTRY.items():
        model, info = build_model(name)
        assert (info.target_layer, info.candidate_layers) == (spec.cam_layer,
                                                              spec.candidate_layers)
        assert candidate_layers(model) == spec.candidate_layers
    one, _ = build_model("resnet18", num_classes=1)  # any head size: still resnet18
    assert candidate_layers(one) == REGISTRY["resnet18"].candidate_layers
    other, _ = build_model("resnet34")
    assert candidate_layers(other) == (default_target_layer(other)[0],)


def _gradcam(model, layer, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    with CamExplainer(model, layer, "gradcam") as ex:
        heat = ex.compute(x, target=np.array([0, 1])).heatmaps
    assert heat.shape == (2, size, size)
    assert np.isfinite(heat).all()
    return heat


def test_timm_resnet18():
    model, info = build_model("timm:resnet18", num_classes=2)
    assert info.display_name == "timm:resnet18"
    assert info.candidate_layers == ("layer1", "layer2", "layer3", "layer4")
    assert info.target_layer == "layer4" == candidate_layers(model)[-1]
    heat = _gradcam(model, info.target_layer, 64)
    assert heat.reshape(2, -1).std(1).max() > 0


def test_timm_vit_at_a_small_size():
    model, info = build_model("timm:vit_tiny_patch16_224", image_size=32)
    assert tuple(model.patch_embed.grid_size) == (2, 2)
    assert info.candidate_layers == ("blocks.2.norm1", "blocks.5.norm1", "blocks.8.norm1",
                                     "blocks.11.norm1")
    assert default_target_layer(model)[0] == info.target_layer == "blocks.11.norm1"
    _gradcam(model, info.target_layer, 32)


def test_token_transform_drops_every_prefix_token():
    n, h, w, c = 2, 2, 3, 4
    grid = torch.arange(n * h * w * c, dtype=torch.float32).reshape(n, h, w, c)
    tokens = torch.cat([torch.full((n, 2, c), -1.0), grid.reshape(n, h * w, c)], 1)
    expected = grid.permute(0, 3, 1, 2)
    assert torch.equal(token_reshape_transform(tokens, prefix=2, grid=(h, w)), expected)
    with pytest.raises(ValueError, match="square grid"):
        token_reshape_transform(tokens, prefix=2)  # 6 patch tokens, no grid given


def test_timm_swin_and_torchvision_token_models():
    from timm.models.swin_transformer import SwinTransformer
    from torchvision.models import VisionTransformer

    swin = SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=8,
                           depths=(1, 1), num_heads=(1, 1), num_classes=2)
    assert candidate_layers(swin) == ("layers.0", "layers.1")
    assert default_target_layer(swin) == ("layers.1", nhwc_reshape_transform)
    assert layer_reshape_transform(swin, "patch_embed.proj") is None  # a conv: NCHW
    _gradcam(swin, "layers.1", 32)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=6, num_heads=2,
                            hidden_dim=8, mlp_dim=16, num_classes=2)
    assert candidate_layers(vit) == tuple(f"encoder.layers.encoder_layer_{i}.ln_1"
                                          for i in (1, 2, 4, 5))


def test_timm_weights_file_loads_strictly(tmp_path):
    src, _ = build_model("timm:resnet18", num_classes=1)
    torch.save(_prefixed(src.state_dict(), "module."), tmp_path / "w.pt")
    model, info = build_model("timm:resnet18", weights=str(tmp_path / "w.pt"), num_classes=1)
    assert info.weights_source.startswith("file:")
    assert torch.equal(model.fc.weight, src.fc.weight)
    with pytest.raises(DermcamError, match="weights do not fit timm:resnet18: wrong shape 2"):
        build_model("timm:resnet18", weights=str(tmp_path / "w.pt"), num_classes=2)


# --- checkpoints --------------------------------------------------------------------------

def test_checkpoint_with_outputs_and_io_round_trips(tmp_path):
    raw, _ = build_model("resnet18", num_classes=1)
    raw.eval()
    io = {"outputs": 1, "malignant": [1], "mean": [0.5] * 3, "std": [0.5] * 3}
    path = tmp_path / "model.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "arch": "resnet18",
                "state_dict": raw.state_dict(), "num_outputs": 1, "io": io,
                "source": {"file": "elsewhere.pt", "form": "state dict"}}, path)
    model, info, payload = load_checkpoint(path)
    assert model.dermcam_io == io and info.target_layer == "layer4"
    x01 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.sigmoid(raw((x01 - 0.5) / 0.5)[:, 0])
    torch.testing.assert_close(_p_malignant(model, (x01 - m) / s), expected,
                               atol=1e-6, rtol=1e-5)


def test_timm_checkpoint_is_built_at_its_image_size(tmp_path):
    src, _ = build_model("timm:vit_tiny_patch16_224", num_classes=3, image_size=32)
    path = tmp_path / "model.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "arch": "timm:vit_tiny_patch16_224",
                "state_dict": src.state_dict(), "num_outputs": 3, "image_size": 32,
                "io": {"outputs": 3, "malignant": [2], "mean": [0.5] * 3,
                       "std": [0.5] * 3}}, path)
    model, info, _ = load_checkpoint(path)
    assert info.target_layer == "blocks.11.norm1"
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
