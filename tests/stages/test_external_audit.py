"""Attention and probe summaries by subgroup and by artifact presence, and explain / probe
on an external set, end to end on tiny data.

One run (ResNet18 from scratch, 32 px, one epoch) on a generic layout whose test images
split into sites: 'head' lesions are near-black, 'trunk' lesions nearly skin-coloured. The
probes score images with a known function (darker image, higher probability) instead of
the model, so removing a 'head' lesion must lower the probability and a 'trunk' one
barely: the planted subgroup effect the summary has to recover, through the stage. An
artifact label file flags rulers on a known set of images. The external set is an ISIC
2016-layout folder with masks; a second copy without masks must be refused.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import invoke_cli
from PIL import Image

from dermcam.config import ExplainConfig, ProbeConfig

# trains a model or runs a whole stage: deselect with -m 'not slow'
pytestmark = pytest.mark.slow

SIZE = 32
SKIN = (205, 160, 125)
LESION = {"head": (30, 15, 10), "trunk": (190, 148, 118)}


def _image(rng, colour):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = np.zeros((SIZE, SIZE, 3)) + SKIN + rng.normal(0, 2, (SIZE, SIZE, 3))
    cy, cx = rng.uniform(12, 20, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 5.5 ** 2
    img[mask] = colour
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _generic(root, n=40, seed=0):
    """Test images (even i): site head for i % 4 == 0, trunk for i % 4 == 2."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image_id,label,split,site"]
    for i in range(n):
        site = "head" if i % 4 < 2 else "trunk"
        img, mask = _image(rng, LESION[site])
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"img{i:03d}.png")
        rows.append(f"img{i:03d},{int(i % 3 == 0)},{'test' if i % 2 == 0 else 'train'},{site}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _isic(root, n=12, seed=3, masks=True):
    """ISIC 2016 layout, ``n`` test images (with ``_Segmentation.png`` masks)."""
    rng = np.random.default_rng(seed)
    tr, te = root / "ISBI2016_ISIC_Part3B_Training_Data", root / "ISBI2016_ISIC_Part3B_Test_Data"
    tr.mkdir(parents=True)
    te.mkdir()
    for k in range(2):
        Image.fromarray(_image(rng, LESION["head"])[0]).save(tr / f"ISIC_000000{k}.jpg")
    lines = []
    for i in range(n):
        img, mask = _image(rng, LESION["head" if i % 2 else "trunk"])
        Image.fromarray(img).save(te / f"ISIC_00001{i:02d}.png")
        if masks:
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                te / f"ISIC_00001{i:02d}_Segmentation.png")
        lines.append(f"ISIC_00001{i:02d},{float(i % 3 == 0)}")
    (root / "ISBI2016_ISIC_Part3B_Training_GroundTruth.csv").write_text(
        "ISIC_0000000,benign\nISIC_0000001,malignant\n")
    (root / "ISBI2016_ISIC_Part3B_Test_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def _darkness(model, images, batch_size=64, device="cpu"):
    """The probes' stand-in for a model: the darker the image, the more malignant."""
    return 1.0 - np.asarray(images, np.float64).mean(axis=(1, 2, 3)) / 255.0


#: Test images flagged with a ruler: every 'head' image but img000 and img004 (8 of 10).
RULER = [f"img{i:03d}" for i in range(8, 40, 4)]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from dermcam.config import TrainConfig
    from dermcam.run import record_in_run
    from dermcam.stages import probe as pr
    from dermcam.stages.explain import run_explain
    from dermcam.stages.train import train

    base = tmp_path_factory.mktemp("audit")
    data = _generic(base / "own")
    run = base / "run"
    train(TrainConfig(data=str(data), out=str(run), models=["resnet18"], weights="none",
                      image_size=SIZE, max_epochs=1, batch_size=8, seed=1, progress=False,
                      cache_dir=str(base / "cache")))
    labels = base / "isic_bias.csv"
    labels.write_text("image;ruler;hair;label\n" + "".join(
        f"img{i:03d}.png;{int(f'img{i:03d}' in RULER)};0;0\n" for i in range(0, 40, 2)))
    record_in_run(run, labels)
    summary = run_explain(run, ExplainConfig(methods=["gradcam"], layer="layer2", sanity=False,
                                             n_boot=50, figures=False, by=("site", "ita"),
                                             min_group=5))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pr, "score_images", _darkness)
        pr.run_probe(run, ProbeConfig(probes=("lesion_removed", "background_removed"), n_boot=100,
                                      by=("site",), min_group=5, figures=False))
    return {"run": run, "summary": summary, "base": base}


