"""Bring your own model: a dermcam-trained ResNet18 exported the ways people hold
weights, audited as an outside model, gives the trained run's numbers; other heads,
timm models and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import easy_generic, invoke_cli

from dermcam import run as runmod
from dermcam.config import EvaluateConfig, ExplainConfig, ProbeConfig, TrainConfig
from dermcam.errors import DermcamError
from dermcam.models import IMAGENET_MEAN, IMAGENET_STD
from dermcam.outside import Reading, import_model, load_outside, read_module
from dermcam.stages.train import train

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

SIZE = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained, evaluated and explained run, and its model's weights in plain form."""
    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain

    base = tmp_path_factory.mktemp("byom")
    data = easy_generic(base / "data", n=40)
    out = base / "run"
    train(TrainConfig(data=str(data), out=str(out), models=["resnet18"], weights="none",
                      image_size=SIZE, max_epochs=2, batch_size=8, seed=0, progress=False,
                      cache_dir=str(base / "cache")))
    run_evaluate(out, EvaluateConfig(n_boot=50))
    run_explain(out, ExplainConfig(methods=["gradcam"], layer="layer3", sanity=False, n_boot=50,
                                   figures=False))
    model = runmod.Run.open(out).load_model("resnet18")[0]
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    return {"base": base, "data": data, "run": out, "state": plain, "model": model}


def _reading(**kw) -> Reading:
    return Reading(**{"arch": "resnet18", "image_size": SIZE, **kw})


def _import(trained, weights, out, **kw) -> runmod.Run:
    reading = _reading(cache_dir=str(trained["base"] / "cache"), **kw)
    model, info, io, source = load_outside(weights, reading)
    return import_model(model, info, io, source, trained["data"], out, reading)


def _probs(run: runmod.Run, name: str, x: torch.Tensor) -> np.ndarray:
    from dermcam.calibration import calibrated_prob

    model = run.load_model(name)[0].eval()
    with torch.no_grad():
        return calibrated_prob(model, model(x)).numpy()


def _test_images(run: runmod.Run) -> torch.Tensor:
    from dermcam.augment import preprocess

    items = [run.cache.get(s, SIZE)["image"] for s in run.test_samples()]
    return preprocess(torch.from_numpy(np.stack(items)))


def _one_logit(state: dict) -> dict:
    """The same network with one output, z1 - z0."""
    s = dict(state)
    s["fc.weight"] = (state["fc.weight"][1] - state["fc.weight"][0])[None]
    s["fc.bias"] = (state["fc.bias"][1] - state["fc.bias"][0])[None]
    return s


@pytest.mark.parametrize("form", ["plain", "lightning", "ddp", "compiled", "one_logit"])
def test_each_file_form_gives_the_trained_runs_threshold_and_probabilities(trained, tmp_path,
                                                                           form):
    state = trained["state"]
    obj = {
        "plain": state,
        "lightning": {"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.5.0",
                      "state_dict": {f"model.{k}": v for k, v in state.items()}},
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "one_logit": _one_logit(state),
    }[form]
    torch.save(obj, tmp_path / "w.pt")
    run = _import(trained, tmp_path / "w.pt", tmp_path / "r")
    own = runmod.Run.open(trained["run"])
    assert run.thresholds["resnet18"] == pytest.approx(own.thresholds["resnet18"], abs=1e-6)
    x = _test_images(own)
    np.testing.assert_allclose(_probs(run, "resnet18", x), _probs(own, "resnet18", x),
                               atol=1e-5)
    source = run.model_record("resnet18")["source"]
    assert source["sha256"] == __import__("hashlib").sha256(
        (tmp_path / "w.pt").read_bytes()).hexdigest()
    assert ("one logit" in source["read_as"]) == (form == "one_logit")
    recorded = run.model_record("resnet18")["input"]  # preprocessing, in the manifest
    assert recorded["mean"] == list(IMAGENET_MEAN) and recorded["std"] == list(IMAGENET_STD)
    assert (recorded["image_size"], recorded["resize"]) == (SIZE, "squash")
    assert recorded["outputs"] == (1 if form == "one_logit" else 2)


