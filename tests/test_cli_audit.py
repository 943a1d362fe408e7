"""``dermcam audit``: a model trained elsewhere (state dict or TorchScript) audited on a
data folder, without a run; the same table as :func:`dermcam.audit.audit_folder`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import invoke_cli

from dermcam.audit import audit_folder
from dermcam.leakage import METRICS
from dermcam.models import build_model

SIZE = 32  # image side the audit resizes to: tiny, fast
COLUMNS = ["image_id", "label", "prob_malignant", "cam_target", "method", "layer",
           *METRICS, "reason"]

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")


def _model():
    """A seeded resnet18 with a 2-class head and non-degenerate BatchNorm statistics."""
    torch.manual_seed(0)
    model, _ = build_model("resnet18", weights="none")
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same model as a state dict, a TorchScript file, and misfits."""
    d = tmp_path_factory.mktemp("weights")
    model = _model()
    torch.save(model.state_dict(), d / "model.pt")
    torch.jit.save(torch.jit.script(model), d / "model_script.pt")
    # TorchScript whose forward is not the plain resnet18 (same weights, logits x 2)
    doubled = _model()
    base = type(doubled)
    doubled.__class__ = type("Doubled", (base,), {"forward": lambda s, x: base.forward(s, x) * 2})
    torch.jit.save(torch.jit.trace(doubled, torch.zeros(1, 3, SIZE, SIZE)), d / "doubled.pt")
    from torchvision.models import resnet18
    torch.save(resnet18(num_classes=1000).state_dict(), d / "imagenet_head.pt")
    torch.save(build_model("mobilenet_v2", "none")[0].state_dict(), d / "mobilenet.pt")
    (d / "junk.pt").write_text("not a model\n")
    return {"model": model, "dir": d}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMCAM_CACHE", str(tmp_path / "cache"))


def _audit(monkeypatch, capsys, weights, data, out, *extra):
    return invoke_cli(monkeypatch, capsys, "audit", weights, "--data", data,
                      "--image-size", SIZE, "--n-boot", 50, "--out", out, *extra)


def test_state_dict_table_equals_the_python_api(files, generic_root, tmp_path, monkeypatch,
                                                capsys):
    code, out, err = _audit(monkeypatch, capsys, files["dir"] / "model.pt", generic_root,
                            tmp_path / "out", "--arch", "resnet18")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "attention.csv", keep_default_na=False,
                        na_values=[""])
    assert list(table.columns) == COLUMNS
    assert sorted(table["image_id"]) == ["img000", "img001", "img006"]  # the masked test split
    assert (table["layer"] == "layer4").all() and (table["method"] == "gradcam").all()
    expected = audit_folder(files["model"], "layer4", generic_root, image_size=SIZE)
    pd.testing.assert_frame_equal(table.drop(columns="reason"),
                                  expected.drop(columns="reason"), rtol=1e-6)
    summary = json.loads((tmp_path / "out" / "attention_summary.json").read_text())
    assert set(summary) == {"guard", "by_class", "size_confound"}
    assert {r["metric"] for r in summary["by_class"]} == {"leakage", "excess_leakage",
                                                          "pixel_auroc"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["layer"] == "layer4"
    assert "3 images (2 benign, 1 malignant)" in out and "median pixel AUROC" in out
    # the table's note, from views: the guard's caution and the size confound's verdict
    assert ("Not better than uniform" in out) is not summary["guard"]["better_than_uniform"]
    assert f": {summary['size_confound']['verdict']}" in out
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary file left behind


def test_torchscript_gives_the_same_table(files, generic_root, tmp_path, monkeypatch, capsys):
    """The same model as a state dict and as TorchScript, at a chosen layer: one table."""
    tables = []
    for name in ("model.pt", "model_script.pt"):
        code, out, err = _audit(monkeypatch, capsys, files["dir"] / name, generic_root,
                                tmp_path / name, "--arch", "resnet18", "--layer", "layer3",
                                "--method", "gradcam++")
        assert code == 0, err
        tables.append(pd.read_csv(tmp_path / name / "attention.csv"))
    assert (tables[0]["layer"] == "layer3").all() and (tables[0]["method"] == "gradcam++").all()
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_limit_and_split(files, generic_root, tmp_path, monkeypatch, capsys):
    code, _, err = _audit(monkeypatch, capsys, files["dir"] / "model.pt", generic_root,
                          tmp_path / "out", "--arch", "resnet18", "--split", "train",
                          "--limit", 4)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "attention.csv")
    assert list(table["image_id"]) == ["img002", "img003", "img004", "img005"]


@pytest.mark.parametrize(("weights", "args", "data", "names", "says"), [
    ("missing.pt", ("--arch", "resnet18"), None, "missing.pt", "not found"),
    ("junk.pt", ("--arch", "resnet18"), None, "junk.pt", "neither a TorchScript"),
    ("mobilenet.pt", ("--arch", "resnet18"), None, "mobilenet.pt", "do not fit resnet18"),
    ("imagenet_head.pt", ("--arch", "resnet18"), None, "imagenet_head.pt", "1000 outputs"),
    ("model.pt", ("--arch", "nosuchnet"), None, "--arch", "unknown model 'nosuchnet'"),
    ("model.pt", ("--arch", "resnet18", "--layer", "layer9"), None, "model.pt", "'layer9'"),
    ("model_script.pt", ("--layer", "layer4"), None, "model_script.pt", "give --arch"),
    ("doubled.pt", ("--arch", "resnet18"), None, "doubled.pt", "logits differ"),
    ("model.pt", ("--arch", "resnet18"), "no_such_folder", "no_such_folder", "not found"),
    ("model.pt", ("--arch", "resnet18"), "weights", "weights", "no known data layout"),
])
def test_bad_input_is_one_line_naming_the_file(files, generic_root, tmp_path, monkeypatch,
                                                capsys, weights, args, data, names, says):
    data_dir = generic_root if data is None else (files["dir"] if data == "weights"
                                                  else tmp_path / data)
    code, out, err = _audit(monkeypatch, capsys, files["dir"] / weights, data_dir,
                            tmp_path / "out", *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith("error:") and names in lines[0] and says in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists()  # nothing written


def test_debug_shows_the_traceback(files, generic_root, tmp_path, monkeypatch, capsys):
    from dermcam.errors import DermcamError

    with pytest.raises(DermcamError, match="not found"):
        _audit(monkeypatch, capsys, files["dir"] / "missing.pt", generic_root,
               tmp_path / "out", "--arch", "resnet18", "--debug")


def test_help_says_what_it_needs(monkeypatch, capsys):
    code, out, _ = invoke_cli(monkeypatch, capsys, "audit", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "two logits per image, [benign, malignant]" in text
    assert "TorchScript" in text and "attention.csv" in text