def test_attention_summary_by_subgroup(audited):
    run, summary = audited["run"], audited["summary"]
    att = pd.read_csv(run / "attention.csv")
    assert {"site", "ita", "ita_source"} <= set(att.columns)
    sub = json.loads((run / "attention_summary.json").read_text())["subgroups"]
    assert set(sub) == {"site", "ita"} and sub == json.loads(json.dumps(
        summary["subgroups"]).replace("NaN", "null"))
    entry = sub["site"]["entries"][0]
    assert (entry["model"], entry["method"]) == ("resnet18", "gradcam")
    g = {x["group"]: x for x in entry["groups"]}
    assert g["head"]["n"] == g["trunk"]["n"] == 10 and g["head"]["estimable"]
    head = att[att["site"] == "head"]["leakage"]
    assert g["head"]["leakage"]["value"] == pytest.approx(head.mean(), abs=1e-6)
    assert g["head"]["leakage"]["n"] == head.notna().sum()
    for metric in ("leakage", "excess_leakage", "pixel_auroc"):
        t = entry["heterogeneity"][metric]
        assert t["test"] == "Kruskal-Wallis across groups" and "Holm" == t["adjust_method"]
    # skin (205, 160, 125) outside every lesion: ITA about 38, one category, 20 images
    ita = sub["ita"]["entries"][0]["groups"]
    assert [(x["group"], x["n"]) for x in ita] == [("intermediate", 20)]


def test_probe_by_subgroup_recovers_the_planted_effect(audited):
    from dermcam.stages import probe as pr

    obj = pr.read_summary_object(audited["run"])
    assert obj["schema_version"] == 2 and len(obj["entries"]) == 2
    les = next(e for e in obj["subgroups"]["site"]["entries"]
               if e["probe"] == "lesion_removed")
    g = {x["group"]: x for x in les["groups"]}
    assert g["head"]["n"] == g["trunk"]["n"] == 10
    # removing a near-black lesion of ~8 % of the image lightens it by ~4 %
    assert g["head"]["delta"]["hi"] < -0.02 < g["trunk"]["delta"]["lo"]
    assert g["trunk"]["delta"]["value"] > -0.01
    assert les["heterogeneity"]["delta"]["p_adjusted"] < 0.01
    f = g["head"]["flip_rate"]
    assert f["ci_method"] == "wilson" and f["lo"] <= f["value"] <= f["hi"]
    df = pr.read_rows(audited["run"] / pr.PROBE_CSV)
    head = df[(df["probe"] == "lesion_removed") & df["image_id"].isin(
        [f"img{i:03d}" for i in range(0, 40, 4)])]
    assert g["head"]["delta"]["value"] == pytest.approx(head["delta"].mean())


def test_probe_split_by_artifact_presence_with_known_counts(audited):
    from dermcam.stages import probe as pr

    rows = pr.read_summary_object(audited["run"])["artifact_presence"]
    ruler = next(r for r in rows if r["probe"] == "lesion_removed" and r["artifact"] == "ruler")
    labels = {f"img{i:03d}": int(i % 3 == 0) for i in range(0, 40, 2)}
    assert ruler["with"]["n"] == 8 and ruler["without"]["n"] == 12
    assert ruler["with"]["n_malignant"] == sum(labels[i] for i in RULER)
    assert ruler["without"]["n_malignant"] == sum(labels.values()) - sum(labels[i]
                                                                         for i in RULER)
    # the rulers sit on the dark-lesion images: their change is larger once the lesion goes
    assert ruler["with"]["delta_mean"] < ruler["without"]["delta_mean"] - 0.02
    assert ruler["delta_p"] < 0.01
    hair = next(r for r in rows if r["probe"] == "lesion_removed" and r["artifact"] == "hair")
    assert hair["with"]["n"] == 0 and hair["without"]["n"] == 20


def test_cli_and_report_show_the_subgroups(audited, monkeypatch, capsys):
    from dermcam.report.html import render

    run = audited["run"]
    code, out, err = invoke_cli(monkeypatch, capsys, "explain", run, "--methods", "gradcam",
                             "--layer", "layer2", "--no-sanity", "--n-boot", "50", "--by",
                             "site", "--min-group", "5")
    assert code == 0, err
    log = (run / "dermcam.log").read_text()  # the detail, as --verbose prints it
    assert "attention, ResNet18 gradcam, by site" in log and "Kruskal-Wallis" in log
    page = render(run)
    s = page[page.index('<details class="sec" id="attention">'):]
    s = s[:s.index('<details class="sec" id="probe">')]
    assert "by site" in s and "Kruskal-Wallis across site" in s
    p = page[page.index('<details class="sec" id="probe">'):]
    p = p[:p.index('<details class="sec"', 10)]
    assert "Removal probes with | without each labelled artifact" in p and "ruler" in p
    assert "by site" in p