def test_torchscript_runs_in_the_architecture_and_must_agree_with_it(trained, tmp_path):
    from torchvision.models import resnet18

    module = resnet18(num_classes=2).eval()
    module.load_state_dict(trained["state"])
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 3, SIZE, SIZE)), tmp_path / "m.ts")
    run = _import(trained, tmp_path / "m.ts", tmp_path / "r")
    own = runmod.Run.open(trained["run"])
    x = _test_images(own)
    np.testing.assert_allclose(_probs(run, "resnet18", x), _probs(own, "resnet18", x),
                               atol=1e-5)
    assert run.model_record("resnet18")["source"]["form"] == "TorchScript"

    from torchvision.models.resnet import BasicBlock, ResNet

    class Halved(ResNet):  # preprocessing inside the scripted forward, same weights
        def forward(self, x):
            return super().forward(x * 0.5)

    halved = Halved(BasicBlock, [2, 2, 2, 2], num_classes=2).eval()
    halved.load_state_dict(trained["state"])
    torch.jit.save(torch.jit.trace(halved, torch.randn(1, 3, SIZE, SIZE)), tmp_path / "h.ts")
    with pytest.raises(DermcamError, match="not the plain resnet18"):
        _import(trained, tmp_path / "h.ts", tmp_path / "r2")


def test_audited_run_gives_the_trained_runs_attention_table(trained, tmp_path):
    from dermcam.stages.explain import run_explain

    torch.save(trained["state"], tmp_path / "w.pt")
    run = _import(trained, tmp_path / "w.pt", tmp_path / "r")
    run_explain(run.dir, ExplainConfig(methods=["gradcam"], layer="layer3", sanity=False, n_boot=50,
                                       figures=False))
    mine = pd.read_csv(run.outputs.attention)
    theirs = pd.read_csv(runmod.Run.open(trained["run"]).outputs.attention)
    assert len(mine) == len(theirs) > 0
    pd.testing.assert_frame_equal(mine, theirs)