def test_evaluate_splits_by_the_artifact_labels_the_run_recorded(audited, tmp_path,
                                                                   monkeypatch, capsys):
    """Labels recorded by an earlier stage are the run's: a later ``dermcam evaluate``
    without --artifact-labels still scores each artifact's groups (8 rulers of 10 test)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(audited["run"], run)
    code, _, err = invoke_cli(monkeypatch, capsys, "evaluate", run, "--n-boot", "30",
                              "--min-group", "2")
    assert code == 0, err
    m = json.loads((run / "metrics.json").read_text())
    groups = m["subgroups"]["artifact_ruler"]["models"]["resnet18"]["groups"]
    test_ids = set(pd.read_csv(run / "predictions.csv")["image_id"])
    assert {g["group"]: g["n"] for g in groups} == {
        "1": len(test_ids & set(RULER)), "0": len(test_ids - set(RULER))}


def test_explain_and_probe_on_an_external_set(audited, monkeypatch, capsys):
    from dermcam.report.html import render
    from dermcam.stages import probe as pr

    run, base = audited["run"], audited["base"]
    other = _isic(base / "isic_masked")
    code, out, err = invoke_cli(monkeypatch, capsys, "explain", run, "--data", other,
                             "--methods", "gradcam", "--layer", "layer2", "--no-sanity",
                             "--n-boot", "50", "--by", "ita", "--min-group", "3",
                             "--target", "predicted")
    assert code == 0, err
    folder = run / "external" / "isic_masked"
    assert f"wrote {folder.resolve()}/attention_summary.json" in out
    assert "external set isic_masked" in out
    att = pd.read_csv(folder / "attention.csv")
    assert sorted(att["image_id"]) == [f"ISIC_00001{i:02d}" for i in range(12)]
    manifest = json.loads((run / "manifest.json").read_text())
    thr = manifest["models"]["resnet18"]["threshold"]
    assert ((att["prob_malignant"] >= thr).astype(int) == att["pred"]).all()
    summ = json.loads((folder / "attention_summary.json").read_text())
    assert summ["external"]["layout"] == "isic2016" and summ["n_images"] == 12
    # the summary names the class this set's heatmaps explain, not the run's own explain's
    own = json.loads((run / "attention_summary.json").read_text())["target"]
    assert summ["target"] == "predicted" != own
    assert "ita" in summ["subgroups"]
    assert (folder / "attention" / "resnet18" / "gradcam" / "layer2").is_dir()
    st = manifest["stages"]["external:isic_masked/explain"]
    assert st["status"] == "complete" and st["folder"] == "external/isic_masked"
    # the internal attention is untouched
    assert len(pd.read_csv(run / "attention.csv")) == 20

    code, out, err = invoke_cli(monkeypatch, capsys, "probe", run, "--data", other, "--probes",
                             "lesion_removed,background_removed", "--n-boot", "50")
    assert code == 0, err
    assert f"wrote {folder.resolve()}/probe_summary.json" in out
    df = pr.read_rows(folder / pr.PROBE_CSV)
    assert len(df) == 12 * 2 and (df["threshold"] == thr).all()
    obj = pr.read_summary_object(folder)
    assert obj["external"]["name"] == "isic_masked"
    les = pr.find(obj["entries"], "resnet18", "lesion_removed")
    assert les["n"] == 12 and les["cam"] == "gradcam@layer2"  # the external attention.csv
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["external:isic_masked/probe"]["status"] == "complete"
    assert manifest["stages"]["probe"]["by"] == ["site"]  # the internal probe's, unchanged
    page = render(run)
    ext = page[page.index('<details class="sec" id="external">'):]
    ext = ext[:ext.index('<details class="sec"', 10)]
    assert "isic_masked: Probes" in ext and "isic_masked: Leakage by class" in ext
    assert "lesion removed" in ext


def test_bad_input_is_one_line(audited, monkeypatch, capsys):
    run, base = audited["run"], audited["base"]
    bare = _isic(base / "isic_bare", masks=False)
    for args, want in (
            (["explain", run, "--data", bare, "--layer", "layer2"], "no lesion masks"),
            (["probe", run, "--data", bare], "no lesion masks"),
            (["explain", run, "--by", "colour", "--layer", "layer2"],
             "--by colour: no such column"),
            (["probe", run, "--by", "colour"], "--by colour: no such column")):
        code, _, err = invoke_cli(monkeypatch, capsys, *args)
        assert code == 2 and want in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert "external:isic_bare/explain" not in manifest["stages"]  # refused before starting