def test_seven_classes_read_as_the_summed_softmax_of_the_malignant_ones(trained, tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    raw = resnet18(num_classes=7).eval()
    torch.save(raw.state_dict(), tmp_path / "ham.pt")
    with pytest.raises(DermcamError, match="7 outputs .*--malignant-classes"):
        _import(trained, tmp_path / "ham.pt", tmp_path / "refused")
    run = _import(trained, tmp_path / "ham.pt", tmp_path / "r", malignant=(0, 1, 4),
                  calibration="none")
    x = _test_images(run)
    with torch.no_grad():
        want = torch.softmax(raw(x), 1)[:, [0, 1, 4]].sum(1).numpy()
    np.testing.assert_allclose(_probs(run, "resnet18", x), want, atol=1e-5)
    assert run.model_record("resnet18")["source"]["read_as"].startswith("7 logits, classes 0, 1, 4")


def test_folded_bf16_copy_keeps_an_outside_models_head(trained, tmp_path):
    """The probes score a BatchNorm-folded copy (torch.fx drops root hooks): a one-logit
    model must still read as P = sigmoid(z) there."""
    from dermcam.inference import Bf16Inference, folded_for_inference

    torch.save(_one_logit(trained["state"]), tmp_path / "w.pt")
    run = _import(trained, tmp_path / "w.pt", tmp_path / "r")
    model = run.load_model("resnet18")[0]
    x = _test_images(run)
    with torch.no_grad():
        want = model(x)
        assert want.shape == (len(x), 2)
        torch.testing.assert_close(folded_for_inference(model)(x), want, atol=1e-4, rtol=0)
        assert Bf16Inference(model)(x).shape == want.shape


def test_two_logits_with_class_0_malignant(trained, tmp_path):
    s = dict(trained["state"])
    s["fc.weight"], s["fc.bias"] = s["fc.weight"].flip(0), s["fc.bias"].flip(0)
    torch.save(s, tmp_path / "w.pt")
    run = _import(trained, tmp_path / "w.pt", tmp_path / "r", malignant=(0,))
    own = runmod.Run.open(trained["run"])
    x = _test_images(own)
    np.testing.assert_allclose(_probs(run, "resnet18", x), _probs(own, "resnet18", x),
                               atol=1e-5)


def test_a_module_in_memory_is_recognised_and_audited_the_same(trained, tmp_path):
    from torchvision.models import resnet18

    module = resnet18(num_classes=2)
    module.load_state_dict(trained["state"])
    reading = _reading(arch=None, cache_dir=str(trained["base"] / "cache"))
    reading.arch = __import__("dermcam.outside", fromlist=["infer_arch"]).infer_arch(module)
    assert reading.arch == "resnet18"
    model, info, io, source = read_module(module, reading)
    run = import_model(model, info, io, source, trained["data"], tmp_path / "r", reading)
    assert run.thresholds["resnet18"] == pytest.approx(
        runmod.Run.open(trained["run"]).thresholds["resnet18"], abs=1e-6)


def test_full_audit_from_the_command_line(trained, tmp_path, monkeypatch, capsys):
    """`dermcam audit` writes the whole run; its test ROC AUC is the trained run's."""
    from dermcam.stages.evaluate import run_evaluate

    torch.save(trained["state"], tmp_path / "w.pt")
    monkeypatch.setenv("DERMCAM_CACHE", str(trained["base"] / "cache"))
    code, out, err = invoke_cli(monkeypatch, capsys, "audit", tmp_path / "w.pt", "--arch",
                                "resnet18", "--data", trained["data"], "--image-size", SIZE,
                                "--out", tmp_path / "r", "--placements", 1)
    assert code == 0, err
    run = runmod.Run.open(tmp_path / "r")
    for f in ("metrics.json", "attention_summary.json", "probe_summary.json",
              "findings.json", "report.html"):
        assert (run.dir / f).is_file(), f
    summary = json.loads(run.outputs.attention_summary.read_text())
    assert summary["localisation"]  # the benchmark chose the layer
    own = json.loads(runmod.Run.open(trained["run"]).outputs.metrics.read_text())
    mine = json.loads(run.outputs.metrics.read_text())
    auc = mine["models"]["resnet18"]["threshold_free"]["roc_auc"]["value"]
    assert auc == own["models"]["resnet18"]["threshold_free"]["roc_auc"]["value"]
    assert "report:" in out and run.model_record("resnet18")["source"]["form"] == "state dict"
    found = {f["topic"]: f["sentence"] for f in json.loads(
        (run.dir / "findings.json").read_text())["findings"]}
    assert "at its threshold (Youden J on validation)" in found["discrimination"]
    assert found["calibration"].endswith("(after Platt scaling fitted on validation).")
    page = (run.dir / "report.html").read_text()
    assert "Audited models (trained outside dermcam)" in page and "w.pt" in page
    assert "history.png" not in page and "Training (best checkpoint" not in page
    # afterwards an ordinary run
    again = run_evaluate(run.dir, EvaluateConfig(n_boot=20))["models"]["resnet18"]
    assert again["threshold_free"]["roc_auc"]["value"] == auc


def _audited_end_to_end(run: runmod.Run) -> None:
    """Every masked test image explained, some map scored, the probes and the report
    written."""
    att = pd.read_csv(run.outputs.attention)
    assert len(att) == len(run.test_samples(require_masks=True))
    assert np.isfinite(att["pixel_auroc"]).any()
    assert (run.dir / "report.html").is_file()
    assert json.loads(run.outputs.probe_summary.read_text())["entries"]


def test_a_timm_token_model_audited_end_to_end(trained, tmp_path):
    """The whole timm path through ``dermcam.audit``: a ViT, its 16 px patches a 3 x 3
    grid of tokens at 48 px."""
    import timm

    import dermcam

    arch = "timm:vit_tiny_patch16_224"
    with torch.random.fork_rng(devices=[]):  # the same random weights in every session
        torch.manual_seed(0)
        model = timm.create_model(arch.split(":")[1], pretrained=False, num_classes=2,
                                  img_size=48)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    run = dermcam.audit(tmp_path / "w.pt", trained["data"], tmp_path / "r", arch=arch,
                        image_size=48, placements=1, cache_dir=str(trained["base"] / "cache"))
    _audited_end_to_end(run)


def test_a_timm_cnn_audited_end_to_end(trained, tmp_path):
    """A timm CNN through the audit's stages, as ``dermcam.audit`` runs them: its weights
    read by timm's architecture, the benchmark choosing method and layer among its own,
    every probe on its BatchNorm-folded copy, the report. What no architecture changes is
    left to the two full audits above (torchvision's ResNet18 from the command line, timm's
    ViT): the sanity check, the figures, evaluate's and the probes' 1000 bootstrap draws."""
    import timm

    from dermcam.stages.evaluate import run_evaluate
    from dermcam.stages.explain import run_explain
    from dermcam.stages.probe import PROBES, run_probe
    from dermcam.stages.report import run_report

    with torch.random.fork_rng(devices=[]):  # the same random weights in every session
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    run = _import(trained, tmp_path / "w.pt", tmp_path / "r", arch="timm:resnet18")
    run_evaluate(run.dir, EvaluateConfig(n_boot=50))
    run_explain(run.dir, ExplainConfig(methods=["auto"], sanity=False, figures=False))
    run_probe(run.dir, ProbeConfig(probes=[*PROBES, "hot_spots"], placements=1, n_boot=50,
                                   figures=False, precision="auto"))
    run_report(run.dir)
    _audited_end_to_end(runmod.Run.open(run.dir))


def test_refusals_are_one_line(trained, tmp_path, monkeypatch, capsys):
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=2), tmp_path / "whole.pt")  # a pickled module
    code, out, err = invoke_cli(monkeypatch, capsys, "audit", tmp_path / "whole.pt", "--arch",
                                "resnet18", "--data", trained["data"], "--out", tmp_path / "r")
    assert code != 0 and "state_dict()" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    torch.save(resnet18(num_classes=2).state_dict(), tmp_path / "r18.pt")
    code, out, err = invoke_cli(monkeypatch, capsys, "audit", tmp_path / "r18.pt", "--arch",
                                "mobilenet_v2", "--data", trained["data"], "--out",
                                tmp_path / "r")
    assert code != 0 and "missing" in err and "unexpected" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_cam_method_that_cannot_run_is_left_out_of_the_choice(monkeypatch):
    """The benchmark says per method what could not run instead of failing."""
    from dermcam import attribution
    from dermcam import localisation as loc
    from dermcam.models import build_model

    real = attribution.cam_class

    def cam_class(method):
        cls = real(method)
        if method != "gradcam++":
            return cls

        class Broken(cls):
            def get_cam_image(self, *a, **k):
                raise ValueError("Invalid grads shape.")
        return Broken

    monkeypatch.setattr(attribution, "cam_class", cam_class)
    # localisation holds its own name for it (imported at its top)
    monkeypatch.setattr(loc, "cam_class", cam_class)
    torch.manual_seed(0)
    model = build_model("resnet18", "none")[0].eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    masks = np.zeros((4, SIZE, SIZE), bool)
    masks[:, 8:24, 8:24] = True
    rows = loc.score_candidates(model, "resnet18", ("layer3", "layer4"), ("gradcam", "gradcam++"),
                                x, masks, np.ones(4, np.int64), SIZE, n_boot=20)
    broken = [r for r in rows if r["method"] == "gradcam++"]
    assert len(broken) == 2 and all(r["error"] == "cannot run at this layer"
                                    and not r["better_than_uniform"] for r in broken)
    assert all("error" not in r for r in rows if r["method"] == "gradcam")
    assert loc.choose(rows, "layer4", "gradcam")[0] != "gradcam++"
